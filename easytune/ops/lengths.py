"""Range checks of ``lengths`` tensors that cost one device read per tensor, not one per layer or step.

A model passes one lengths tensor (int [B], frames per sample) to all its layers and, in a sampling loop, to
every step: ``check_range`` reads its values (a host sync for CUDA tensors) the first time only and remembers
the tensor (by identity and version: an in-place change is seen) as known to lie in the range. ``offset``
derives ``lengths + n`` (a model's extra tokens) and carries the knowledge over, so the derived tensor is
not read either. Under ``torch.compile`` nothing is read.
"""

from __future__ import annotations

import weakref

import torch

from easytune.errors import ConfigError

# id(tensor) -> (weak reference, tensor version, low, high): the tensor is known to lie in [low, high]
_KNOWN: dict[int, tuple[weakref.ref, int, int, int]] = {}
_MAX_ENTRIES = 512


def _known(lengths: torch.Tensor) -> tuple[int, int] | None:
    entry = _KNOWN.get(id(lengths))
    if entry is not None and entry[0]() is lengths and entry[1] == lengths._version:
        return entry[2], entry[3]
    return None


def _remember(lengths: torch.Tensor, low: int, high: int) -> None:
    if len(_KNOWN) >= _MAX_ENTRIES:
        _KNOWN.clear()
    _KNOWN[id(lengths)] = (weakref.ref(lengths), lengths._version, low, high)


def check_range(lengths: torch.Tensor, low: int, high: int, what: str, name: str = "lengths") -> None:
    """Raise ``ConfigError`` ("{what}: {name} must lie in [low, high], got [...]") unless every value of
    ``lengths`` lies in [low, high]; reads the values only for a tensor not known to lie in that range."""
    if torch.compiler.is_compiling():
        return
    known = _known(lengths)
    if known is not None and known[0] >= low and known[1] <= high:
        return
    lo, hi = torch.aminmax(lengths.detach())
    lo, hi = int(lo), int(hi)  # the one device read
    if lo < low or hi > high:
        raise ConfigError(f"{what}: {name} must lie in [{low}, {high}], got {lengths.tolist()}")
    _remember(lengths, lo, hi)


def mark_checked(lengths: torch.Tensor, low: int, high: int) -> None:
    """Record that ``lengths`` lies in [low, high], known on the host (e.g. it was built from host ints)."""
    _remember(lengths, low, high)


def offset(lengths: torch.Tensor, n: int) -> torch.Tensor:
    """``lengths + n``, known to lie in the shifted range when ``lengths`` was (no device read)."""
    out = lengths + n
    known = _known(lengths)
    if known is not None:
        _remember(out, known[0] + n, known[1] + n)
    return out
