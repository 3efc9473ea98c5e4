"""``easytune export``: an inference-only copy of a training checkpoint.

MLD / MDM checkpoints (from `easytune pretrain` or `easytune finetune`): keeps the model weights (the EMA
weights when the checkpoint has them), the config and the metadata (dataset Mean/Std); the result loads
with `easytune sample`, `easytune finetune --base` and `easytune.generation.load_pipeline`.
Reward-model (`easytune reward train|refine`) and evaluator (`easytune evaluator train`) checkpoints:
keeps weights, config and metadata. Optimizer, LR-scheduler and RNG state are dropped in every case;
`--no-data-path` also leaves out the local paths of the training data (for checkpoints you ship).

Format (from the --out suffix): `.safetensors` (the default; no suffix gets it) writes the weights as
safetensors and their config and metadata as JSON beside them (`model.safetensors` + `model.json`); `.pt`
writes one torch file. Every easytune loader reads both, and neither runs pickled code.
"""

from __future__ import annotations

import argparse
from typing import Any

LOCAL_PATH_KEYS = ("data", "init")  # meta entries that name files on the training machine


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "export",
        help="inference-only copy of a training checkpoint",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("ckpt", help="training checkpoint (pretrain, finetune, reward or evaluator training)")
    p.add_argument(
        "--out", required=True, help="checkpoint to write: NAME.safetensors (+ NAME.json) or NAME.pt"
    )
    p.add_argument("--no-ema", action="store_true", help="export the raw weights even if EMA ones exist")
    p.add_argument(
        "--no-data-path",
        action="store_true",
        help="leave out the local paths of the training data and init checkpoint (for "
        "checkpoints you ship); Mean/Std stay",
    )
    p.add_argument("--source", default=None, help="a line on where the checkpoint comes from (meta.source)")
    p.add_argument(
        "--max-frames",
        type=int,
        default=None,
        help="MLD: keep only the VAE position rows for motions of up to N frames",
    )
    p.add_argument(
        "--max-text-tokens",
        type=int,
        default=None,
        help="MLD: keep only the denoiser position rows for up to N text tokens (1: a sentence)",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from easytune.checkpoint import load_checkpoint
    from easytune.errors import ConfigError

    args.out = _out_path(args.out)
    stage = load_checkpoint(args.ckpt).get("meta", {}).get("stage")
    extra = {"source": args.source} if args.source else {}
    if stage in ("stage1", "spl", "evaluator"):
        from easytune.models.evaluator import MotionTextEvaluator
        from easytune.models.reward import RewardModel

        cls = MotionTextEvaluator if stage == "evaluator" else RewardModel
        model = cls.from_checkpoint(args.ckpt)
        meta = dict(load_checkpoint(args.ckpt)["meta"])
        drop = LOCAL_PATH_KEYS if args.no_data_path else ()
        path = model.save(args.out, {**{k: v for k, v in meta.items() if k not in drop}, **extra})
        print(f"wrote {path} ({cls.__name__}, {sum(p.numel() for p in model.parameters()):,} parameters)")
        return 0
    from easytune.generation import load_pipeline

    pipe = load_pipeline(args.ckpt, use_ema=not args.no_ema)
    if args.max_frames is not None or args.max_text_tokens is not None:
        if not hasattr(pipe.model, "trim_positions"):
            raise ConfigError(f"{args.ckpt}: --max-frames / --max-text-tokens apply to MLD checkpoints")
        pipe.model.trim_positions(args.max_frames, args.max_text_tokens)
    if args.no_data_path:
        for key in LOCAL_PATH_KEYS:
            pipe.meta.pop(key, None)
    path = pipe.save(args.out, pipe.trainable.state_dict(), extra or None)
    print(f"wrote {path} ({pipe.kind}, {sum(p.numel() for p in pipe.model.parameters()):,} parameters)")
    return 0


def _out_path(out: str) -> str:
    """``out`` with its format suffix (``.safetensors`` when it has none)."""
    from pathlib import Path

    from easytune.errors import ConfigError

    suffix = Path(out).suffix
    if suffix == "":
        return out + ".safetensors"
    if suffix not in (".safetensors", ".pt", ".ckpt"):
        raise ConfigError(f"--out {out}: the suffix chooses the format: .safetensors (default) or .pt")
    return out
