"""``easytune reward train | refine | eval``: the SPM-style reward model (stage 1, SPL stage 2, retrieval)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from easytune.cli._common import DEVICE_HELP, add_run_arguments, run_training

OUT_HELP = "checkpoint to write (atomically, also during training)"
RESUME_HELP = "continue --out if it exists (exact: optimizer, step, RNG)"


def register(subparsers: Any) -> None:
    from easytune.config import add_arguments
    from easytune.training.reward_config import (
        REFINE_DEFAULTS,
        REFINE_ONLY,
        TRAIN_ONLY,
        RewardTrainConfig,
    )

    parser = subparsers.add_parser(
        "reward", help="train, refine (SPL) and evaluate the retrieval reward model"
    )
    sub = parser.add_subparsers(dest="reward_command", metavar="ACTION", required=True)

    train = sub.add_parser("train", help="stage 1: retrieval training (reconstruction, KL, InfoNCE)")
    add_run_arguments(train, out_help=OUT_HELP, resume_help=RESUME_HELP)
    add_arguments(train, RewardTrainConfig, exclude=REFINE_ONLY)
    train.set_defaults(func=_train)

    refine = sub.add_parser(
        "refine",
        help="stage 2: SPL self-refinement preference learning",
        description="Options left unset start from the refine defaults; the preset, batch size and "
        "noise options from the --init checkpoint.",
    )
    refine.add_argument("--init", required=True, help="stage-1 checkpoint")
    add_run_arguments(refine, out_help=OUT_HELP, resume_help=RESUME_HELP)
    inherited = {k: "the --init checkpoint's" for k in ("noise_prob", "max_t", "sample_scale", "batch_size")}
    add_arguments(refine, RewardTrainConfig, exclude=TRAIN_ONLY, shown={**REFINE_DEFAULTS, **inherited})
    refine.set_defaults(func=_refine)

    ev = sub.add_parser("eval", help="retrieval metrics R@1/2/3/5/10, MedR (t2m, m2t; full and groups of 32)")
    ev.add_argument("--ckpt", required=True, help="reward checkpoint, or 'default'")
    ev.add_argument("--data", required=True)
    ev.add_argument("--split", default="test")
    ev.add_argument(
        "--noise-t", type=int, default=None, help="noise the motions to this diffusion step first"
    )
    ev.add_argument("--group-size", type=int, default=32)
    ev.add_argument(
        "--shuffles",
        type=int,
        default=10,
        help="seeded shuffles pooled for the grouped metrics (1 = one pass as in the reference)",
    )
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--json", default=None, help="write the metrics here")
    ev.add_argument("--device", default="auto", help=DEVICE_HELP)
    ev.set_defaults(func=_eval)


def _train(args: argparse.Namespace) -> int:
    from easytune.config import from_command_line
    from easytune.training.reward import train_stage1
    from easytune.training.reward_config import RewardTrainConfig

    return run_training(args, "reward train", train_stage1, from_command_line(RewardTrainConfig, args))


def _refine(args: argparse.Namespace) -> int:
    from easytune.checkpoint import load_checkpoint
    from easytune.config import from_command_line
    from easytune.training.reward import refine_spl
    from easytune.training.reward_config import REFINE_DEFAULTS, REFINE_INHERITED, RewardTrainConfig

    init_cfg = load_checkpoint(args.init).get("meta", {}).get("train_config", {})
    inherited = {k: init_cfg[k] for k in REFINE_INHERITED if k in init_cfg}
    cfg = from_command_line(RewardTrainConfig, args, defaults={**REFINE_DEFAULTS, **inherited})
    return run_training(args, "reward refine", refine_spl, cfg, args.init)


def format_retrieval(result: dict[str, Any]) -> str:
    """A table: rows full / groups, text->motion and motion->text, R@1..R@10 and MedR."""
    head = f"{'protocol':<22}{'R@1':>8}{'R@2':>8}{'R@3':>8}{'R@5':>8}{'R@10':>8}{'MedR':>8}"
    lines = [head, "-" * len(head)]
    for name, key in (("full", "full"), (f"groups of {result['grouped']['group_size']}", "grouped")):
        for direction in ("t2m", "m2t"):
            m = result[key][direction]
            lines.append(
                f"{name + ' ' + direction:<22}"
                + "".join(f"{m[k]:>8.2f}" for k in ("R@1", "R@2", "R@3", "R@5", "R@10", "MedR"))
            )
    return "\n".join(lines)


def _eval(args: argparse.Namespace) -> int:
    from easytune.data.humanml import MotionDataset
    from easytune.models.reward import RewardModel
    from easytune.training.reward import encode_split, evaluate_retrieval

    model = RewardModel.from_checkpoint(args.ckpt).to(args.device)
    dataset = MotionDataset(args.data, args.split, caption_mode="first", crop="floor")
    text, motion, _ = encode_split(model, dataset, noise_t=args.noise_t, seed=args.seed, device=args.device)
    result = evaluate_retrieval(
        text, motion, group_size=args.group_size, shuffles=args.shuffles, seed=args.seed
    )
    result.update(
        ckpt=str(args.ckpt),
        data=str(args.data),
        split=args.split,
        noise_t=args.noise_t,
        mode=model.config.mode,
    )
    print(f"{args.ckpt} on {args.data} [{args.split}, {len(text)} pairs, noise_t={args.noise_t}]")
    print(format_retrieval(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0
