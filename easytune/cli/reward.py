"""``easytune reward train | refine | eval``: the SPM-style reward model (stage 1, SPL stage 2, retrieval)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from easytune.cli._common import DEVICE_HELP

MODES = ("M0T0", "M1T0", "M0T1", "M1T1")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="dataset folder (HumanML3D layout)")
    p.add_argument("--out", required=True, help="checkpoint to write (atomically, also during training)")
    p.add_argument(
        "--steps", type=int, default=None, help="optimizer steps (train: tiny 300, paper 180000; refine: 150)"
    )
    p.add_argument("--batch-size", type=int, default=None, help="train: the preset's (tiny 32, paper 64)")
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="AdamW learning rate (train: tiny 5e-4, paper 1e-4; refine: 1e-5)",
    )
    p.add_argument("--max-grad-norm", type=float, default=None, help="gradient clipping (default: none)")
    p.add_argument(
        "--noise-prob",
        type=float,
        default=None,
        help="probability of noising a training motion (train: 0; refine: the init's value)",
    )
    p.add_argument("--max-t", type=int, default=None, help="noise steps drawn from U{0..max_t} (default 500)")
    p.add_argument(
        "--bucket-pool",
        type=int,
        default=8,
        help="batch items of similar length from pools of this many batches (0: plain random batches)",
    )
    p.add_argument(
        "--sample-scale",
        type=float,
        default=None,
        help="training latents mu + s * sigma * eps (train: 1 as the reference; refine: the init's value)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue --out if it exists")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument(
        "--skip-data-check",
        action="store_true",
        help="do not read every clip before the first step (for data checked with `easytune data check`)",
    )
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--log-every", type=int, default=50)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "reward", help="train, refine (SPL) and evaluate the retrieval reward model"
    )
    sub = parser.add_subparsers(dest="reward_command", metavar="ACTION", required=True)

    train = sub.add_parser("train", help="stage 1: retrieval training (reconstruction, KL, InfoNCE)")
    _common(train)
    train.add_argument("--preset", default="tiny", choices=("tiny", "paper"))
    train.add_argument(
        "--mode",
        default="M0T0",
        choices=MODES,
        help="time conditioning: M1 = motion encoder gets a timestep token, T1 = text encoder",
    )
    train.add_argument("--text-encoder", default=None, help="text encoder spec (default: the preset's)")
    train.set_defaults(func=_train)

    refine = sub.add_parser("refine", help="stage 2: SPL self-refinement preference learning")
    refine.add_argument("--init", required=True, help="stage-1 checkpoint")
    _common(refine)
    refine.add_argument(
        "--spl-weight",
        type=float,
        default=None,
        help="weight of the SPL term (0: plain continuation, the control; default 0.01)",
    )
    refine.add_argument("--spl-topk", type=int, default=None, help="SPL retrieval window (default 10)")
    refine.add_argument(
        "--spl-high-sim",
        type=float,
        default=None,
        help="reference-code variant: also count a retrieval as correct when any similarity "
        "in the row exceeds this (reference: 0.8; default: off)",
    )
    refine.add_argument(
        "--spl-double-temperature",
        action="store_true",
        help="reference-code variant: divide the similarities by the temperature twice",
    )
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


def _config(args: argparse.Namespace, **fixed: Any):
    from easytune.training.reward import RewardTrainConfig

    given = {
        k: getattr(args, k)
        for k in ("steps", "lr", "batch_size", "noise_prob", "max_t", "sample_scale")
        if getattr(args, k) is not None
    }
    return RewardTrainConfig(
        bucket_pool=args.bucket_pool,
        max_grad_norm=args.max_grad_norm,
        seed=args.seed,
        log_every=args.log_every,
        **{**fixed, **given},
    )


def _train(args: argparse.Namespace) -> int:
    from easytune.training.reward import STAGE1_DEFAULTS, train_stage1

    cfg = _config(
        args,
        **STAGE1_DEFAULTS[args.preset],
        preset=args.preset,
        mode=args.mode,
        text_encoder=args.text_encoder,
    )
    from easytune.data.check import check_before_run

    check_before_run(args.data, "reward train", skip=args.skip_data_check)
    train_stage1(args.data, args.out, cfg, resume=args.resume, overwrite=args.overwrite, device=args.device)
    print(f"wrote {args.out}")
    return 0


def _refine(args: argparse.Namespace) -> int:
    from easytune.checkpoint import load_checkpoint
    from easytune.training.reward import REFINE_DEFAULTS, REFINE_INHERITED, refine_spl

    init_cfg = load_checkpoint(args.init).get("meta", {}).get("train_config", {})
    inherited = {k: init_cfg[k] for k in REFINE_INHERITED if k in init_cfg}
    defaults = {k: REFINE_DEFAULTS[k] for k in ("steps", "lr")}
    cfg = _config(
        args,
        **{**defaults, **inherited},
        spl_weight=REFINE_DEFAULTS["spl_weight"] if args.spl_weight is None else args.spl_weight,
        spl_topk=REFINE_DEFAULTS["spl_topk"] if args.spl_topk is None else args.spl_topk,
        spl_high_sim=args.spl_high_sim,
        spl_double_temperature=args.spl_double_temperature,
    )
    from easytune.data.check import check_before_run

    check_before_run(args.data, "reward refine", skip=args.skip_data_check)
    refine_spl(
        args.init, args.data, args.out, cfg, resume=args.resume, overwrite=args.overwrite, device=args.device
    )
    print(f"wrote {args.out}")
    return 0


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
