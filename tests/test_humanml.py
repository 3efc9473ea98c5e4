"""The HumanML3D / KIT reader: items, sub-clips, filters, crops, captions, normalisation, collation."""

from __future__ import annotations

import logging
import shutil
import time

import numpy as np
import pytest
import torch

from easytune.data import humanml as H
from easytune.errors import ConfigError, DataError


def _motion(frames: int, dim: int = 263, value: float | None = None) -> np.ndarray:
    if value is not None:
        return np.full((frames, dim), value, dtype=np.float32)
    # row t holds t in column 0, so crops and sub-clips can be read back
    m = np.random.default_rng(frames).normal(size=(frames, dim)).astype(np.float32)
    m[:, 0] = np.arange(frames)
    return m


def _dataset(root, clips: dict, dim: int = 263, split: str = "train"):
    for clip, (frames, captions) in clips.items():
        H.write_clip(root, clip, _motion(frames, dim), captions)
    H.write_split(root, split, list(clips))
    H.write_mean_std(root, np.zeros(dim), np.ones(dim))
    return root


def test_items_subclips_filters_and_log(tmp_path, caplog):
    root = _dataset(
        tmp_path,
        {
            "a": (100, ["a person walks", "someone walks forward"]),
            "b": (30, ["too short"]),
            "c": (250, ["too long", H.CaptionLine("the middle part", ("x/NOUN",), 2.0, 6.5)]),
            "d": (120, [H.CaptionLine("first second", (), 0.0, 1.0), H.CaptionLine("later", (), 1.0, 4.0),
                        H.CaptionLine("later again", (), 1.0, 4.0)]),
        },
    )  # fmt: skip
    with caplog.at_level(logging.INFO, logger="easytune.data.humanml"):
        ds = H.MotionDataset(root, "train", crop="none", caption_mode="first")
    # a; c's sub-clip [40, 130); d's sub-clip [20, 80) with its two captions. d has no whole-clip caption;
    # b (30 < 40), c (250 > 199) and d's [0, 20) are left out, counted and logged.
    assert sorted(e.item_id for e in ds.entries) == ["a", "c@40-130", "d@20-80"]
    assert ds.filtered == {"too_short": ["b", "d@0-20"], "too_long": ["c"]}
    assert "3 items from 4 clips" in caplog.text and "3 (2 shorter, 1 longer)" in caplog.text
    items = {ds[i]["id"]: ds[i] for i in range(len(ds))}
    np.testing.assert_array_equal(items["c@40-130"]["motion"][:, 0].numpy(), np.arange(40, 130))
    assert items["d@20-80"]["captions"] == ["later", "later again"]
    assert items["a"]["caption"] == "a person walks" and items["a"]["length"] == 100
    assert items["a"]["motion"].dtype == torch.float32 and items["a"]["motion"].shape == (100, 263)


def test_kit_subclip_fps_and_width(tmp_path):
    root = _dataset(tmp_path, {"k": (100, [H.CaptionLine("kit part", (), 1.0, 4.0)])}, dim=251)
    ds = H.MotionDataset(root, "train", kind="kit", crop="none")
    assert [e.item_id for e in ds.entries] == ["k@12-50"]  # int(1 * 12.5), int(4 * 12.5)
    with pytest.raises(DataError, match=r"Mean\.npy: expected shape \[263\], got \(251,\)"):
        H.MotionDataset(root, "train", kind="humanml")
    H.write_mean_std(root, np.zeros(263), np.ones(263))
    with pytest.raises(DataError, match=r"k\.npy: expected humanml features, float \[T, 263\]; got float32"):
        H.MotionDataset(root, "train", kind="humanml")


def test_random_crop_captions_and_seeding(tmp_path):
    root = _dataset(tmp_path, {f"c{i}": (90 + i, [f"caption {i} {k}" for k in range(5)]) for i in range(6)})
    ds = H.MotionDataset(root, "train", seed=3)
    lengths, offsets, captions = set(), set(), set()
    for epoch in range(12):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            full = 90 + int(item["id"][1:])
            assert item["length"] % 4 == 0 and full - 8 < item["length"] <= full
            assert item["caption"] in item["captions"] and len(item["captions"]) == 5
            start = int(item["motion"][0, 0])
            expected = np.arange(start, start + item["length"])
            np.testing.assert_array_equal(item["motion"][:, 0].numpy(), expected)
            lengths.add((full, item["length"]))
            offsets.add(start)
            captions.add(item["caption"])
    # with probability 1/3 the crop is one unit shorter than the floored length
    assert any(n == full - full % 4 - 4 for full, n in lengths)
    assert len(offsets) > 1 and len(captions) > 20
    again = H.MotionDataset(root, "train", seed=3)
    again.set_epoch(11)
    assert [again[i]["caption"] for i in range(6)] == [ds[i]["caption"] for i in range(6)]
    other = H.MotionDataset(root, "train", seed=4)
    other.set_epoch(11)
    assert [other[i]["caption"] for i in range(6)] != [ds[i]["caption"] for i in range(6)]
    floor = H.MotionDataset(root, "train", crop="floor")
    assert [floor[i]["length"] for i in range(6)] == [88, 88, 92, 92, 92, 92]


def test_collate_and_dataloader(tmp_path):
    root = _dataset(tmp_path, {"x": (60, ["x"]), "y": (47, ["y1", "y2"]), "z": (81, ["z"])})
    ds = H.MotionDataset(root, "train", crop="floor", caption_mode="first")
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=H.collate_motion)
    batch = next(iter(loader))
    assert batch["motion"].shape == (3, 80, 263) and batch["motion"].dtype == torch.float32
    assert batch["lengths"].tolist() == [60, 44, 80] and batch["lengths"].dtype == torch.int64
    assert batch["mask"].dtype == torch.bool and batch["mask"].sum(1).tolist() == [60, 44, 80]
    assert (batch["motion"][1, 44:] == 0).all() and batch["captions"][1] == ["y1", "y2"]
    assert batch["id"] == ["x", "y", "z"] and batch["caption"] == ["x", "y1", "z"]
    with pytest.raises(DataError, match="different feature widths"):
        H.collate_motion([ds[0], {**ds[1], "motion": torch.zeros(44, 251)}])


def test_normalisation_with_real_clip_and_stats(tmp_path, humanml3d_sample):
    shutil.copytree(humanml3d_sample / "new_joint_vecs", tmp_path / "new_joint_vecs")
    for name in ("Mean.npy", "Std.npy"):
        shutil.copy(humanml3d_sample / name, tmp_path / name)
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "012314.txt").write_text("a person moves#a/DET person/NOUN move/VERB#0.0#0.0\n")
    H.write_split(tmp_path, "test", ["012314"])
    ds = H.MotionDataset(tmp_path, "test", crop="none")
    raw = np.load(humanml3d_sample / "new_joint_vecs" / "012314.npy")
    mean, std = H.load_mean_std(tmp_path, 263)
    item = ds[0]
    np.testing.assert_allclose(item["motion"].numpy(), (raw - mean) / std, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(H.denormalize(item["motion"], mean, std).numpy(), raw, atol=1e-5)
    assert H.MotionDataset(tmp_path, "test", normalize=False, crop="none")[0]["motion"].numpy().tolist() == (
        raw.tolist()
    )
    # block-averaged statistics (HumanML3D's recipe): one std per block
    _, block_std = H.compute_mean_std([raw, raw[::-1] * 2])
    assert len(np.unique(block_std)) == 7


def test_reads_every_clip_of_a_large_directory(tmp_path):
    n = 2000
    (tmp_path / "new_joint_vecs").mkdir()
    (tmp_path / "texts").mkdir()
    for i in range(n):
        np.save(tmp_path / "new_joint_vecs" / f"{i:06d}.npy", np.zeros((40 + i % 150, 263), np.float32))
        (tmp_path / "texts" / f"{i:06d}.txt").write_text(f"clip {i}#clip/NOUN#0.0#0.0\n")
    H.write_split(tmp_path, "train", [f"{i:06d}" for i in range(n)])
    H.write_mean_std(tmp_path, np.zeros(263), np.ones(263))
    t0 = time.perf_counter()
    ds = H.MotionDataset(tmp_path, "train")
    elapsed = time.perf_counter() - t0
    assert len(ds) == n and sorted(ds.lengths.tolist()) == sorted(40 + i % 150 for i in range(n))
    assert elapsed < 20.0, f"opening {n} clips took {elapsed:.1f}s"


def test_errors_name_the_file(tmp_path):
    root = _dataset(tmp_path, {"a": (60, ["fine"])})
    with pytest.raises(DataError, match=r"val\.txt: split file does not exist"):
        H.MotionDataset(root, "val")
    H.write_split(root, "val", ["a", "ghost"])
    with pytest.raises(DataError, match=r"val\.txt: lists 'ghost' but .*/ghost\.npy does not exist"):
        H.MotionDataset(root, "val")
    (root / "texts" / "a.txt").write_text("no separators here\n")
    with pytest.raises(DataError, match=r"texts/a\.txt:1: expected 'caption#tokens#start#end'"):
        H.MotionDataset(root, "train")
    (root / "texts" / "a.txt").write_text("caption#tok#zero#0\n")
    with pytest.raises(DataError, match=r"texts/a\.txt:1: start 'zero' is not a number"):
        H.read_captions(root / "texts" / "a.txt")
    (root / "texts" / "a.txt").write_text("\n")
    with pytest.raises(DataError, match=r"texts/a\.txt: caption file is empty"):
        H.MotionDataset(root, "train")
    np.save(root / "new_joint_vecs" / "a.npy", _motion(60, value=np.nan))
    with pytest.raises(DataError, match=r"a\.npy: contains NaN or inf \(first at frame 0"):
        H.load_motion(root / "new_joint_vecs" / "a.npy", 263)
    np.save(root / "Std.npy", np.zeros(263, np.float32))
    with pytest.raises(DataError, match=r"Std\.npy: entries \[0, 1, 2"):
        H.load_mean_std(root)
    with pytest.raises(ConfigError, match="caption_mode"):
        H.MotionDataset(root, "train", caption_mode="all")
    with pytest.raises(ConfigError, match="length filter"):
        H.MotionDataset(root, "train", min_len=50, max_len=40)
