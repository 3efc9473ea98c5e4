"""Method benchmarks: one trainer step (one sampled trajectory) per benchmark round, memory measured in a
separate step first (see ``easytune.bench.methods``)."""

from __future__ import annotations

import pytest
import torch

from easytune.bench.memory import PeakMemory
from easytune.bench.methods import StepRecorder, parse_cases, prepare_method_case

ROUNDS = 2


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "method_case" in metafunc.fixturenames:
        cases = parse_cases(metafunc.config.getoption("--cases"))
        metafunc.parametrize("method_case", cases, ids=[c.label for c in cases])


def test_method(benchmark, bench_options, method_case) -> None:
    o = bench_options
    prepared = prepare_method_case(
        o.preset, o.device, o.batch, method_case.method, method_case.k, o.ddim_steps
    )
    recorder = StepRecorder(prepared)
    device = prepared.setup.device
    with PeakMemory(device) as timed_peak:
        benchmark.pedantic(recorder.step, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    row = {
        "kind": "method",
        "case": f"{method_case.label}/{o.preset}/b{o.batch}/{device.type}",
        **prepared.row,
        **recorder.fields(),
    }
    if device.type == "cuda" and timed_peak.peak_bytes > row["peak_bytes"]:
        row["peak_bytes"] = timed_peak.peak_bytes
        row["additional_bytes"] = timed_peak.peak_bytes - row["nograd_peak_bytes"]
    benchmark.group = "method"
    benchmark.extra_info.update(row)
    # Sanity of what was measured: EasyTune-K updates K times per trajectory, the others once.
    expected_updates = method_case.k if method_case.method == "EasyTune" else 1
    assert row["updates_per_step"] == expected_updates
    assert row["saved_bytes"] > 0 and row["peak_bytes"] > row["weights_bytes"]
    assert torch.isfinite(torch.tensor(row["reward"]))
