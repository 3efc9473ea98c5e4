"""What is known on the host about ``lengths`` tensors, so a model reads them once, not per layer or step.

A model passes one lengths tensor (int [B], frames per sample) to all its layers and, in a sampling loop, to
every step: ``check_range`` reads its values (a host sync for CUDA tensors) the first time only and remembers
the tensor (by identity and version: an in-place change is seen) as known to lie in the range;
``host_values`` reads (or knows) the values themselves, e.g. to lay out packed frames. ``mark_host``
records what the caller knows already (a batch built from host ints: nothing is ever read).
``offset`` derives ``lengths + n`` (a model's extra tokens) and carries the knowledge over, so the derived
tensor is not read either. Under ``torch.compile`` nothing is read.
"""

from __future__ import annotations

import weakref

import torch

from easytune.errors import ConfigError


class _Known:
    """What is known of one tensor at one version: its range [low, high] and, when known, its values."""

    __slots__ = ("ref", "version", "low", "high", "values")

    def __init__(self, lengths: torch.Tensor, low: int, high: int, values: tuple[int, ...] | None) -> None:
        self.ref, self.version = weakref.ref(lengths), lengths._version
        self.low, self.high, self.values = low, high, values


_KNOWN: dict[int, _Known] = {}  # id(tensor) -> what is known of it
_MAX_ENTRIES = 512


def _known(lengths: torch.Tensor) -> _Known | None:
    entry = _KNOWN.get(id(lengths))
    if entry is not None and entry.ref() is lengths and entry.version == lengths._version:
        return entry
    return None


def _remember(lengths: torch.Tensor, low: int, high: int, values: tuple[int, ...] | None = None) -> None:
    if len(_KNOWN) >= _MAX_ENTRIES:
        _KNOWN.clear()
    _KNOWN[id(lengths)] = _Known(lengths, low, high, values)


def check_range(lengths: torch.Tensor, low: int, high: int, what: str, name: str = "lengths") -> None:
    """Raise ``ConfigError`` ("{what}: {name} must lie in [low, high], got [...]") unless every value of
    ``lengths`` lies in [low, high]; reads the values only for a tensor not known to lie in that range."""
    if torch.compiler.is_compiling():
        return
    known = _known(lengths)
    if known is not None and known.low >= low and known.high <= high:
        return
    lo, hi = torch.aminmax(lengths.detach())
    lo, hi = int(lo), int(hi)  # the one device read
    if lo < low or hi > high:
        raise ConfigError(f"{what}: {name} must lie in [{low}, {high}], got {lengths.tolist()}")
    _remember(lengths, lo, hi, None if known is None else known.values)


def mark_host(lengths: torch.Tensor, values: list[int] | tuple[int, ...]) -> None:
    """Record the values of ``lengths`` (and so its range), known on the host: it was built from them."""
    values = tuple(int(n) for n in values)
    if len(values) != lengths.numel():
        raise ConfigError(f"mark_host: {len(values)} host values for a lengths tensor of {lengths.numel()}")
    _remember(lengths, min(values, default=0), max(values, default=0), values)


def host_values(lengths: torch.Tensor) -> tuple[int, ...]:
    """The values of int [B] ``lengths`` as host ints: known ones at no cost, else read once (a device read
    for CUDA tensors) and remembered for this tensor and version."""
    known = _known(lengths)
    if known is not None and known.values is not None:
        return known.values
    values = tuple(lengths.tolist())  # the one device read
    _remember(lengths, min(values, default=0), max(values, default=0), values)
    return values


def offset(lengths: torch.Tensor, n: int) -> torch.Tensor:
    """``lengths + n``, known to lie in the shifted range (with shifted values) when ``lengths`` was (no
    device read)."""
    out = lengths + n
    known = _known(lengths)
    if known is not None:
        values = None if known.values is None else tuple(v + n for v in known.values)
        _remember(out, known.low + n, known.high + n, values)
    return out
