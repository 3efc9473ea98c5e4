"""``easytune compare`` end to end on the embedded tiny models (issue 19): every (method, seed) run, the
report files, pairing by seed, budgets and option errors."""

from __future__ import annotations

import json

import pytest

from easytune.cli import main
from easytune.data.synthetic import generate_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmp") / "data"
    generate_dataset(root, 30, seed=1)
    return root


def _argv(out, data, *extra):
    return [
        "compare",
        "--out",
        str(out),
        "--methods",
        "easytune-2,draft-2",
        "--reference",
        "draft-2",
        "--seeds",
        "2",
        "--inference-steps",
        "4",
        "--batch-size",
        "2",
        "--eval-samples",
        "8",
        "--data",
        str(data),
        "--device",
        "cpu",
        "--no-progress",
        *extra,
    ]


def test_compare_runs_every_method_and_seed_and_writes_the_report(tmp_path, data, capsys):
    out = tmp_path / "c"
    assert main(_argv(out, data, "--trajectories", "3", "--time-levels", "1")) == 0
    printed = capsys.readouterr().out
    doc = json.loads((out / "compare.json").read_text())
    assert [(r["method"], r["seed"]) for r in doc["runs"]] == [
        ("EasyTune-2", 0),
        ("EasyTune-2", 1),
        ("DRaFT-2", 0),
        ("DRaFT-2", 1),
    ]
    assert all(r["trajectories"] == 3 and len(r["curve"]["reward"]) == 3 for r in doc["runs"])
    assert [r["updates"] for r in doc["runs"]] == [6, 6, 3, 3]  # K updates per trajectory against one
    assert all(r["activation_mib"] > 0 and r["seconds_per_update"] > 0 for r in doc["runs"])
    assert [b["seed"] for b in doc["base"]] == [0, 1]
    summary = doc["summary"]
    assert set(summary["vs_reference"]) == {"EasyTune-2"} and set(summary["vs_base"]) == {
        "EasyTune-2",
        "DRaFT-2",
    }
    assert summary["rows"]["EasyTune-2"]["R@1"]["n"] == 2
    md = (out / "compare.md").read_text()
    assert "## What the intervals say" in md and "| base |" in md and md.strip() in printed
    assert (out / "reward_time.png").stat().st_size > 0 and (out / "memory.png").stat().st_size > 0
    # the same command again reuses every finished run (same records: the training times are not re-measured)
    assert main(_argv(out, data, "--trajectories", "3", "--time-levels", "1", "--no-plots")) == 0
    assert json.loads((out / "compare.json").read_text())["runs"] == doc["runs"]
    assert (out / "runs" / "DRaFT-2" / "seed1" / "compare_run.json").is_file()
    # the same evaluation seed gives the base the same prompts and noise: seed 0 again, same numbers
    again = tmp_path / "again"
    assert (
        main(
            _argv(
                again,
                data,
                "--trajectories",
                "1",
                "--seeds",
                "1",
                "--methods",
                "easytune-2",
                "--reference",
                "easytune-2",
                "--no-plots",
            )
        )
        == 0
    )
    assert json.loads((again / "compare.json").read_text())["base"][0] == doc["base"][0]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--trajectories", "2", "--budget-s", "5"], "--trajectories and --budget-s are two budgets"),
        (["--methods", "easytune-2,easytune-2"], "a method is listed twice"),
        (["--methods", "easytune-2:color=red"], "'color=red' in 'easytune-2:color=red' is not OPTION=VALUE"),
        (["--seeds", "0"], "--seeds must be an integer >= 1"),
    ],
)
def test_compare_refuses_bad_options_by_name(tmp_path, data, capsys, extra, message):
    assert main(_argv(tmp_path / "x", data, *extra)) == 2
    assert message in capsys.readouterr().err
