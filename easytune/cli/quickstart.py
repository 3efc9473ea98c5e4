"""``easytune quickstart``: EasyTune vs DRaFT-K on the embedded tiny models (about ten CPU minutes).

``easytune compare`` of the two methods over --seeds training seeds: prints the table with 95% intervals
(reward, the independent evaluator's metrics, backward memory, seconds per update), the paired differences,
the time to a common reward level and which differences are significant, in words; writes compare.json,
compare.md, the plots and before/after GIFs into --out.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    from easytune.config import add_arguments
    from easytune.quickstart_config import QuickstartConfig

    p = subparsers.add_parser(
        "quickstart",
        help="EasyTune vs DRaFT-K on the embedded tiny models",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="YAML", help="YAML file of options (flags given override it)")
    add_arguments(p, QuickstartConfig)  # every option: a QuickstartConfig field
    p.add_argument(
        "--from-scratch",
        action="store_true",
        help="first rebuild the tiny models with easytune/assets/build_assets.sh",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from easytune.config import from_command_line, write_yaml
    from easytune.quickstart import run_quickstart
    from easytune.quickstart_config import QuickstartConfig

    cfg = from_command_line(QuickstartConfig, args)
    cfg.show_progress = not args.no_progress
    result = run_quickstart(cfg, from_scratch=args.from_scratch)
    print(result["markdown"])
    write_yaml(cfg, Path(cfg.out) / "config.yaml")
    print(f"wrote {Path(cfg.out) / 'compare.json'} and {Path(cfg.out) / 'compare.md'}")
    return 0
