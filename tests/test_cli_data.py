"""``easytune data check | synth``."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest

from easytune.cli import main
from easytune.data import humanml as H


def _small_dataset(root):
    rng = np.random.default_rng(0)
    for split, ids in {"train": ["a", "b"], "val": ["c"], "test": ["d"]}.items():
        for clip in ids:
            H.write_clip(root, clip, rng.normal(size=(64, 263)), [f"{clip} jumps"])
        H.write_split(root, split, ids)
    H.write_mean_std(root, np.zeros(263), np.ones(263))
    return root


def test_check_ok(tmp_path, capsys):
    assert main(["data", "check", str(_small_dataset(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "263 features per frame" in out and "split train" in out
    last = out.rstrip().splitlines()[-1]
    assert last.startswith("ok") and ".easytune-checked.json" in last
    assert (tmp_path / ".easytune-checked.json").is_file()


def test_check_reports_problem_and_fails(tmp_path, capsys):
    root = _small_dataset(tmp_path)
    (root / "texts" / "c.txt").write_text("")
    assert main(["data", "check", str(root)]) == 2
    err = capsys.readouterr().err
    assert f"problem: {root / 'texts' / 'c.txt'}: caption file is empty" in err
    assert "easytune data: error: 1 problem(s)" in err


def test_check_kind_and_length_options(tmp_path, capsys):
    root = _small_dataset(tmp_path)
    assert main(["data", "check", str(root), "--kind", "kit"]) == 2
    assert "expected shape [251]" in capsys.readouterr().err
    assert main(["data", "check", str(root), "--min-len", "80"]) == 2
    assert "length 64 is outside [80, 199]" in capsys.readouterr().err
    args = ["--min-len", "80", "--allow-out-of-range", "--splits", "val"]
    assert main(["data", "check", str(root), *args]) == 0
    out = capsys.readouterr().out
    assert "note: " in out and "split val" in out and "split train" not in out


def test_synth_calls_the_generator(tmp_path, capsys, monkeypatch):
    calls = []

    def generate_dataset(out_dir, clips, seed, **kwargs):
        calls.append((str(out_dir), clips, seed, kwargs))
        return {"clips": clips, "out": str(out_dir)}

    fake = types.ModuleType("easytune.data.synthetic")
    fake.generate_dataset = generate_dataset
    monkeypatch.setitem(sys.modules, "easytune.data.synthetic", fake)
    assert main(["data", "synth", "--out", str(tmp_path / "s"), "--clips", "12", "--seed", "5"]) == 0
    assert json.loads(capsys.readouterr().out) == {"clips": 12, "out": str(tmp_path / "s")}
    args = ["--clips", "3", "--seed", "1", "--workers", "2"]
    assert main(["data", "synth", "--out", str(tmp_path), *args]) == 0
    bar = {"show_progress": True}
    assert calls == [(str(tmp_path / "s"), 12, 5, bar), (str(tmp_path), 3, 1, {"workers": 2, **bar})]
    assert main(["data", "synth", "--out", str(tmp_path), "--clips", "0"]) == 2
    assert "--clips must be >= 1" in capsys.readouterr().err


def test_synth_then_check(tmp_path, capsys):
    synthetic = pytest.importorskip("easytune.data.synthetic")
    if not hasattr(synthetic, "generate_dataset"):
        pytest.skip("easytune.data.synthetic.generate_dataset not written yet")
    assert main(["data", "synth", "--out", str(tmp_path), "--clips", "12", "--seed", "0"]) == 0
    capsys.readouterr()
    assert main(["data", "check", str(tmp_path)]) == 0, capsys.readouterr().err
