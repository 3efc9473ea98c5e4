"""``easytune quickstart``: EasyTune vs DRaFT-K on the embedded tiny models (about ten CPU minutes).

Prints a paper-style table (reward, R@1/R@3, FID, MM-Dist, Diversity, activation memory, seconds per
update, time to a common reward level), writes before/after GIFs into --out and, with --json, one row per
model (base, easytune, draft, ground truth) keyed by `method`.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("quickstart", help="EasyTune vs DRaFT-K on the embedded tiny models",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/quickstart", help="folder for runs, GIFs and the table")
    p.add_argument("--json", default=None, help="also write the table's rows here")
    p.add_argument("--data", default=None, help="dataset folder (default: the cached synthetic set)")
    p.add_argument("--budget-s", type=float, default=180.0, help="training seconds per method")
    p.add_argument("--k", type=int, default=10, help="K of EasyTune and of DRaFT-K")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--eval-replications", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--from-scratch", action="store_true",
                   help="first rebuild the tiny models with easytune/assets/build_assets.sh")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from easytune.quickstart import QuickstartConfig, check_config, format_rows, run_quickstart, write_json

    cfg = QuickstartConfig(out=args.out, data=args.data, budget_s=args.budget_s, k=args.k,
                           batch_size=args.batch_size, lr=args.lr, eval_replications=args.eval_replications,
                           seed=args.seed)
    check_config(cfg)
    rows = run_quickstart(cfg, from_scratch=args.from_scratch)
    table = format_rows(rows)
    print(table)
    from pathlib import Path

    (Path(cfg.out) / "table.txt").write_text(table + "\n")
    if args.json:
        write_json(rows, args.json)
        print(f"wrote {args.json}")
    return 0
