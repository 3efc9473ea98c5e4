"""The one list of fine-tuning methods: names, count arguments, options and how to build them.

A method is named on the command line, in config files and in benchmark cases by a spec ``NAME[-COUNT]``:
``easytune-10`` is ``EasyTune(k=10)``, ``draft-50`` is ``DRaFT(k=50)``, ``refl-10`` is ``ReFL(m=10)``,
``draft-lv-2`` is ``DRaFTLV(n=2)``, ``alignprop`` takes no count. Names are case-insensitive;
``draftlv`` is accepted for ``draft-lv``.

No torch import here (the CLI builds its options from this table and ``easytune --help`` stays fast): the
classes are imported when a method is built. ``tests/test_method_registry.py`` checks that every entry's
options are its class's constructor arguments, with the same defaults.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from easytune.errors import ConfigError


@dataclass(frozen=True)
class MethodOption:
    """One constructor argument a method takes from the command line / a config file."""

    name: str
    type: type
    help: str
    choices: tuple[str, ...] | None = None


@dataclass(frozen=True)
class MethodInfo:
    """``name``: the spec name; ``label``: the paper's name (benchmark rows, plots); ``target``:
    ``module:Class``; ``count``: the argument a spec's ``-COUNT`` sets (None: takes none);
    ``options``: every option the command line and config files may set."""

    name: str
    label: str
    target: str
    count: str | None
    options: tuple[MethodOption, ...]
    summary: str

    def load(self) -> type:
        module, _, cls = self.target.partition(":")
        return getattr(importlib.import_module(module), cls)

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.options)


_K = MethodOption("k", int, "EasyTune / DRaFT / DRTune: number of steps with gradients")
_M = MethodOption("m", int, "ReFL / DRTune: early stop drawn among the last m steps")

# In the order of the docs table (docs/methods.md; tested).
METHODS: tuple[MethodInfo, ...] = (
    MethodInfo(
        "easytune", "EasyTune", "easytune.methods.easytune:EasyTune", "k",
        (
            _K,
            MethodOption(
                "weighting",
                str,
                "EasyTune: per-step loss weights (snr, gradnorm: adaptive)",
                ("uniform", "early", "late", "snr", "gradnorm"),
            ),
            MethodOption("variant", str, "EasyTune: step or chain optimisation", ("step", "chain")),
        ),
        "an update at each of the last K steps on the one-step prediction",
    ),
    MethodInfo(
        "draft", "DRaFT", "easytune.methods.draft:DRaFT", "k", (_K,),
        "back-propagation through the last K steps of the chain",
    ),
    MethodInfo(
        "draft-lv", "DRaFTLV", "easytune.methods.draft:DRaFTLV", "n",
        (MethodOption("n", int, "DRaFT-LV: re-noised copies"),),
        "n re-noised one-step gradients at the last step",
    ),
    MethodInfo(
        "refl", "ReFL", "easytune.methods.refl:ReFL", "m", (_M,),
        "one step with gradients at a random late step",
    ),
    MethodInfo(
        "drtune", "DRTune", "easytune.methods.drtune:DRTune", "k", (_K, _M),
        "K spread steps with detached inputs, early stop among the last m",
    ),
    MethodInfo(
        "alignprop", "AlignProp", "easytune.methods.alignprop:AlignProp", None,
        (
            MethodOption("mean", float, "AlignProp: mean backprop start step (default 0.84 x steps)"),
            MethodOption("std", float, "AlignProp: std of the start step (default 0.1 x steps)"),
            MethodOption("distribution", str, "AlignProp: start distribution", ("normal", "uniform")),
            MethodOption("low", int, "AlignProp: earliest start step (default 1)"),
            MethodOption("high", int, "AlignProp: latest start step (default: inference steps - 1)"),
        ),
        "back-propagation from a random start step, checkpointed",
    ),
)  # fmt: skip
_BY_NAME = {m.name: m for m in METHODS}
_ALIASES = {"draftlv": "draft-lv", **{m.label.lower(): m.name for m in METHODS}}


def names() -> tuple[str, ...]:
    """The method names, in the docs table's order."""
    return tuple(m.name for m in METHODS)


def info(name: str) -> MethodInfo:
    """The entry of ``name`` (case-insensitive; ``draftlv`` / class names accepted); ``ConfigError`` naming
    the known names otherwise."""
    key = name.strip().lower()
    entry = _BY_NAME.get(_ALIASES.get(key, key))
    if entry is None:
        raise ConfigError(f"unknown method {name!r}: the method must be one of {list(names())}")
    return entry


def options() -> dict[str, MethodOption]:
    """Every option any method takes, by name (the union the command line offers)."""
    out: dict[str, MethodOption] = {}
    for m in METHODS:
        for o in m.options:
            out.setdefault(o.name, o)
    return out


def parse_spec(spec: str) -> tuple[str, int | None]:
    """``"draft-50"`` -> ``("draft", 50)``; ``"draft-lv"`` -> ``("draft-lv", None)``; ``"alignprop"`` ->
    ``("alignprop", None)``. A trailing ``-COUNT`` is split off only when it is digits."""
    text = spec.strip()
    head, sep, tail = text.rpartition("-")
    if sep and tail.isdigit():
        name, count = head, int(tail)
    else:
        name, count = text, None
    entry = info(name)
    if count is not None and entry.count is None:
        raise ConfigError(f"method spec {spec!r}: {entry.name} takes no count")
    if count is not None and count < 1:
        raise ConfigError(f"method spec {spec!r}: the count must be >= 1")
    return entry.name, count


def build(name: str, **options: Any) -> Any:
    """The method ``name`` built with ``options``; unset (None) options keep the method's defaults, an option
    the method does not take is refused by name (with the ones it takes)."""
    entry = info(name)
    given = {k: v for k, v in options.items() if v is not None}
    for key in given:
        if key not in entry.option_names:
            flags = ", ".join(f"--{a}" for a in entry.option_names)
            raise ConfigError(f"--{key} does not apply to --method {entry.name} (it takes {flags})")
    return entry.load()(**given)


def from_spec(spec: str, **options: Any) -> Any:
    """``from_spec("draft-50")`` -> ``DRaFT(k=50)``; further ``options`` as in ``build`` (the count given
    both ways must agree)."""
    name, count = parse_spec(spec)
    entry = info(name)
    if count is not None:
        given = options.get(entry.count)
        if given is not None and given != count:
            raise ConfigError(f"method spec {spec!r} sets {entry.count}={count}, the options {given}")
        options = {**options, entry.count: count}
    return build(name, **options)


def label(name: str, count: int | None = None) -> str:
    """The benchmark / plot label: ``EasyTune-10``, ``AlignProp``."""
    entry = info(name)
    return entry.label if count is None else f"{entry.label}-{count}"


# The method cases ``easytune bench methods`` and ``pytest bench/`` run by default.
DEFAULT_BENCH_CASES = (
    "easytune-1,easytune-10,easytune-50,draft-1,draft-5,draft-10,draft-25,draft-50,refl-10,drtune,alignprop"
)
# The cases ``easytune bench time-to-reward`` trains by default (one per method, the paper's settings).
TIME_TO_REWARD_CASES = "easytune-10,draft-50,refl-10,drtune,alignprop"
