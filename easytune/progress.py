"""Progress bars: the one helper every long command uses (tqdm with rate and ETA; no torch import)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(
    iterable: Iterable[T], *, total: int | None = None, desc: str = "", unit: str = "it", enabled: bool = True
) -> Iterator[T]:
    """A tqdm progress bar (rate and ETA) over ``iterable`` when ``enabled``; the iterable is consumed in
    full either way. The bar goes to stderr and is removed when done."""
    if not enabled:
        return iter(iterable)
    from tqdm.auto import tqdm

    return iter(tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False))
