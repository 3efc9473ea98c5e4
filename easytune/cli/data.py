"""``easytune data check | synth``: validate a HumanML3D / KIT folder, or write a synthetic one."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

MAX_LISTED_PROBLEMS = 50


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("data", help="validate or generate motion datasets (HumanML3D layout)")
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    check = sub.add_parser("check", help="validate a dataset folder and print a summary")
    check.add_argument("root", metavar="DIR", help="dataset root (Mean.npy, Std.npy, <split>.txt, ...)")
    check.add_argument("--kind", default="humanml", choices=("humanml", "kit"))
    check.add_argument("--splits", nargs="+", default=None, help="splits to check (default: train val test)")
    check.add_argument("--min-len", type=int, default=None, help="shortest valid item (default 40, KIT 24)")
    check.add_argument("--max-len", type=int, default=None, help="longest valid item (default 199)")
    check.add_argument("--allow-out-of-range", action="store_true",
                       help="report items outside [min-len, max-len] as notes (the loader leaves them out) "
                            "instead of problems")  # fmt: skip
    check.add_argument("-q", "--quiet", action="store_true", help="do not list the notes")
    check.set_defaults(func=_check)

    synth = sub.add_parser("synth", help="write a synthetic dataset in the HumanML3D layout")
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--clips", type=int, required=True, help="number of clips")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--workers", type=int, default=None, help="worker processes (default: 1)")
    synth.add_argument("--no-progress", action="store_true", help="no progress bar")
    synth.set_defaults(func=_synth)


def _check(args: argparse.Namespace) -> int:
    from easytune.data.check import DEFAULT_SPLITS, check_dataset
    from easytune.errors import DataError

    report = check_dataset(
        args.root,
        args.kind,
        splits=args.splits or DEFAULT_SPLITS,
        min_len=args.min_len,
        max_len=args.max_len,
        allow_out_of_range=args.allow_out_of_range,
    )
    print(report.summary())
    if not args.quiet:
        for note in report.notes[:MAX_LISTED_PROBLEMS]:
            print(f"note: {note}")
    if report.ok:
        from easytune.data.check import STAMP, write_stamp

        stamped = write_stamp(args.root, report.kind, args.splits or DEFAULT_SPLITS)
        print("ok" + (f" (stamp {STAMP} written: runs on this data skip their own check)" if stamped else ""))
        return 0
    for problem in report.problems[:MAX_LISTED_PROBLEMS]:
        print(f"problem: {problem}", file=sys.stderr)
    if len(report.problems) > MAX_LISTED_PROBLEMS:
        print(f"... and {len(report.problems) - MAX_LISTED_PROBLEMS} more problems", file=sys.stderr)
    raise DataError(f"{len(report.problems)} problem(s) in {args.root}; first: {report.problems[0]}")


def _synth(args: argparse.Namespace) -> int:
    from easytune.data.synthetic import generate_dataset
    from easytune.errors import ConfigError

    if args.clips < 1:
        raise ConfigError(f"--clips must be >= 1, got {args.clips}")
    kwargs = {} if args.workers is None else {"workers": args.workers}
    summary = generate_dataset(args.out, args.clips, args.seed, show_progress=not args.no_progress, **kwargs)
    print(json.dumps(summary, indent=2, default=str))
    return 0
