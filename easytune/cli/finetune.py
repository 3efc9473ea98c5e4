"""``easytune finetune``: reward fine-tuning of an MLD / MDM checkpoint with EasyTune or a baseline.

Writes RUN_DIR/metrics.jsonl (one line per trajectory), RUN_DIR/last.pt (atomic, for --resume) and
RUN_DIR/model.pt (the fine-tuned model, loadable by `easytune sample` and `easytune eval`).
RUN_DIR/config.yaml holds the resolved options: `easytune finetune --config RUN_DIR/config.yaml --out NEW`
repeats the run. Launch with `torchrun --nproc-per-node N -m easytune.cli finetune ...` for data-parallel
runs.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

CONFIG_HELP = "YAML file of options (keys: the option names with underscores; flags given override it)"


def register(subparsers: Any) -> None:
    from easytune.config import add_arguments
    from easytune.methods import registry
    from easytune.training.finetune_config import FinetuneConfig

    p = subparsers.add_parser(
        "finetune",
        help="reward fine-tuning with EasyTune or a baseline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="YAML", help=CONFIG_HELP)
    add_arguments(p, FinetuneConfig)  # every other option: a FinetuneConfig field
    m = p.add_argument_group(
        "method options (unset: the method's default; an option the method does not take is refused)"
    )
    for opt in registry.options().values():
        m.add_argument(
            f"--{opt.name}",
            dest=f"method_{opt.name}",
            type=opt.type,
            choices=opt.choices,
            default=argparse.SUPPRESS,
            help=opt.help
            if "default" in opt.help
            else f"{opt.help} (default: the method's, docs/methods.md)",
            metavar=None if opt.choices else opt.name.upper(),
        )
    p.set_defaults(func=_run)


def config_from_args(args: argparse.Namespace) -> Any:
    """The run's ``FinetuneConfig``: defaults < ``--config`` file < flags given (method options included)."""
    from easytune.config import from_command_line, read_yaml
    from easytune.training.finetune_config import FinetuneConfig

    given = {k[len("method_") :]: v for k, v in vars(args).items() if k.startswith("method_")}
    extra = {}
    if given:
        base = read_yaml(args.config, FinetuneConfig).get("method_options", {}) if args.config else {}
        extra["method_options"] = {**base, **given}
    cfg = from_command_line(FinetuneConfig, args, **extra)
    from easytune.device import resolve_device  # (the flag is generated: cli.main did not see it)

    cfg.device = str(resolve_device(cfg.device))
    logging.getLogger("easytune").info("device: %s", cfg.device)
    return cfg


def _run(args: argparse.Namespace) -> int:
    from easytune.training.distributed import cleanup_distributed
    from easytune.training.finetune import Run

    cfg = config_from_args(args)
    evaluate_fn = None
    if cfg.evaluator:
        from easytune.training.evaluate import periodic_evaluator

        evaluate_fn = periodic_evaluator(cfg.evaluator, cfg.data, samples=cfg.eval_samples, seed=cfg.seed)
    try:
        run = Run(cfg, evaluate_fn)
        history = run.train()
        if run.info.is_main:
            path = run.export()
            last = history[-1] if history else {}
            print(
                f"{cfg.method}: {run.step} trajectories, reward {last.get('reward', float('nan')):.4f}, "
                f"{run.elapsed:.1f} s; wrote {path}"
            )
    finally:
        cleanup_distributed()
    return 0
