"""``easytune compare``: methods x seeds at an equal budget, evaluated with the independent evaluator on the
same prompts and noise; mean ± 95% interval per cell, paired differences against the base and DRaFT-50,
time to reward, memory and seconds per update (easytune.bench.comparison). Writes compare.json,
compare.md and the plots into --out.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any


def register(subparsers: Any) -> None:
    from easytune.bench.comparison_config import CompareConfig
    from easytune.config import add_arguments

    p = subparsers.add_parser(
        "compare",
        help="the paper's comparison over seeds, with intervals",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="YAML", help="YAML file of options (flags given override it)")
    add_arguments(p, CompareConfig)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from easytune.bench.comparison import run_comparison
    from easytune.bench.comparison_config import CompareConfig
    from easytune.config import from_command_line, write_yaml

    cfg = from_command_line(CompareConfig, args)
    cfg.show_progress = not args.no_progress
    command = "easytune " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    result = run_comparison(cfg, command=command)
    print(result["markdown"])
    write_yaml(cfg, Path(cfg.out) / "config.yaml")
    print(f"wrote {Path(cfg.out) / 'compare.json'}, {Path(cfg.out) / 'compare.md'}")
    return 0
