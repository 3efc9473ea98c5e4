"""Timers: perf_counter on CPU, CUDA events on GPU (triton ``do_bench`` style: warm-up and repeat
counts sized from an estimate, L2 flushed before each call), and CUDA-graph replay for microsecond
kernels (launch overhead amortised over ``graph_calls`` captured calls).

Every timer returns ``TimingStats``: the median and the 20th / 80th percentiles of the per-call
seconds, plus mean, min, max and the number of timed calls.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from easytune.errors import ConfigError


@dataclass(frozen=True)
class TimingStats:
    """Per-call seconds: median and 20th/80th percentiles (linear interpolation), mean, min, max, n."""

    median_s: float
    p20_s: float
    p80_s: float
    mean_s: float
    min_s: float
    max_s: float
    n: int
    method: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ascending ``sorted_values``, linear interpolation (numpy's default)."""
    if not sorted_values:
        raise ConfigError("quantile of an empty list of timings")
    pos = q * (len(sorted_values) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(times_s: Sequence[float], method: str) -> TimingStats:
    """``TimingStats`` of a list of per-call seconds."""
    s = sorted(float(t) for t in times_s)
    if not s:
        raise ConfigError("summarize: no timings were taken")
    return TimingStats(
        statistics.median(s),
        quantile(s, 0.2),
        quantile(s, 0.8),
        statistics.fmean(s),
        s[0],
        s[-1],
        len(s),
        method,
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn: Callable[[], Any], device: str | torch.device) -> tuple[float, Any]:
    """(wall seconds of one call, its result), the device synchronised before and after."""
    device = torch.device(device)
    synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - t0, out


def _check_counts(min_repeats: int, max_repeats: int, min_time_s: float) -> None:
    if min_repeats < 1 or max_repeats < min_repeats:
        raise ConfigError(f"need 1 <= min_repeats <= max_repeats, got {min_repeats}, {max_repeats}")
    if min_time_s < 0:
        raise ConfigError(f"min_time_s must be >= 0, got {min_time_s}")


def bench_cpu(
    fn: Callable[[], Any],
    *,
    warmup: int = 2,
    min_repeats: int = 5,
    max_repeats: int = 1000,
    min_time_s: float = 0.2,
) -> TimingStats:
    """perf_counter per call, after ``warmup`` calls, until ``min_repeats`` calls and ``min_time_s``
    seconds (or ``max_repeats`` calls)."""
    _check_counts(min_repeats, max_repeats, min_time_s)
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_repeats and (len(times) < min_repeats or time.perf_counter() - start < min_time_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return summarize(times, "perf_counter")


_L2_FLUSH: dict[torch.device, torch.Tensor] = {}


def _flush_l2(device: torch.device) -> None:
    """Overwrite a 256 MiB buffer so the next call starts with a cold L2 (as triton's do_bench)."""
    buf = _L2_FLUSH.get(device)
    if buf is None:
        buf = _L2_FLUSH[device] = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.int32, device=device)
    buf.zero_()


def bench_cuda(
    fn: Callable[[], Any],
    device: str | torch.device = "cuda",
    *,
    warmup_ms: float = 25.0,
    rep_ms: float = 100.0,
    min_repeats: int = 10,
    max_repeats: int = 1000,
    flush_l2: bool = True,
) -> TimingStats:
    """CUDA events around each call (needs a GPU). Call counts come from a 5-call estimate so warm-up
    lasts ~``warmup_ms`` and timing ~``rep_ms``, clamped to [``min_repeats``, ``max_repeats``]."""
    _check_counts(min_repeats, max_repeats, 0.0)
    device = torch.device(device)
    fn()
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        if flush_l2:
            _flush_l2(device)
        fn()
    end.record()
    torch.cuda.synchronize(device)
    estimate_ms = max(start.elapsed_time(end) / 5, 1e-3)
    n_warmup = max(1, int(warmup_ms / estimate_ms))
    n_repeat = min(max_repeats, max(min_repeats, int(rep_ms / estimate_ms)))
    for _ in range(n_warmup):
        fn()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n_repeat)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n_repeat)]
    for s, e in zip(starts, ends):
        if flush_l2:
            _flush_l2(device)
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize(device)
    method = "cuda events, L2 flushed" if flush_l2 else "cuda events"
    return summarize([s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends)], method)


def bench_cuda_graph(
    fn: Callable[[], Any], device: str | torch.device = "cuda", *, graph_calls: int = 20, replays: int = 20
) -> TimingStats:
    """Capture ``graph_calls`` calls of ``fn`` in one CUDA graph, time ``replays`` replays with events;
    per-call seconds = replay time / ``graph_calls`` (for kernels whose launch cost rivals their run
    time; ``fn`` must be capturable: no host syncs, no CPU tensors created inside)."""
    if graph_calls < 1 or replays < 1:
        raise ConfigError(f"graph_calls and replays must be >= 1, got {graph_calls}, {replays}")
    device = torch.device(device)
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm-up on a side stream, as capture requires
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(graph_calls):
            fn()
    graph.replay()
    torch.cuda.synchronize(device)
    times = []
    for _ in range(replays):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        graph.replay()
        e.record()
        torch.cuda.synchronize(device)
        times.append(s.elapsed_time(e) / 1e3 / graph_calls)
    return summarize(times, f"cuda graph replay ({graph_calls} calls per graph)")


def bench(
    fn: Callable[[], Any], device: str | torch.device, *, cuda_graph: bool = False, **kwargs: Any
) -> TimingStats:
    """``bench_cpu`` on CPU; on CUDA ``bench_cuda_graph`` when ``cuda_graph`` else ``bench_cuda``."""
    device = torch.device(device)
    if device.type == "cuda":
        return bench_cuda_graph(fn, device, **kwargs) if cuda_graph else bench_cuda(fn, device, **kwargs)
    if cuda_graph:
        raise ConfigError(f"cuda_graph=True needs a CUDA device, got {device}")
    return bench_cpu(fn, **kwargs)
