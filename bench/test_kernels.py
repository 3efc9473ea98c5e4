"""Kernel benchmarks: every implementation of attention / guided_step / reward_head, forward, backward
and both (see ``easytune.bench.kernels``); unavailable implementations are skipped with their reason."""

from __future__ import annotations

from functools import cache

import pytest
import torch

from easytune import ops
from easytune.bench.ceilings import throughput
from easytune.bench.kernels import PASSES, KernelCase, Skipped, build_cases, default_shapes, kernel_row

EXTRA_IMPLS = {
    "attention": ("sdpa-mask", "sdpa-math", "flex", "xformers-varlen", "flash-attn-varlen"),
    "guided_step": ("eager", "diffusers"),
    "reward_head": ("eager", "torch-cosine"),
}


def _impls(op: str) -> list[str]:
    """Implementation names: the op's dispatch backends (``math`` is the eager baseline of guided_step
    and reward_head, so it is listed there once) and the external baselines."""
    backends = [b for b in ops.dispatch.PRIORITY[op] if op == "attention" or b != "math"]
    return [f"ops:{b}" for b in backends] + list(EXTRA_IMPLS[op])


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "kernel_param" not in metafunc.fixturenames:
        return
    device = metafunc.config.getoption("--device")
    params, ids = [], []
    for op, shapes in default_shapes(device, metafunc.config.getoption("--batch")).items():
        for shape in shapes:
            for impl in _impls(op):
                for p in PASSES:
                    params.append((op, shape, impl, p))
                    ids.append(f"{op}-{'x'.join(map(str, shape))}-{impl}-{p}")
    metafunc.parametrize("kernel_param", params, ids=ids)


@cache
def _cases(op: str, shape: tuple[int, ...], device: str, dtype: str) -> dict[str, KernelCase | Skipped]:
    return {c.impl: c for c in build_cases(op, shape, device, dtype)}


def test_kernel(benchmark, bench_options, kernel_param) -> None:
    op, shape, impl, pass_ = kernel_param
    o = bench_options
    case = _cases(op, shape, o.device, o.kernel_dtype).get(impl)
    if case is None:
        pytest.skip(f"{impl} is not built for {op}")
    if isinstance(case, Skipped):
        pytest.skip(case.reason)
    if pass_ != "fwd" and not case.leaves:
        pytest.skip(case.no_backward)
    fn = case.pass_fn(pass_)
    if torch.device(o.device).type == "cuda":

        def run() -> None:
            fn()
            torch.cuda.synchronize()
    else:
        run = fn
    benchmark(run)
    median = benchmark.stats.stats.median
    row = kernel_row(case, pass_, None, None, o.device, o.kernel_dtype)
    row.update(median_s=median, timer="pytest-benchmark (perf_counter, synchronised)")
    row.update(throughput(median, flops=case.flops.get(pass_), bytes_moved=case.bytes_moved.get(pass_)))
    benchmark.group = "kernel"
    benchmark.extra_info.update(row)
    # Relative to the reference's largest magnitude (guided_step outputs reach ~30 at guidance 7.5).
    tolerance = 1e-4 if o.kernel_dtype == "float32" else 3e-2
    rel = case.max_abs_err / case.reference_max
    assert rel <= tolerance, f"{impl} is {case.max_abs_err} ({rel:.1e} relative) off the float64 reference"
