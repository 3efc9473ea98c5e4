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
import re
import sys
from collections.abc import Sequence

from easytune.errors import EasytuneError


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every command's ``--help``: each option's default (unless its help already says it, as the options
    generated from a config dataclass do; switches are off by default), descriptions as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            not action.option_strings
            or action.default is argparse.SUPPRESS
            or action.nargs == 0  # a switch: off unless given
            or action.required
            or re.search(r"\bdefault[: ]", text.lower())
        ):
            return text
        shown = "unset" if action.default is None else "%(default)s"
        return f"{text} (default: {shown})".strip()


def _all_parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_parsers(sub)


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
    for p in _all_parsers(parser):
        p.formatter_class = HelpFormatter
        for action in p._actions:  # argparse prints nothing for an option without help: say its default
            if action.help is None and action.option_strings and action.nargs != 0:
                action.help = "(default: unset)" if action.default is None else "(default: %(default)s)"
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
