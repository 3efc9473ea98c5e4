"""``easytune.bench.overhead``: the per-op rows and the loop row, on tiny budgets (the figures themselves are
benchmarks, not tested): the right backends, finite numbers, and nothing left stubbed behind."""

from __future__ import annotations

import math
import sys

import torch

from easytune import ops
from easytune.bench import overhead


def test_op_overhead_rows_and_the_ops_still_compute_afterwards():
    rows = overhead.op_overhead("cpu", calls=5, blocks=3)
    assert [r["op"] for r in rows] == ["attention", "guided_step", "reward_head"]
    assert {r["op"]: r["backend"] for r in rows} == {
        "attention": "sdpa",
        "guided_step": "math",
        "reward_head": "math",
    }
    for r in rows:
        for field in ("auto_us", "bare_us", "overhead_us", "dispatch_us"):
            assert math.isfinite(r[field]), (r["op"], field)
        assert r["auto_us"] > 0 and r["bare_us"] > 0
        assert r["passes"] == (max(r["overhead_us"], r["dispatch_us"]) <= overhead.OP_TARGET_US)
    # the timing stubs out each backend's function: the memo must not keep serving the stub
    x, a = torch.randn(2, 1, 8), torch.full((2,), 0.5)
    _, x0, prev = ops.guided_step(x, x, x, a, a, guidance_scale=2.0)
    assert x0 is not None and prev.shape == x.shape
    assert torch.allclose(ops.reward_head(x[:, 0], x[:, 0]), torch.ones(2))


def test_paired_median_is_the_median_of_block_differences():
    times = {"a": [5.0, 7.0, 9.0, 4.0], "b": [1.0, 1.0, 2.0, 3.0]}
    assert overhead._paired_median(times, "a", "b") == (4.0 + 6.0) / 2  # diffs 4, 6, 7, 1
    times = {"a": [3.0, 5.0, 4.0], "b": [1.0, 1.0, 1.0]}
    assert overhead._paired_median(times, "a", "b") == 3.0
    times = {"a": [2.0, 3.3, 4.0], "b": [1.0, 3.0, 2.0]}
    assert overhead._paired_ratio(times, "a", "b") == 2.0  # ratios 2, 1.1, 2


def test_interleaved_pairs_blocks_and_flips_the_order_every_round():
    calls: list[str] = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("a", "b")}
    times = overhead._interleaved(fns, calls=2, blocks=3, device=torch.device("cpu"))
    assert {name: len(v) for name, v in times.items()} == {"a": 3, "b": 3}
    warm_up = 2 * 10
    assert calls[:warm_up] == ["a"] * 10 + ["b"] * 10
    assert calls[warm_up:] == ["a", "a", "b", "b", "b", "b", "a", "a", "a", "a", "b", "b"]


def test_loop_overhead_row():
    row = overhead.loop_overhead("cpu", steps=3, blocks=2)
    assert row["case"] == "loop/tiny/b1/3/cpu"
    assert row["easytune_s"] > 0 and row["hand_s"] > 0 and math.isfinite(row["ratio"])
    assert math.isfinite(row["bare_attention_ratio"])
    assert sys.modules["easytune.models.layers"].attention is ops.attention  # nothing left bare behind
    assert row["passes"] == (row["ratio"] <= overhead.LOOP_TARGET)
