"""Timers, kernel cases and a small end-to-end method benchmark on CPU."""

import numpy as np
import pytest
import torch

from easytune.bench.kernels import run_kernels
from easytune.bench.methods import parse_cases, run_methods
from easytune.bench.timing import bench, bench_cpu, quantile, summarize
from easytune.errors import ConfigError


def test_quantiles_match_numpy():
    values = sorted(np.random.default_rng(0).random(37).tolist())
    for q in (0.0, 0.2, 0.5, 0.8, 1.0):
        assert quantile(values, q) == pytest.approx(np.percentile(values, 100 * q))
    s = summarize([3.0, 1.0, 2.0, 10.0], "x")
    assert (s.median_s, s.min_s, s.max_s, s.n) == (2.5, 1.0, 10.0, 4)
    assert s.p20_s == pytest.approx(np.percentile([1, 2, 3, 10], 20))


def test_cpu_timer_counts_and_errors():
    calls = []
    stats = bench_cpu(lambda: calls.append(1), warmup=3, min_repeats=7, max_repeats=7, min_time_s=0.0)
    assert stats.n == 7 and len(calls) == 10 and stats.method == "perf_counter"
    with pytest.raises(ConfigError, match="CUDA"):
        bench(lambda: None, "cpu", cuda_graph=True)
    with pytest.raises(ConfigError):
        bench_cpu(lambda: None, min_repeats=0)


def test_kernel_rows_are_checked_and_skips_have_reasons():
    shapes = {"attention": [(2, 2, 8, 8)], "guided_step": [(2, 1, 16)], "reward_head": [(2, 16)]}
    rows = run_kernels(
        "cpu", "float32", shapes=shapes, warmup=0, min_repeats=2, max_repeats=2, min_time_s=0.0
    )
    by = {(r["op"], r["impl"], r["pass"]): r for r in rows}
    base = by[("attention", "sdpa-mask", "fwd+bwd")]
    assert base["speedup"] == 1.0 and base["max_abs_err"] < 1e-5 and base["n"] == 2
    assert by[("attention", "ops:math", "bwd")]["max_abs_err"] < 1e-5
    assert by[("guided_step", "eager", "fwd")]["max_abs_err"] < 1e-5
    assert by[("reward_head", "torch-cosine", "fwd")]["max_abs_err"] < 1e-5
    assert (
        by[("attention", "flex", "fwd")]["status"] == "skipped" and by[("attention", "flex", "fwd")]["reason"]
    )
    for r in rows:
        assert r.get("status") == "skipped" and r["reason"] or r["median_s"] > 0
    if not torch.cuda.is_available():
        assert "GPU" in by[("guided_step", "ops:triton", "fwd")]["reason"]


def test_parse_cases():
    cases = parse_cases("EasyTune-10, draft-50,alignprop,refl-10")
    assert [c.label for c in cases] == ["EasyTune-10", "DRaFT-50", "AlignProp", "ReFL-10"]
    for bad in ("foo-1", "draft-x", ""):
        with pytest.raises(ConfigError):
            parse_cases(bad)


def test_method_rows_easytune_memory_is_flat_in_k_draft_grows():
    rows = run_methods(
        "tiny",
        "cpu",
        1,
        parse_cases("easytune-1,easytune-3,draft-3"),
        steps=4,
        repeats=1,
        warmup=1,
        isolate=False,
    )
    by = {r["case"]: r for r in rows}
    e1, e3, d3 = by["EasyTune-1/tiny/b1/cpu"], by["EasyTune-3/tiny/b1/cpu"], by["DRaFT-3/tiny/b1/cpu"]
    for r in (e1, e3, d3):
        assert r["kind"] == "method" and r["peak_bytes"] > r["nograd_peak_bytes"] > 0
        assert r["seconds_per_update"] > 0 and r["batch"] == 1
    assert (e1["updates_per_step"], e3["updates_per_step"], d3["updates_per_step"]) == (1, 3, 1)
    # Exact byte counts: EasyTune holds one step's graph whatever K; DRaFT-3 holds three denoiser steps.
    assert e1["saved_bytes"] == e3["saved_bytes"]
    assert d3["saved_bytes"] > e3["saved_bytes"]
    # Peak of live tensors: flat up to a few scalar bookkeeping tensors (K=3 keeps a couple of extra floats).
    assert abs(e3["peak_bytes"] - e1["peak_bytes"]) <= 1e-3 * e1["peak_bytes"]


def test_cases_carry_method_options():
    """``easytune-10:weighting=snr``: the benchmarks compare a method's options (issue 17's weightings)."""
    snr, late = parse_cases("easytune-10:weighting=snr,easytune-4:weighting=late:variant=chain")
    assert snr.label == "EasyTune-10:weighting=snr" and snr.build().weighting == "snr" and snr.build().k == 10
    assert late.build().variant == "chain" and late.options == (("weighting", "late"), ("variant", "chain"))
    for bad, message in (
        ("easytune-10:weighting", "is not OPTION=VALUE"),
        ("easytune-10:colour=red", "is not OPTION=VALUE"),
        ("easytune-10:k=x", "not a int"),
        ("easytune-10:weighting=sideways", "weighting"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_cases(bad)[0].build()
