"""Report, targets and regression comparison on synthetic result files."""

import json

import pytest

from easytune.bench.compare import compare
from easytune.bench.report import method_targets, write_report
from easytune.bench.results import load_results, write_results
from easytune.cli import main
from easytune.errors import DataError

MiB = 2**20


def _method(method, k, peak, additional, s_update, updates=1):
    return {
        "kind": "method",
        "case": f"{method}-{k}/mld/b4/cpu",
        "method": method,
        "k": k,
        "preset": "mld",
        "device": "cpu",
        "batch": 4,
        "dtype": "float32",
        "peak_bytes": peak,
        "nograd_peak_bytes": peak - additional,
        "additional_bytes": additional,
        "saved_bytes": additional // 2,
        "seconds_per_step": s_update * updates,
        "updates_per_step": updates,
        "seconds_per_update": s_update,
        "samples_per_second": 4 / (s_update * updates),
        "cpu_seconds_per_update": s_update * (3 if method == "EasyTune" else 1),
    }


def _methods_rows(easy_peaks=(100, 102, 101), draft_additional=500):
    rows = [
        _method("EasyTune", k, p * MiB, (p - 80) * MiB, 0.1, updates=k)
        for k, p in zip((1, 10, 50), easy_peaks)
    ]
    rows.append(_method("DRaFT", 50, (80 + draft_additional) * MiB, draft_additional * MiB, 1.0))
    return rows


def _kernel(impl, median=None, pass_="fwd"):
    row = {
        "kind": "kernel",
        "case": f"attention/B1/float32/cpu/{impl}/{pass_}",
        "op": "attention",
        "impl": impl,
        "shape": "B1",
        "dtype": "float32",
        "device": "cpu",
        "pass": pass_,
        "baseline_impl": "sdpa-mask",
    }
    if median is not None:
        row.update(median_s=median, p20_s=median * 0.9, p80_s=median * 1.1)
    return row


def test_targets_pass_and_fail():
    verdicts = {t["target"]: t["verdict"] for t in method_targets(_methods_rows())}
    assert verdicts == {
        "EasyTune peak memory flat in K": "pass",
        "EasyTune additional memory / DRaFT-50's": "pass",
        **{f"EasyTune-{k} wall seconds/update / DRaFT-50's": "pass" for k in (1, 10, 50)},
        **{f"EasyTune-{k} CPU seconds/update / DRaFT-50's": "FAIL" for k in (1, 10, 50)},  # 0.3 > 1/4
    }
    # peak spread 100 -> 110 MiB is 10% (> 5%); additional 30 MiB of DRaFT-50's 100 MiB is 30% (> 15%)
    bad = {t["target"]: t for t in method_targets(_methods_rows((100, 110, 100), draft_additional=100))}
    assert bad["EasyTune peak memory flat in K"]["verdict"] == "FAIL"
    assert bad["EasyTune peak memory flat in K"]["measured"].startswith("10.0%")
    assert bad["EasyTune additional memory / DRaFT-50's"]["verdict"] == "FAIL"
    assert bad["EasyTune additional memory / DRaFT-50's"]["measured"].startswith("30.0%")
    # the time target is judged per K: a slow K=1 fails on its own while K=10 and K=50 pass
    rows = _methods_rows()
    rows[0] = {**rows[0], "seconds_per_update": 0.5}
    per_k = {t["target"]: t for t in method_targets(rows)}
    assert per_k["EasyTune-1 wall seconds/update / DRaFT-50's"]["verdict"] == "FAIL"
    assert per_k["EasyTune-1 wall seconds/update / DRaFT-50's"]["measured"] == "0.500"
    assert per_k["EasyTune-10 wall seconds/update / DRaFT-50's"]["verdict"] == "pass"


def test_frame_layouts_are_separate_groups_and_rows_without_one_ran_padded():
    padded = _methods_rows()
    packed = [{**r, "frame_layout": "packed", "peak_bytes": r["peak_bytes"] // 2} for r in _methods_rows()]
    old = [{**r, "frame_layout": "padded"} for r in _methods_rows()]  # same group as rows without the field
    targets = method_targets(padded + packed)
    groups = {t["group"] for t in targets}
    assert len(groups) == 2 and any("frame_layout=packed" in g for g in groups), groups
    assert {t["group"] for t in method_targets(padded + old)} == {t["group"] for t in method_targets(padded)}


def test_report_writes_markdown_and_plots(tmp_path):
    rows = _methods_rows() + [
        _kernel("sdpa-mask", 2e-3),
        _kernel("ops:triton", 1e-3),
        {**_kernel("flex"), "status": "skipped", "reason": "needs a GPU"},
    ]
    rows[-2]["speedup"] = 2.0
    path = write_results(tmp_path / "r.json", rows, {"device": "cpu", "torch": "x", "commit": "abc"})
    written = write_report([load_results(path)], tmp_path / "out")
    names = {p.name for p in written}
    assert {"report.md", "memory_vs_k.png", "seconds_per_update.png", "kernel_speedups.png"} <= names
    for p in written:
        assert p.stat().st_size > 0
    text = (tmp_path / "out" / "report.md").read_text()
    assert "commit=abc" in text
    assert "| EasyTune | 10 | mld | cpu | 4 | 102.0 | 80.0 | 22.0 |" in text
    assert "2.00 (vs sdpa-mask)" in text and "needs a GPU" in text


def test_compare_flags_regressions_and_missing(tmp_path):
    base = write_results(tmp_path / "base.json", _methods_rows() + [_kernel("ops:triton", 1e-3)], {})
    new_rows = _methods_rows()
    new_rows[0] = {**new_rows[0], "peak_bytes": new_rows[0]["peak_bytes"] * 1.2}  # 20% worse
    new_rows[1] = {**new_rows[1], "seconds_per_update": 0.105}  # 5% worse: within tolerance
    new_rows[2] = {**new_rows[2], "samples_per_second": new_rows[2]["samples_per_second"] * 2}  # better
    new = write_results(tmp_path / "new.json", new_rows, {})
    result = compare(load_results(new), load_results(base), tolerance=0.1)
    regressions = [(c.case, c.metric) for c in result.regressions]
    assert regressions == [("EasyTune-1/mld/b4/cpu", "peak_bytes")]
    verdict = {(c.case, c.metric): c.verdict for c in result.changes}
    assert verdict[("EasyTune-10/mld/b4/cpu", "seconds_per_update")] == "same"
    assert verdict[("EasyTune-50/mld/b4/cpu", "samples_per_second")] == "improvement"
    assert result.missing_in_new == [("kernel", "attention/B1/float32/cpu/ops:triton/fwd")]
    assert result.failed() and "regression" in result.to_markdown()
    assert main(["bench", "compare", str(new), "--baseline", str(base), "--tolerance", "0.1"]) == 1
    assert main(["bench", "compare", str(new), "--baseline", str(base), "--tolerance", "0.25"]) == 0
    assert (
        main(
            [
                "bench",
                "compare",
                str(new),
                "--baseline",
                str(base),
                "--tolerance",
                "0.25",
                "--fail-on-missing",
            ]
        )
        == 1
    )


def test_pytest_benchmark_json_is_read(tmp_path):
    doc = {
        "machine_info": {"easytune": {"device": "cpu"}},
        "commit_info": {"id": "abc"},
        "datetime": "now",
        "benchmarks": [
            {
                "group": "kernel",
                "name": "t",
                "fullname": "bench/t.py::t[x]",
                "stats": {"median": 2.0, "q1": 1.5, "q3": 2.5, "mean": 2.0, "min": 1.0, "rounds": 5},
                "extra_info": _kernel("sdpa-mask"),
            },
            {
                "group": "kernel",
                "name": "u",
                "fullname": "bench/t.py::u[x]",
                "stats": {"median": 1.0, "q1": 0.9, "q3": 1.1, "mean": 1.0, "min": 0.8, "rounds": 5},
                "extra_info": _kernel("ops:cuda"),
            },
        ],
    }
    path = tmp_path / "pb.json"
    path.write_text(json.dumps(doc))
    rs = load_results(path)
    assert rs.environment["commit"] == "abc" and rs.environment["device"] == "cpu"
    rows = {r["impl"]: r for r in rs.rows}
    assert rows["sdpa-mask"]["median_s"] == 2.0 and rows["sdpa-mask"]["q1_s"] == 1.5
    assert rows["ops:cuda"]["speedup"] == pytest.approx(2.0)


def test_bad_files_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(DataError, match="bad.json"):
        load_results(bad)
    with pytest.raises(DataError, match="not found"):
        load_results(tmp_path / "missing.json")
    assert main(["bench", "report", str(bad), "--out", str(tmp_path / "o")]) == 2


def _curve(method, cpu, reward):
    return {
        "kind": "reward_curve",
        "case": f"{method}/tiny/b4",
        "method": method,
        "preset": "tiny",
        "device": "cpu",
        "batch": 4,
        "lr": 1e-4,
        "budget_s": 10.0,
        "start_reward": reward[0],
        "clock": "cpu",
        "cpu_s": cpu,
        "wall_s": [2 * t for t in cpu],
        "reward": reward,
    }


def test_time_to_reward_levels_are_read_off_the_stored_curves(tmp_path):
    from easytune.bench.reward_time import level_rows

    fast = _curve("EasyTune-10", [0.0, 1.0, 2.0, 3.0], [0.2, 0.5, 0.45, 0.9])
    rows = {r["level"]: r for r in level_rows(fast, [0.5, 0.8, 0.95])}
    assert (rows[0.5]["time_to_reward_s"], rows[0.5]["wall_time_to_reward_s"]) == (1.0, 2.0)
    assert rows[0.8]["time_to_reward_s"] == 3.0 and rows[0.8]["trainer_steps_to_reward"] == 3
    assert rows[0.95]["time_to_reward_s"] is None
    assert rows[0.5]["case"] == "EasyTune-10/tiny/b4/0.5"

    slow = _curve("DRaFT-10", [0.0, 4.0, 8.0], [0.2, 0.3, 0.6])
    path = write_results(tmp_path / "ttr.json", [fast, slow], {"device": "cpu", "commit": "abc"})
    write_report([load_results(path)], tmp_path / "out", levels=[0.5, 0.95])
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| EasyTune-10/tiny/b4 lr 0.0001 | 1.0 (2.0) | not reached |" in text
    assert "| DRaFT-10/tiny/b4 lr 0.0001 | 8.0 (16.0) | not reached |" in text
    assert (tmp_path / "out" / "reward_curves.png").exists()
