"""Means with 95% intervals over seeds, paired differences, the time a reward curve needs to reach a level.

An interval is Student's t: ``mean +- t(0.975, n - 1) * sd / sqrt(n)`` over the n seeds (None with one seed:
no interval is claimed from a single run). A paired difference subtracts, seed by seed, two runs that saw
the same prompts and noise; it is significant when its interval excludes 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

# t(0.975, df) for df = 1..30 (beyond: the normal 1.96 is within 2%)
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (df >= 1)."""
    if df < 1:
        raise ValueError(f"t975: df must be >= 1, got {df}")
    return _T975[df - 1] if df <= len(_T975) else 1.96


def interval(values: Sequence[float | None]) -> dict[str, Any]:
    """``{"mean", "half", "low", "high", "n", "values"}`` of the finite values (``half``: the 95% half-width,
    None for fewer than two values; ``mean`` None when there is no value)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(finite)
    mean = float(np.mean(finite)) if n else None
    half = t975(n - 1) * float(np.std(finite, ddof=1)) / math.sqrt(n) if n >= 2 else None
    return {
        "mean": mean,
        "half": half,
        "low": None if half is None else mean - half,
        "high": None if half is None else mean + half,
        "n": n,
        "values": finite,
    }


def paired_difference(a: Sequence[float | None], b: Sequence[float | None]) -> dict[str, Any]:
    """``interval`` of ``a[i] - b[i]`` over the pairs where both are finite, plus ``significant``: the
    interval excludes 0 (False without an interval, and when every pair differs by the same amount: a zero
    spread, which discrete metrics on few prompts produce, is no evidence)."""
    if len(a) != len(b):
        raise ValueError(f"paired_difference: {len(a)} values against {len(b)}")
    diffs = [
        float(x) - float(y)
        for x, y in zip(a, b)
        if x is not None and y is not None and math.isfinite(float(x)) and math.isfinite(float(y))
    ]
    out = interval(diffs)
    # a spread, not rounding noise (False: every pair differed by the same amount; None: no interval)
    out["spread"] = None if out["half"] is None else out["half"] > 1e-9 * max(1.0, abs(out["mean"]))
    out["significant"] = bool(out["spread"]) and (out["low"] > 0 or out["high"] < 0)
    return out


def format_interval(cell: dict[str, Any], fmt: str = ".3f") -> str:
    """``0.263±.035`` (the papers' style: the half-width without its leading zero), ``0.263`` without one,
    ``-`` without a value."""
    if cell.get("mean") is None:
        return "-"
    text = format(cell["mean"], fmt)
    if cell.get("half") is None:
        return text
    half = format(cell["half"], fmt)
    return f"{text}±{half[1:] if half.startswith('0.') else half}"


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over up to ``window`` values (the first ones average what there is)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def time_to_level(
    times: Sequence[float], rewards: Sequence[float], level: float, window: int = 5
) -> float | None:
    """The first time at which the trailing ``window``-mean of ``rewards`` (one per trajectory, logged at
    ``times``) is at or above ``level`` once ``window`` values exist (or all of a shorter run); None if
    never."""
    if len(times) != len(rewards):
        raise ValueError(f"time_to_level: {len(times)} times against {len(rewards)} rewards")
    need = min(window, len(rewards))
    for i, mean in enumerate(moving_average(rewards, window)):
        if i + 1 >= need and mean >= level:
            return float(times[i])
    return None


def curve_band(
    curves: Sequence[tuple[Sequence[float], Sequence[float]]], grid: Sequence[float], window: int = 5
) -> dict[str, list[float | None]]:
    """Mean and 95% band over seeds of reward curves ``(times, rewards)`` (each smoothed by
    ``moving_average``) on a common time ``grid``: a curve counts at a grid time from its first logged point
    to its last (the value of its last point at or before the grid time)."""
    columns: list[list[float]] = [[] for _ in grid]
    for times, rewards in curves:
        smooth = moving_average(list(rewards), window)
        for j, g in enumerate(grid):
            idx = int(np.searchsorted(np.asarray(times), g, side="right")) - 1
            if idx >= 0 and g <= times[-1]:
                columns[j].append(smooth[idx])
    cells = [interval(col) for col in columns]
    return {
        "time": [float(g) for g in grid],
        "mean": [c["mean"] for c in cells],
        "low": [c["low"] for c in cells],
        "high": [c["high"] for c in cells],
        "n": [c["n"] for c in cells],
    }
