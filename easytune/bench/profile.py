"""Profiler summary of EasyTune updates: kernel count, top kernels, and how busy the GPU is.

``profile_updates`` runs one warm-up trajectory of EasyTune-K on a method-benchmark preset, then one
trajectory (K updates) under ``torch.profiler``. On CUDA it reports the number of GPU kernels (per
trajectory and per update), the kernels with the most GPU time, and the **busy fraction**: the union of
the kernels' time intervals over the wall time of the trajectory (1.0: the GPU never waited for the
host). On a CPU it reports the aten operators instead (and no busy fraction).
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import torch

from easytune.errors import ConfigError


def _union_us(intervals: list[tuple[float, float]]) -> float:
    """Total length of the union of [start, end] intervals (microseconds)."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if start > end:
            total += stop - start
            end = stop
        elif stop > end:
            total += stop - end
            end = stop
    return total


def profile_updates(
    preset: str = "mld",
    device: str = "cuda",
    batch: int = 64,
    k: int = 10,
    steps: int = 50,
    seed: int = 0,
    precision: str = "fp32",
    compile: str | None = None,
    top: int = 12,
) -> dict[str, Any]:
    """One profiled EasyTune-``k`` trajectory (see the module docstring); returns one result row."""
    from easytune import methods
    from easytune.bench.methods import build_setup

    if k < 1 or k > steps:
        raise ConfigError(f"k must be in [1, steps={steps}], got {k}")
    setup = build_setup(preset, device, batch, steps, seed, precision=precision)
    dev = setup.device
    cuda = dev.type == "cuda"
    trainer = setup.trainer(methods.EasyTune(k=k), compile=compile)
    trainer.step(setup.batch)  # warm-up: compile, tables, optimizer state
    activities = [torch.profiler.ProfilerActivity.CPU]
    if cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
        torch.cuda.synchronize(dev)
    with torch.profiler.profile(activities=activities) as prof:
        t0 = time.perf_counter()
        stats = trainer.step(setup.batch)
        if cuda:
            torch.cuda.synchronize(dev)
        wall_s = time.perf_counter() - t0
    events = prof.events()
    if cuda:
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    else:
        kernels = [e for e in events if e.cpu_parent is None and e.name.startswith("aten::")]
    by_name: dict[str, list[float]] = defaultdict(list)
    for e in kernels:
        by_name[e.name].append(e.time_range.elapsed_us())
    ranked = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:top]
    busy_us = _union_us([(e.time_range.start, e.time_range.end) for e in kernels]) if cuda else None
    updates = int(stats["updates"])
    return {
        "kind": "profile",
        "case": f"profile/easytune-{k}/{preset}/b{batch}/{dev.type}/{precision}"
        + (f"/{compile}" if compile else ""),
        "preset": preset,
        "device": str(dev),
        "batch": batch,
        "k": k,
        "ddim_steps": steps,
        "precision": precision,
        "compile": compile,
        "what": "cuda kernels" if cuda else "top-level aten operators",
        "wall_s": wall_s,
        "updates": updates,
        "seconds_per_update": wall_s / updates,
        "kernel_count": len(kernels),
        "kernels_per_update": len(kernels) / updates,
        "kernel_time_s": sum(e.time_range.elapsed_us() for e in kernels) / 1e6,
        "busy_fraction": None if busy_us is None else busy_us / (wall_s * 1e6),
        "top_kernels": [
            {"name": name[:120], "calls": len(times), "total_ms": sum(times) / 1e3} for name, times in ranked
        ],
    }
