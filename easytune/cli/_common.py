"""Options shared by several commands (no heavy imports: ``easytune --help`` stays fast).

A training command's hyper-parameters are generated from its config dataclass (``easytune.config``); what
is said here once are the per-invocation arguments around them: where the data is, where the checkpoint
goes, whether to resume or overwrite it, the device, the data check, the progress bar, a config file.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

DEVICE_HELP = "auto | cpu | cuda | cuda:N (auto: CUDA when available, else the CPU; the choice is printed)"
CONFIG_HELP = "YAML file of options (keys: the option names with underscores; flags given override it)"
SKIP_DATA_CHECK_HELP = (
    "do not read every clip before the first step (for data checked with `easytune data check`)"
)


def add_run_arguments(p: argparse.ArgumentParser, *, out_help: str, resume_help: str) -> None:
    """``--config --data --out --resume --overwrite --skip-data-check --device --no-progress --wandb`` of a
    training command that writes one checkpoint file (its logs go to ``OUT.logs/``)."""
    p.add_argument("--config", metavar="YAML", help=CONFIG_HELP)
    p.add_argument("--data", required=True, help="dataset folder (HumanML3D layout; the 'train' split)")
    p.add_argument("--out", required=True, help=out_help)
    p.add_argument("--resume", action="store_true", help=resume_help)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--skip-data-check", action="store_true", help=SKIP_DATA_CHECK_HELP)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--wandb",
        metavar="PROJECT",
        help="also log to this Weights & Biases project (WANDB_MODE=offline: no network; default: off)",
    )


def run_training(
    args: argparse.Namespace, what: str, train: Callable[..., Any], cfg: Any, *before: Any
) -> int:
    """The body of a training command built with ``add_run_arguments``: check the data (unless
    ``--skip-data-check``), run ``train(*before, data, out, cfg, resume=, overwrite=, device=,
    show_progress=, wandb=)``, say what was written."""
    from easytune.data.check import check_before_run

    progress = not args.no_progress
    check_before_run(args.data, what, skip=args.skip_data_check, show_progress=progress)
    train(
        *before,
        args.data,
        args.out,
        cfg,
        resume=args.resume,
        overwrite=args.overwrite,
        device=args.device,
        show_progress=progress,
        wandb=args.wandb,
    )
    print(f"wrote {args.out} (metrics, TensorBoard events and options in {args.out}.logs/)")
    return 0
