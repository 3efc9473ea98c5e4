"""``check_dataset``: a valid folder passes with a summary; each kind of bad input is reported by file."""

from __future__ import annotations

import re

import numpy as np
import pytest

from easytune.data import humanml as H
from easytune.data.check import check_dataset


def make_valid(root, dim: int = 263, joints: int = 22):
    rng = np.random.default_rng(0)
    splits = {"train": ["t0", "t1", "t2"], "val": ["v0"], "test": ["s0", "s1"]}
    for ids in splits.values():
        for k, clip in enumerate(ids):
            frames = 60 + 20 * k
            H.write_clip(
                root,
                clip,
                rng.normal(size=(frames, dim)),
                [f"{clip} walks", H.CaptionLine(f"{clip} part", ("walk/VERB",), 0.5, 2.5)],
                joints=rng.normal(size=(frames, joints, 3)),
            )
    for split, ids in splits.items():
        H.write_split(root, split, ids)
    H.write_mean_std(root, np.zeros(dim), np.ones(dim))
    return root


def test_valid_dataset_summary(tmp_path):
    report = check_dataset(make_valid(tmp_path))
    assert report.ok, report.problems
    assert report.split_clips == {"train": 3, "val": 1, "test": 2}
    assert report.split_items == {"train": 6, "val": 2, "test": 4}  # whole clip + [10, 50) sub-clip each
    text = report.summary()
    assert "263 features per frame" in text and "split train" in text and "clip lengths" in text
    assert re.search(r"\[  40,   80\)\s+3", text) and "captions per clip: min 2" in text


def test_valid_kit_dataset(tmp_path):
    report = check_dataset(make_valid(tmp_path, dim=251, joints=21), "kit")
    assert report.ok, report.problems
    assert not check_dataset(tmp_path, "humanml").ok


def _rm(rel):
    return lambda root: (root / rel).unlink()


def _write(rel, text):
    return lambda root: (root / rel).write_text(text)


def _save(rel, array):
    return lambda root: np.save(root / rel, array)


def _resize(clip, frames, whole_clip_only=False):
    def corrupt(root):
        np.save(root / "new_joint_vecs" / f"{clip}.npy", np.zeros((frames, 263), np.float32))
        np.save(root / "new_joints" / f"{clip}.npy", np.zeros((frames, 22, 3), np.float32))
        if whole_clip_only:
            (root / "texts" / f"{clip}.txt").write_text("walk#w#0#0\n")

    return corrupt


def _nan_motion(root):
    m = np.load(root / "new_joint_vecs" / "t1.npy")
    m[7, 100] = np.nan
    np.save(root / "new_joint_vecs" / "t1.npy", m)


def _inf_motion(root):
    m = np.load(root / "new_joint_vecs" / "s0.npy")
    m[3, 5] = -np.inf
    np.save(root / "new_joint_vecs" / "s0.npy", m)


BAD = {
    "missing Mean": (_rm("Mean.npy"), r"Mean\.npy: does not exist"),
    "missing Std": (_rm("Std.npy"), r"Std\.npy: does not exist"),
    "Std wrong size": (_save("Std.npy", np.ones(251, np.float32)), r"Std\.npy: expected shape \[263\]"),
    "missing split": (_rm("val.txt"), r"val\.txt: split file does not exist"),
    "empty split": (_write("test.txt", "\n"), r"test\.txt: split file lists no clip ids"),
    "wrong dim": (_save("new_joint_vecs/t0.npy", np.zeros((60, 251), np.float32)),
                  r"t0\.npy: expected features of shape \[T, 263\], got \(60, 251\)"),
    "NaN": (_nan_motion, r"t1\.npy: contains NaN or inf \(first at frame 7, feature 100\)"),
    "inf": (_inf_motion, r"s0\.npy: contains NaN or inf \(first at frame 3, feature 5\)"),
    "empty text": (_write("texts/v0.txt", ""), r"texts/v0\.txt: caption file is empty"),
    "malformed text": (_write("texts/t2.txt", "a#b#c\n"),
                       r"texts/t2\.txt:1: expected 'caption#tokens#start#end'"),
    "bad time": (_write("texts/t2.txt", "walk#w#0#soon\n"), r"texts/t2\.txt:1: end 'soon' is not a number"),
    "empty caption": (_write("texts/t2.txt", "  #w#0#0\n"), r"texts/t2\.txt:1: empty caption"),
    "id without motion": (_rm("new_joint_vecs/s1.npy"),
                          r"test\.txt: lists 's1' but .*s1\.npy does not exist"),
    "id without text": (_rm("texts/s1.txt"), r"test\.txt: lists 's1' but .*texts/s1\.txt does not exist"),
    "too short": (_resize("t1", 30, whole_clip_only=True), r"t1\.npy: length 30 is outside \[40, 199\]"),
    "too long": (_resize("t0", 260), r"t0\.npy: length 260 is outside \[40, 199\]"),
    "short sub-clip": (_write("texts/t0.txt", "walk#w#0#0\npart#w#1.0#2.0\n"),
                       r"t0\.npy frames \[20, 40\): length 20 is outside \[40, 199\]"),
    "empty range": (_write("texts/t0.txt", "walk#w#0#0\npart#w#3.0#2.0\n"),
                    r"texts/t0\.txt: caption 2 \(3s-2s = frames \[60, 40\)\) is empty"),
    "joints mismatch": (_save("new_joints/t0.npy", np.zeros((59, 22, 3), np.float32)),
                        r"new_joints/t0\.npy: expected shape \(60, 22, 3\)"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_each_bad_input_is_reported(tmp_path, case):
    corrupt, pattern = BAD[case]
    root = make_valid(tmp_path)
    corrupt(root)
    report = check_dataset(root)
    assert not report.ok
    assert any(re.search(pattern, p) for p in report.problems), report.problems
    assert len(report.problems) == 1, report.problems


def test_out_of_range_lengths_can_be_allowed(tmp_path):
    root = make_valid(tmp_path)
    _resize("t1", 30)(root)  # the clip and its sub-clip [10, 30) (cut at the clip end) are too short
    report = check_dataset(root, allow_out_of_range=True)
    assert report.ok, report.problems
    assert any("t1.npy: length 30 is outside" in n and "left out by the loader" in n for n in report.notes)
    assert any("t1.txt: caption 2 ends at frame 50, past the clip's 30 frames" in n for n in report.notes)
    assert report.split_items["train"] == 4
    assert check_dataset(root, min_len=20).ok


def test_missing_root(tmp_path):
    report = check_dataset(tmp_path / "nowhere")
    assert report.problems == [f"{tmp_path / 'nowhere'}: dataset root does not exist"]


@pytest.mark.parametrize("dtype", ["int32", "complex64", "<U5"])
def test_check_and_loader_refuse_the_same_feature_dtypes(tmp_path, dtype):
    make_valid(tmp_path)
    clip = H.read_split(tmp_path, "train")[0]
    np.save(tmp_path / H.MOTION_DIR / f"{clip}.npy", np.zeros((60, 263)).astype(dtype))
    report = check_dataset(tmp_path)
    assert any(f"{clip}.npy: expected floating-point features, got dtype" in p for p in report.problems)
    with pytest.raises(H.DataError, match="floating-point features|float"):
        H.load_motion(tmp_path / H.MOTION_DIR / f"{clip}.npy", 263)
    with pytest.raises(H.DataError):
        H.MotionDataset(tmp_path, "train", normalize=False)


def test_duplicate_ids_bom_and_non_utf8_bytes_are_named_by_file_and_line(tmp_path):
    make_valid(tmp_path)
    ids = H.read_split(tmp_path, "train")
    (tmp_path / "train.txt").write_text("\n".join([*ids, ids[0]]) + "\n", encoding="utf-8")
    report = check_dataset(tmp_path)
    assert any(
        f"train.txt:{len(ids) + 1}: clip id {ids[0]!r} is listed twice (first on line 1)" in p
        for p in report.problems
    )
    with pytest.raises(H.DataError, match="listed twice"):
        H.MotionDataset(tmp_path, "train", normalize=False)
    (tmp_path / "train.txt").write_bytes(b"\xef\xbb\xbf" + "\n".join(ids).encode())  # BOM: dropped
    assert H.read_split(tmp_path, "train") == ids
    caption_file = tmp_path / H.TEXT_DIR / f"{ids[0]}.txt"
    caption_file.write_bytes(b"\xef\xbb\xbf" + caption_file.read_bytes())
    assert not H.read_captions(caption_file)[0].caption.startswith("\ufeff")
    (tmp_path / "train.txt").write_bytes("\n".join(ids[:2]).encode() + b"\nbad\xff\n")
    report = check_dataset(tmp_path)
    assert any("train.txt:3: not UTF-8 text (byte 0xff)" in p for p in report.problems)


def test_a_run_validates_its_data_before_the_first_step(tmp_path, capsys, monkeypatch):
    """Issue 18: a NaN clip used to be reported after 6 training steps and a written checkpoint."""
    from easytune.cli import main
    from easytune.data import check
    from easytune.training import loop as loop_mod

    root = make_valid(tmp_path / "d")
    _nan_motion(root)
    steps = []
    monkeypatch.setattr(loop_mod, "check_weights", lambda *a: steps.append(a))  # counts optimizer steps
    argv = ["pretrain", "vae", "--data", str(root), "--out", str(tmp_path / "v.pt"), "--steps", "2",
            "--batch-size", "2", "--no-progress", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "pretrain vae: 1 problem(s) in the data" in err and "t1.npy" in err and "NaN" in err, err
    assert steps == [] and not (tmp_path / "v.pt").exists()
    # --skip-data-check: no up-front check (the loader then meets the NaN clip itself)
    main([*argv, "--skip-data-check"])
    err = capsys.readouterr().err
    assert "problem(s) in the data" not in err and "t1.npy" in err, err

    # A clean dataset checked by `easytune data check` is stamped; a run on it does not re-read its clips,
    # until a file changes.
    clean = make_valid(tmp_path / "c")
    assert main(["data", "check", str(clean), "-q"]) == 0
    assert (clean / check.STAMP).is_file()

    def reread(*args, **kwargs):
        raise AssertionError("the stamped dataset was read again")

    monkeypatch.setattr(check, "check_dataset", reread)
    check.check_before_run(clean, "test run")  # the stamp matches: nothing read
    np.save(clean / "new_joint_vecs" / "t0.npy", np.full((60, 263), np.nan))
    with pytest.raises(AssertionError, match="read again"):
        check.check_before_run(clean, "test run")
