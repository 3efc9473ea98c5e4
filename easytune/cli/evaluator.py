"""``easytune evaluator train | eval``: the independent text-motion evaluator used by ``easytune eval``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from easytune.cli._common import DEVICE_HELP, add_run_arguments, run_training


def register(subparsers: Any) -> None:
    from easytune.config import add_arguments
    from easytune.training.evaluator_config import EvaluatorTrainConfig

    parser = subparsers.add_parser("evaluator", help="train / check the independent evaluator (T2M style)")
    sub = parser.add_subparsers(dest="evaluator_command", metavar="ACTION", required=True)

    train = sub.add_parser("train", help="train a conv + GRU evaluator with a margin contrastive loss")
    add_run_arguments(
        train,
        out_help="checkpoint to write (atomically, every --ckpt-every steps)",
        resume_help="continue --out if it exists (exact: optimizer, step, RNG)",
    )
    add_arguments(train, EvaluatorTrainConfig)
    train.set_defaults(func=_train)

    ev = sub.add_parser("eval", help="ground-truth R-Precision (groups of 32), MM-Dist, Diversity")
    ev.add_argument("--ckpt", required=True, help="evaluator checkpoint, 'default', or t2m:DIR (official)")
    ev.add_argument("--data", required=True)
    ev.add_argument("--split", default="test")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--json", default=None)
    ev.add_argument("--device", default="auto", help=DEVICE_HELP)
    ev.set_defaults(func=_eval)


def _train(args: argparse.Namespace) -> int:
    from easytune.config import from_command_line
    from easytune.training.evaluator import train_evaluator
    from easytune.training.evaluator_config import EvaluatorTrainConfig

    cfg = from_command_line(EvaluatorTrainConfig, args)
    return run_training(args, "evaluator train", train_evaluator, cfg)


def _eval(args: argparse.Namespace) -> int:
    from easytune.data.humanml import MotionDataset
    from easytune.models.evaluator import load_evaluator
    from easytune.training.evaluator import embed_pairs, ground_truth_metrics

    dataset = MotionDataset(args.data, args.split, caption_mode="first", crop="floor")
    evaluator = load_evaluator(
        args.ckpt, dataset_mean=dataset.mean, dataset_std=dataset.std, device=args.device
    )
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
