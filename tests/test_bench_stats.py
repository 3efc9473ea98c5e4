"""Intervals over seeds, paired differences, time to reward and the comparison's summary (issue 19)."""

from __future__ import annotations

import math

import pytest

from easytune.bench import stats
from easytune.bench.comparison import summarize, to_markdown, verdicts


def test_t_quantiles_match_scipy_where_installed():
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 5, 10, 29, 30):
        assert stats.t975(df) == pytest.approx(float(scipy_stats.t.ppf(0.975, df)), abs=6e-4)
    assert stats.t975(200) == 1.96
    with pytest.raises(ValueError, match="df must be >= 1"):
        stats.t975(0)


def test_interval_by_hand_and_its_edge_cases():
    cell = stats.interval([1.0, 2.0, 6.0])  # mean 3, sd sqrt(7), n 3
    half = 4.303 * math.sqrt(7) / math.sqrt(3)
    assert cell["mean"] == 3.0 and cell["half"] == pytest.approx(half) and cell["n"] == 3
    assert cell["low"] == pytest.approx(3 - half) and cell["high"] == pytest.approx(3 + half)
    one = stats.interval([0.5, None, float("nan")])  # one finite value: no interval claimed
    assert one["mean"] == 0.5 and one["half"] is None and one["n"] == 1
    assert stats.interval([])["mean"] is None
    assert stats.format_interval(cell, ".2f") == f"3.00±{half:.2f}"
    assert stats.format_interval({"mean": 0.263, "half": 0.035}) == "0.263±.035"
    assert stats.format_interval(one) == "0.500" and stats.format_interval({"mean": None}) == "-"


def test_paired_differences_and_significance():
    a, b = [0.30, 0.32, 0.31, 0.33], [0.20, 0.21, 0.22, 0.20]  # a beats b in every pair
    diff = stats.paired_difference(a, b)
    assert diff["mean"] == pytest.approx(0.1075) and diff["significant"] and diff["n"] == 4
    noisy = stats.paired_difference([0.3, 0.1, 0.4], [0.2, 0.3, 0.2])
    assert not noisy["significant"] and noisy["low"] < 0 < noisy["high"]
    # unpaired intervals overlap, the paired one excludes 0: pairing is what the comparison relies on
    x, y = [1.0, 2.0, 3.0], [0.9, 1.9, 2.9]
    assert stats.interval(x)["low"] < stats.interval(y)["high"]
    constant = stats.paired_difference(x, y)  # every pair differs by the same 0.1: zero spread, no claim
    assert constant["mean"] == pytest.approx(0.1) and not constant["significant"]
    assert stats.paired_difference([1.0, None], [0.5, 0.4])["n"] == 1
    with pytest.raises(ValueError, match="3 values against 2"):
        stats.paired_difference([1, 2, 3], [1, 2])


def test_time_to_level_uses_the_trailing_mean_after_a_full_window():
    times = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    rewards = [0.9, 0.1, 0.1, 0.5, 0.6, 0.7]
    assert stats.moving_average(rewards, 3) == pytest.approx([0.9, 0.5, 1.1 / 3, 0.7 / 3, 0.4, 0.6])
    assert stats.time_to_level(times, rewards, 0.5, window=3) == 6.0  # the first value alone is not enough
    assert stats.time_to_level(times, rewards, 0.95, window=3) is None
    assert stats.time_to_level([1.0, 2.0], [0.2, 0.8], 0.5, window=5) == 2.0  # a run shorter than the window


def test_curve_band_covers_each_curve_from_start_to_end():
    band = stats.curve_band(
        [([0.0, 1.0, 2.0], [0.0, 1.0, 2.0]), ([0.0, 1.0], [2.0, 4.0])], [0.5, 1.5], window=1
    )
    assert band["n"] == [2, 1] and band["mean"] == [1.0, 1.0]  # the second curve ended at t = 1
    assert band["low"][1] is None


def _runs():
    """Two methods x 3 seeds with known numbers: A beats the base by 0.1 R@1 in every seed, B by 0.0."""
    runs, base = [], []
    for s in range(3):
        base.append(
            {"seed": s, "metrics": {"R@1": 0.2 + 0.01 * s, "reward": 0.5}, "ground_truth": {"R@1": 0.6}}
        )
        for method, gain, spu in (("A", 0.1 + 0.01 * s, 0.2), ("B", 0.001 * (-1) ** s, 0.6)):
            runs.append(
                {
                    "method": method,
                    "seed": s,
                    "metrics": {"R@1": 0.2 + 0.01 * s + gain, "reward": 0.5 + gain},
                    "seconds_per_update": spu + 0.01 * s,
                    "activation_mib": 30.0 if method == "A" else 75.0 + s,
                    "updates": 10,
                    "trajectories": 10,
                    "peak_gib": None,
                    "curve": {
                        "time": [float(t) for t in range(1, 11)],
                        "reward": [0.5 + (0.05 if method == "A" else 0.02) * t for t in range(10)],
                    },
                }
            )
    return runs, base


def test_summary_pairs_by_seed_and_says_which_differences_are_significant():
    runs, base = _runs()
    summary = summarize(runs, base, reference="B", levels=2)
    a_vs_base = summary["vs_base"]["A"]["R@1"]
    assert a_vs_base["mean"] == pytest.approx(0.11) and a_vs_base["significant"]
    assert not summary["vs_base"]["B"]["R@1"]["significant"]
    a_vs_b = summary["vs_reference"]["A"]
    assert (
        a_vs_b["seconds_per_update"]["mean"] == pytest.approx(-0.4)
        and not a_vs_b["seconds_per_update"]["significant"]
    )
    assert (
        a_vs_b["activation_mib"]["mean"] == pytest.approx(-46.0) and a_vs_b["activation_mib"]["significant"]
    )
    assert "B" not in summary["vs_reference"] and summary["rows"]["A"]["R@1"]["n"] == 3
    # levels 1/3 and 2/3 of the way from the mean start (first 5 rewards of every run) to A's final (last 5)
    start = (sum(0.5 + 0.05 * t for t in range(5)) + sum(0.5 + 0.02 * t for t in range(5))) / 10
    final_a = sum(0.5 + 0.05 * t for t in range(5, 10)) / 5
    assert summary["levels"] == [round(start + (final_a - start) * j / 3, 4) for j in (1, 2)]
    a_cell, b_cell = summary["time_to_reward"]["A"][0], summary["time_to_reward"]["B"][0]
    assert a_cell["reached"] == 3 and a_cell["seconds"]["mean"] == 7.0  # 5-mean 0.70 >= 0.663 at t = 7
    assert b_cell["reached"] == 0 and a_cell["ratio_to_reference"]["mean"] is None  # B never gets there
    words = "\n".join(verdicts(summary))
    assert "**A** vs the base: reward: significantly better than the base" in words
    assert "R@1: no significant difference from the base" in words.split("**B** vs the base")[1]
    assert "backward memory" in words and "-61%, significant" in words
    assert "against B (-66%, the same in every seed)" in words
    md = to_markdown(
        summary,
        {
            "trajectories": 10,
            "batch_size": 8,
            "lr": 2e-5,
            "inference_steps": 50,
            "evaluator": "default",
            "eval_replications": 1,
        },
        "easytune compare ...",
    )
    assert "| A | 0.320±" in md and "## Time to reward" in md and "(0/3)" in md and "(3/3)" in md
