"""``easytune evaluator train | eval``: the independent text-motion evaluator used by ``easytune eval``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from easytune.cli._common import DEVICE_HELP


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("evaluator", help="train / check the independent evaluator (T2M style)")
    sub = parser.add_subparsers(dest="evaluator_command", metavar="ACTION", required=True)

    train = sub.add_parser("train", help="train a conv + GRU evaluator with a margin contrastive loss")
    train.add_argument("--data", required=True, help="dataset folder (HumanML3D layout)")
    train.add_argument("--out", required=True, help="checkpoint to write")
    train.add_argument("--preset", default="tiny", choices=("tiny", "t2m"))
    train.add_argument("--text-encoder", default=None, help="text encoder spec (default: the preset's)")
    train.add_argument("--steps", type=int, default=None, help="the preset's default (tiny 1000, t2m 20000)")
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--lr", type=float, default=None, help="the preset's default (tiny 5e-4, t2m 1e-4)")
    train.add_argument("--margin", type=float, default=10.0)
    train.add_argument(
        "--bucket-pool", type=int, default=8, help="length-bucketed batches (0: plain random batches)"
    )
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--resume", action="store_true", help="continue --out if it exists")
    train.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    train.add_argument("--device", default="auto", help=DEVICE_HELP)
    train.add_argument("--log-every", type=int, default=50)
    train.set_defaults(func=_train)

    ev = sub.add_parser("eval", help="ground-truth R-Precision (groups of 32), MM-Dist, Diversity")
    ev.add_argument("--ckpt", required=True, help="evaluator checkpoint, or 'default'")
    ev.add_argument("--data", required=True)
    ev.add_argument("--split", default="test")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--json", default=None)
    ev.add_argument("--device", default="auto", help=DEVICE_HELP)
    ev.set_defaults(func=_eval)


def _train(args: argparse.Namespace) -> int:
    from easytune.training.evaluator import EVALUATOR_DEFAULTS, EvaluatorTrainConfig, train_evaluator

    defaults = EVALUATOR_DEFAULTS[args.preset]
    cfg = EvaluatorTrainConfig(
        preset=args.preset,
        text_encoder=args.text_encoder,
        steps=defaults["steps"] if args.steps is None else args.steps,
        batch_size=args.batch_size,
        lr=defaults["lr"] if args.lr is None else args.lr,
        margin=args.margin,
        bucket_pool=args.bucket_pool,
        seed=args.seed,
        log_every=args.log_every,
    )
    train_evaluator(
        args.data, args.out, cfg, resume=args.resume, overwrite=args.overwrite, device=args.device
    )
    print(f"wrote {args.out}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from easytune.data.humanml import MotionDataset
    from easytune.models.evaluator import MotionTextEvaluator
    from easytune.training.evaluator import embed_pairs, ground_truth_metrics

    evaluator = MotionTextEvaluator.from_checkpoint(args.ckpt).to(args.device)
    dataset = MotionDataset(args.data, args.split, caption_mode="first", crop="floor")
    text, motion = embed_pairs(evaluator, dataset, device=args.device)
    result = ground_truth_metrics(text, motion, seed=args.seed)
    rp = result["r_precision"]
    print(
        f"ground truth [{args.split}, {result['n']} pairs, groups of {result['group_size']}]: "
        f"R-Precision top1 {rp['top1']:.3f} top2 {rp['top2']:.3f} top3 {rp['top3']:.3f}  "
        f"MM-Dist {result['mm_dist']:.3f}  Diversity {result['diversity']:.3f}"
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps({**result, "ckpt": str(args.ckpt), "data": str(args.data)}, indent=2)
        )
    return 0
