"""``easytune quickstart``: EasyTune vs DRaFT-K on the embedded tiny models (about ten CPU minutes).

Prints a paper-style table (reward, R@1/R@3, FID, MM-Dist, Diversity, activation memory, seconds per
update, time to a common reward level), writes before/after GIFs into --out and, with --json, one row per
model (base, easytune, draft, ground truth) keyed by `method`.
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
    p.add_argument("--json", default=None, help="also write the table's rows here")
    p.add_argument(
        "--from-scratch",
        action="store_true",
        help="first rebuild the tiny models with easytune/assets/build_assets.sh",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from easytune.config import from_command_line, write_yaml
    from easytune.quickstart import format_rows, run_quickstart, write_json
    from easytune.quickstart_config import QuickstartConfig

    cfg = from_command_line(QuickstartConfig, args)
    rows = run_quickstart(cfg, from_scratch=args.from_scratch)
    table = format_rows(rows)
    print(table)
    (Path(cfg.out) / "table.txt").write_text(table + "\n")
    write_yaml(cfg, Path(cfg.out) / "config.yaml")
    if args.json:
        write_json(rows, args.json)
        print(f"wrote {args.json}")
    return 0
