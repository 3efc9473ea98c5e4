"""The ``easytune`` command.

Every module of this package that defines ``register(subparsers)`` adds its subcommand(s); a
command's handler is stored as ``func`` on its parser and receives the parsed ``argparse.Namespace``.
Errors derived from ``easytune.errors.EasytuneError`` are printed without a traceback (exit status 2).
Command modules import heavy dependencies inside their handlers only, so ``easytune --help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence

from easytune.errors import EasytuneError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="easytune",
        description="Step-aware reward fine-tuning of text-to-motion diffusion models.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    from easytune import __version__

    parser.add_argument("--version", action="version", version=f"easytune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        if getattr(args, "device", None) is not None:  # one resolution for every command's --device
            from easytune.device import resolve_device

            args.device = str(resolve_device(args.device))
            logging.getLogger("easytune").info("device: %s", args.device)
        return int(args.func(args) or 0)
    except EasytuneError as err:
        print(f"easytune {args.command}: error: {err}", file=sys.stderr)
        return 2
