"""Config dataclasses as the single source of a command's options, and config files.

A config is a dataclass whose fields carry their help text (``option(default, help, ...)``); from it
``add_arguments`` generates the argparse options (flag ``--field-name`` unless renamed, type and choices from
the field, the default shown), and ``from_command_line`` builds the config in one step: the dataclass
defaults, overridden by a YAML file given with ``--config`` (keys are field names), overridden by the flags
actually given on the command line. ``write_yaml`` saves a resolved config (every field a run needs: a run can
be repeated from its saved file alone). Validation is the dataclass's ``__post_init__``, naming the flag.

No torch import here: building a parser stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import tempfile
import types
import typing
from pathlib import Path
from typing import Any

from easytune.errors import ConfigError

MISSING = dataclasses.MISSING


def option(
    default: Any = MISSING,
    help: str = "",
    *,
    flag: str | None = None,
    choices: tuple[Any, ...] | None = None,
    metavar: str | None = None,
    cli: bool = True,
    saved: bool = True,
    default_factory: Any = MISSING,
) -> Any:
    """A config field: ``help`` for ``--help``; ``flag`` when the command-line name is not ``--field-name``;
    ``cli=False``: no generated flag (set by the command itself); ``saved=False``: a per-invocation action
    (``--resume``) left out of the saved config."""
    meta = {"help": help, "flag": flag, "choices": choices, "metavar": metavar, "cli": cli, "saved": saved}
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flag_of(f: dataclasses.Field) -> str:
    """The command-line flag of a field (``--batch-size``, or its declared ``flag``)."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _base_type(hint: Any) -> tuple[Any, bool]:
    """(the type a value has, whether None is allowed): ``int | None`` -> (int, True)."""
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else hint), True
    return hint, False


def _default(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


def add_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    exclude: tuple[str, ...] = (),
    shown: dict[str, Any] | None = None,
) -> None:
    """Add one option per field of ``cls`` (with ``cli``, not in ``exclude``) to ``parser``, every default
    ``SUPPRESS`` so that ``from_command_line`` sees only the flags given; ``--help`` shows the dataclass
    default, or ``shown[field]`` where the command starts from other defaults (``from_command_line``'s
    ``defaults``)."""
    hints = _hints(cls)
    unknown = set(exclude) | set(shown or {})
    unknown -= {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise TypeError(f"{cls.__name__} has no fields {sorted(unknown)}")
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli", True) or f.name in exclude:
            continue
        typ, optional = _base_type(hints[f.name])
        default = (shown or {}).get(f.name, _default(f))
        shown_default = "unset" if default is None else default
        helptext = f.metadata.get("help", "")
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        if typ is bool:
            if default is True:
                parser.add_argument(
                    "--no-" + flag_of(f)[2:], action="store_false", help=f"{helptext} (default: on)", **kwargs
                )
            else:
                parser.add_argument(flag_of(f), action="store_true", help=helptext, **kwargs)
            continue
        if typing.get_origin(typ) is tuple:
            kwargs.update(action="append", type=typing.get_args(typ)[0])
            helptext += " (repeatable)"
        elif typ in (int, float, str):
            kwargs["type"] = typ
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: no command-line form for {typ} (declare cli=False)")
        if f.metadata.get("choices"):
            kwargs["choices"] = f.metadata["choices"]
        if not f.metadata.get("choices"):
            kwargs["metavar"] = f.metadata.get("metavar") or flag_of(f)[2:].upper().replace("-", "_")
        parser.add_argument(flag_of(f), help=f"{helptext} (default: {shown_default})", **kwargs)


def read_yaml(path: str | os.PathLike, cls: type) -> dict[str, Any]:
    """The field values a YAML config file sets (a mapping of field names); an unknown key, a value of the
    wrong type or a file that is not a mapping is refused naming the file and the key."""
    import yaml  # lazily: only runs that read a config file need it

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"--config {p}: the file does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--config {p}: cannot be read as UTF-8 text ({e})") from None
    try:
        data = yaml.safe_load(text)  # plain data only: never constructs Python objects
    except yaml.YAMLError as e:
        raise ConfigError(f"--config {p}: not valid YAML ({e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"--config {p}: expected a mapping of option names to values, got {type(data).__name__}"
        )
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = _hints(cls)
    unknown = sorted(str(k) for k in data if k not in fields)
    if unknown:
        raise ConfigError(f"--config {p}: unknown keys {unknown}; the keys are {sorted(fields)}")
    return {name: _coerce(p, name, value, hints[name]) for name, value in data.items()}


def _coerce(path: Path, name: str, value: Any, hint: Any) -> Any:
    typ, optional = _base_type(hint)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"--config {path}: {name} may not be null")
    origin = typing.get_origin(typ)
    ok = True
    if typ is bool:
        ok = isinstance(value, bool)
    elif typ is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif typ is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif typ is str:
        ok = isinstance(value, str)
    elif origin is tuple:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        value = tuple(value) if ok else value
    elif origin is dict:
        ok = isinstance(value, dict)
    if not ok:
        raise ConfigError(f"--config {path}: {name} must be {typing.get_args(hint) or hint}, got {value!r}")
    return value


def from_command_line(
    cls: type, args: argparse.Namespace, *, defaults: dict[str, Any] | None = None, **given: Any
) -> Any:
    """``cls`` from its field defaults < ``defaults`` (the command's own, e.g. inherited from a checkpoint) <
    the YAML file ``args.config`` (if any) < the flags given (``args`` built by ``add_arguments``) <
    ``given`` (values the command computed itself)."""
    values: dict[str, Any] = dict(defaults or {})
    if getattr(args, "config", None):
        values.update(read_yaml(args.config, cls))
    names = {f.name for f in dataclasses.fields(cls)}
    values.update({k: v for k, v in vars(args).items() if k in names})
    values.update(given)
    for name, value in values.items():
        if isinstance(value, list):
            values[name] = tuple(value)
    return cls(**values)


def to_dict(cfg: Any, saved_only: bool = True) -> dict[str, Any]:
    """The config's fields as plain data (tuples as lists, paths as strings); ``saved_only``: without
    per-invocation fields."""
    out = {}
    for f in dataclasses.fields(cfg):
        if saved_only and not f.metadata.get("saved", True):
            continue
        value = getattr(cfg, f.name)
        if isinstance(value, os.PathLike):  # a path given as Path by a library caller
            value = os.fspath(value)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def write_yaml(cfg: Any, path: str | os.PathLike) -> Path:
    """Write the resolved config (``to_dict``) as YAML, atomically (temporary file + rename)."""
    import yaml

    p = Path(path)
    text = f"# {type(cfg).__name__}: repeat with --config {p.name}\n" + yaml.safe_dump(
        to_dict(cfg), sort_keys=False, default_flow_style=False
    )
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def check_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    what: str = "",
) -> None:
    """Refuse a non-number, NaN, inf or a value outside the range, naming the option and the range."""
    lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
    hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
    accepted = f"{lo or '(-inf'}, {hi or 'inf)'}"
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise ConfigError(
            f"{name} must be a finite number in {accepted}{' ' + what if what else ''}, got {value!r}"
        )


def fill_from_preset(cfg: Any, table: dict[str, dict[str, Any]], names: tuple[str, ...]) -> None:
    """Set each unset (None) field of ``names`` to ``table[cfg.preset][name]``; a preset without defaults
    is refused naming the flag and the presets that have them."""
    for name in names:
        if getattr(cfg, name) is None:
            if cfg.preset not in table:
                flag = "--" + name.replace("_", "-")
                raise ConfigError(
                    f"--preset {cfg.preset!r} has no default {flag}: give it, or use a preset among "
                    f"{sorted(table)}"
                )
            setattr(cfg, name, table[cfg.preset][name])


def check_int(name: str, value: Any, low: int, what: str = "") -> None:
    """Refuse a non-integer (a bool or a float included) or an integer below ``low``, naming the option."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}{' ' + what if what else ''}, got {value!r}")
