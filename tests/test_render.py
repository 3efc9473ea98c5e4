"""Stick-figure rendering: input detection, de-normalisation, GIF / PNG output and ``easytune render``."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

from easytune.cli import main
from easytune.data.features import joints_to_features, recover_from_ric
from easytune.data.synthetic import sample_clip
from easytune.errors import ConfigError, DataError
from easytune.render import _Camera, load_motion, render_motions, render_strip


@pytest.fixture(scope="module")
def clips():
    return [sample_clip(np.random.default_rng(i), f) for i, f in enumerate(("walk", "wave"))]


def gif_milliseconds(gif: Image.Image) -> int:
    return sum(frame.info["duration"] for frame in ImageSequence.Iterator(gif))


def test_gif_side_by_side(tmp_path, clips):
    a, b = clips[0].joints, clips[1].joints
    path = render_motions([a, torch.from_numpy(b)], tmp_path / "x.gif", titles=["walk", "wave"], size=96)
    with Image.open(path) as gif:
        assert gif.size == (2 * 96, 96)
        first = np.asarray(gif.convert("RGB"))
        # PIL merges identical consecutive frames into one longer frame: the play time is what must match
        assert gif_milliseconds(gif) == 50 * max(len(a), len(b))
    assert (first < 100).any(), "no figure drawn"


def test_strip_png_shows_left_limbs_in_blue_on_the_image_right(tmp_path, clips):
    path = render_strip(clips[0].joints, tmp_path / "s.png", n_frames=4, size=80)
    with Image.open(path) as img:
        assert img.size == (4 * 80, 80)
        pixels = np.asarray(img.convert("RGB")).astype(int)
    blue = (pixels[..., 2] > 150) & (pixels[..., 0] < 100)
    red = (pixels[..., 0] > 150) & (pixels[..., 2] < 100)
    assert blue.any() and red.any()
    # the default camera looks at the figure's front: its left (+x, blue) lands right of its right (red)
    cam = _Camera(clips[0].joints, 200, 200, 0)
    rest = clips[0].joints[0]
    assert cam.project(rest[20], 0)[0] > cam.project(rest[21], 0)[0]


def test_load_motion_detects_features_and_denormalises(tmp_path, clips):
    joints = clips[0].joints.astype(np.float64)
    feats = joints_to_features(joints, target_offsets=None).astype(np.float32)
    decoded = recover_from_ric(feats, 22)
    np.save(tmp_path / "j.npy", joints.astype(np.float32))
    np.save(tmp_path / "f.npy", feats)
    mean, std = feats.mean(0), feats.std(0) + 0.1
    np.save(tmp_path / "n.npy", (feats - mean) / std)
    np.testing.assert_array_equal(load_motion(tmp_path / "j.npy"), joints.astype(np.float32))
    np.testing.assert_allclose(load_motion(tmp_path / "f.npy"), decoded, atol=1e-6)
    np.testing.assert_allclose(load_motion(tmp_path / "n.npy", mean, std), decoded, atol=1e-4)
    with pytest.raises(DataError, match="expected joints"):
        np.save(tmp_path / "bad.npy", np.zeros((5, 7)))
        load_motion(tmp_path / "bad.npy")
    with pytest.raises(DataError, match="mean has shape"):
        load_motion(tmp_path / "n.npy", mean[:10], std[:10])
    with pytest.raises(ConfigError, match="features only"):
        load_motion(tmp_path / "j.npy", mean, std)


def test_real_humanml3d_clip_decodes(humanml3d_sample):
    joints = load_motion(humanml3d_sample / "new_joint_vecs" / "012314.npy")
    reference = np.load(humanml3d_sample / "new_joints" / "012314.npy")
    np.testing.assert_allclose(joints, reference, atol=1e-5)


def test_cli_render(tmp_path, clips):
    feats = joints_to_features(clips[1].joints.astype(np.float64), target_offsets=None).astype(np.float32)
    mean, std = feats.mean(0), feats.std(0) + 0.1
    (tmp_path / "data").mkdir()
    np.save(tmp_path / "data" / "Mean.npy", mean)
    np.save(tmp_path / "data" / "Std.npy", std)
    np.save(tmp_path / "n.npy", (feats - mean) / std)
    out = tmp_path / "out.gif"
    assert main(["render", str(tmp_path / "n.npy"), "--out", str(out), "--data", str(tmp_path / "data"),
                 "--title", "a person waves", "--size", "64"]) == 0  # fmt: skip
    with Image.open(out) as gif:
        assert gif_milliseconds(gif) == 50 * len(feats)
    strip = tmp_path / "strip.png"
    assert main(["render", str(tmp_path / "n.npy"), str(tmp_path / "n.npy"), "--out", str(strip),
                 "--mean", str(tmp_path / "data" / "Mean.npy"), "--std", str(tmp_path / "data" / "Std.npy"),
                 "--frames", "3", "--size", "50"]) == 0  # fmt: skip
    with Image.open(strip) as img:
        assert img.size == (150, 100)
    assert main(["render", str(tmp_path / "missing.npy"), "--out", str(out)]) == 2
    assert main(["render", str(tmp_path / "n.npy"), "--out", str(tmp_path / "x.bmp")]) == 2
    assert main(["render", str(tmp_path / "n.npy"), "--out", str(out), "--title", "a", "--title", "b"]) == 2


@pytest.mark.skipif(importlib.util.find_spec("imageio_ffmpeg") is not None, reason="imageio-ffmpeg installed")
def test_mp4_without_ffmpeg_is_a_clear_error(tmp_path, clips):
    with pytest.raises(ConfigError, match="imageio"):
        render_motions([clips[0].joints], tmp_path / "x.mp4")
