"""The procedural motion generator: plausibility, left/right semantics, mirroring, the written dataset."""

from __future__ import annotations

import re

import numpy as np
import pytest

from easytune.data import synthetic as S
from easytune.data.features import feature_slices, joints_to_features, recover_from_ric
from easytune.data.humanml import MotionDataset, read_captions, read_split
from easytune.data.skeleton import HUMANML, SMPL_BONE_LENGTHS
from easytune.errors import ConfigError

LOCOMOTION = ("walk", "walk_backwards", "walk_circle", "turn")


def clips_of(family: str, n: int, seed: int = 0) -> list[S.SyntheticClip]:
    return [S.sample_clip(np.random.default_rng([seed, i]), family) for i in range(n)]


def angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    return np.degrees(np.arccos(np.clip(cos, -1, 1)))


@pytest.fixture(scope="module")
def by_family() -> dict[str, list[S.SyntheticClip]]:
    families = [*S.FAMILIES, *("+".join(c) for c in S.COMPOSITIONS[:4])]
    return {f: clips_of(f, 6, seed=k) for k, f in enumerate(families)}


def test_clips_are_plausible(by_family):
    parents = np.array(HUMANML.parents[1:])
    for family, clips in by_family.items():
        for clip in clips:
            j = clip.joints.astype(np.float64)
            assert j.dtype == np.float64 and np.isfinite(j).all()
            assert S.MIN_FRAMES <= len(j) <= S.MAX_FRAMES, family
            assert len(clip.captions) == 3 and len(set(clip.captions)) == 3, clip.captions
            # rigid bones with the HumanML3D target lengths
            bones = np.linalg.norm(j[:, 1:] - j[:, parents], axis=-1)
            np.testing.assert_allclose(bones, np.broadcast_to(SMPL_BONE_LENGTHS[1:], bones.shape), atol=1e-4)
            # nothing below the floor; the lowest foot joint on the floor except in flight (jumps, runs)
            feet = j[:, [7, 8, 10, 11], 1]
            assert j[..., 1].min() > -1e-5, family
            on_floor = np.abs(feet.min(1)) < 1e-5
            if "jump" not in family and "run" not in family:
                assert on_floor.all(), family
            # knees and elbows bend one way and within human range (0 = straight)
            for hip, knee, ankle in ((1, 4, 7), (2, 5, 8), (16, 18, 20), (17, 19, 21)):
                bend = angle_deg(j[:, knee] - j[:, hip], j[:, ankle] - j[:, knee])
                assert bend.max() < 150, (family, knee, bend.max())
            knee_bend = np.cross(j[:, 4] - j[:, 1], j[:, 7] - j[:, 4])  # axis of the left knee's bend
            pelvis_left = j[:, 1] - j[:, 2]
            bent = angle_deg(j[:, 4] - j[:, 1], j[:, 7] - j[:, 4]) > 15
            assert ((knee_bend * pelvis_left).sum(-1)[bent] > 0).all(), f"{family}: left knee bends backwards"
            # the head stays above the pelvis
            assert (j[:, 15, 1] > j[:, 0, 1] + 0.3).all(), family


def test_walking_feet_do_not_slide(by_family):
    for family in LOCOMOTION:
        for clip in by_family[family]:
            feet = clip.joints[:, [7, 8, 10, 11]].astype(np.float64)
            lowest = feet[..., 1].argmin(1)
            speed = np.linalg.norm(np.diff(feet[..., [0, 2]], axis=0), axis=-1) * S.FPS
            contact_speed = speed[np.arange(len(speed)), lowest[1:]]
            assert np.median(contact_speed) < 0.03, family
            assert np.percentile(contact_speed, 90) < 0.35, family


def descriptor(j: np.ndarray) -> np.ndarray:
    """Hand-made motion statistics (no captions) for the nearest-centroid family classifier."""
    root = j[:, 0]
    step = np.diff(root[:, [0, 2]], axis=0)
    forward = j[:, 1] - j[:, 2]  # pelvis left -> facing = up x left
    facing = np.stack([forward[:, 2], -forward[:, 0]], -1)
    yaw = np.unwrap(np.arctan2(facing[:, 0], facing[:, 1]))
    along = (step * facing[1:]).sum(-1) / np.linalg.norm(facing[1:], axis=-1)
    rel = j[..., 1] - root[:, None, 1]
    return np.array(
        [
            np.linalg.norm(step, axis=-1).mean() * 20,
            along.mean() * 20,
            abs(yaw[-1] - yaw[0]),
            np.abs(np.diff(yaw)).sum() - abs(yaw[-1] - yaw[0]),
            np.linalg.norm(root[-1, [0, 2]] - root[0, [0, 2]]),
            root[:, 1].min(),
            root[:, 1].max() - root[:, 1].min(),
            j[..., 1].min(1).max(),
            rel[:, [20, 21]].max(),
            rel[:, [20, 21]].max(0).min(),
            rel[:, [7, 8]].max(),
            np.abs(np.diff(rel[:, 20])).sum() + np.abs(np.diff(rel[:, 21])).sum(),
            np.linalg.norm(np.diff(j[:, [7, 8]], axis=0), axis=-1).mean() * 20,
        ]
    )


def test_families_are_distinguishable_from_motion_alone():
    train = {f: clips_of(f, 12, seed=100) for f in S.FAMILIES}
    test = {f: clips_of(f, 6, seed=200) for f in S.FAMILIES}
    x = np.array([descriptor(c.joints.astype(np.float64)) for f in S.FAMILIES for c in train[f]])
    mu, sd = x.mean(0), x.std(0) + 1e-9
    centroids = np.array(
        [
            np.mean([(descriptor(c.joints.astype(np.float64)) - mu) / sd for c in train[f]], 0)
            for f in S.FAMILIES
        ]
    )
    correct = total = 0
    for k, f in enumerate(S.FAMILIES):
        for c in test[f]:
            d = np.linalg.norm(centroids - (descriptor(c.joints.astype(np.float64)) - mu) / sd, axis=1)
            correct += int(d.argmin() == k)
            total += 1
    accuracy = correct / total
    assert accuracy > 0.75, (
        f"nearest-centroid family accuracy {accuracy:.2f} (chance {1 / len(S.FAMILIES):.2f})"
    )


def test_sides_and_directions_match_captions():
    def side(caption: str) -> str:
        return "left" if "left" in caption else "right"

    for clip in clips_of("wave", 8, seed=3):
        j = clip.joints
        raised = "left" if j[:, 20, 1].max() > j[:, 21, 1].max() else "right"
        assert raised == side(clip.captions[0]), clip.captions
    for clip in clips_of("kick", 8, seed=4):
        j = clip.joints
        kicked = "left" if j[:, 7, 1].max() > j[:, 8, 1].max() else "right"
        assert kicked == side(clip.captions[0]), clip.captions
    for family in ("turn", "walk_circle"):
        for clip in clips_of(family, 8, seed=5):
            left = (clip.joints[:, 1] - clip.joints[:, 2]).astype(np.float64)  # the pelvis' left direction
            # a yaw of theta about +y (counterclockwise seen from above, a turn to the left) maps the left
            # direction (1, 0, 0) to (cos theta, 0, -sin theta)
            yaw = np.unwrap(np.arctan2(-left[:, 2], left[:, 0]))
            words = " ".join(clip.captions)
            assert ("left" in words) != ("right" in words), clip.captions
            turned_left = "left" in words or "counterclockwise" in words
            assert (yaw[-1] - yaw[0] > 0) == turned_left, (family, yaw[-1] - yaw[0], clip.captions)
            assert abs(yaw[-1] - yaw[0]) > np.radians(60)


def test_mirroring_joints_captions_and_features():
    clip = S.sample_clip(np.random.default_rng(7), "wave+walk")
    mirrored = S.mirror_joints(clip.joints)
    np.testing.assert_array_equal(S.mirror_joints(mirrored), clip.joints)
    np.testing.assert_allclose(mirrored[:, 20, 0], -clip.joints[:, 21, 0])
    assert S.mirror_caption("Left hand, then right; clockwise, counterclockwise; leftover") == (
        "Right hand, then left; counterclockwise, clockwise; leftover"
    )
    # feature-space mirroring equals the features of the mirrored joints (reference: the full pipeline)
    feats = joints_to_features(clip.joints.astype(np.float64), target_offsets=None)
    reference = joints_to_features(mirrored.astype(np.float64), target_offsets=None)
    assert np.abs(reference - feats).max() > 0.1
    np.testing.assert_allclose(S.mirror_features(feats), reference, atol=1e-9)


def test_retargeting_is_identity_for_generated_skeleton():
    clip = S.sample_clip(np.random.default_rng(8), "run")
    joints = clip.joints.astype(np.float64)
    np.testing.assert_allclose(
        joints_to_features(joints, target_offsets=None), joints_to_features(joints), atol=1e-5
    )


def test_pos_tagger_covers_the_vocabulary():
    assert S.pos_tag("A man does shallow squats, then kicks with the left leg!") == [
        "a/DET", "man/NOUN", "do/VERB", "shallow/ADJ", "squat/NOUN", "then/ADV", "kick/VERB", "with/ADP",
        "the/DET", "left/ADJ", "leg/NOUN",
    ]  # fmt: skip
    families = [*S.FAMILIES, *("+".join(c) for c in S.COMPOSITIONS)]
    for i, family in enumerate(families * 3):
        for caption in S.sample_clip(np.random.default_rng([11, i]), family).captions:
            for word in re.findall(r"[a-z]+", caption):
                assert S._lemma(word) != (word, "NOUN") or word in S._WORDS_BY_TAG["NOUN"], (word, caption)


def test_generate_dataset_layout_and_determinism(tmp_path):
    summary = S.generate_dataset(tmp_path / "a", 15, seed=3)
    S.generate_dataset(tmp_path / "b", 15, seed=3, workers=2, chunk=4)
    root = tmp_path / "a"
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    for rel in files:  # byte-identical whatever the number of worker processes
        assert (root / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert summary["motions"] == 30 and summary["clips"] == 15
    assert sum(summary["families"].values()) == 15 and set(S.FAMILIES) <= set(summary["families"])

    splits = {name: read_split(root, name) for name in ("train", "val", "test", "all")}
    assert sorted(splits["train"] + splits["val"] + splits["test"]) == sorted(splits["all"])
    assert len(splits["all"]) == 30 and len(splits["test"]) == 2 * 2 and len(splits["val"]) == 2 * 1
    for name in ("train", "val", "test"):  # every mirror sits in its original's split
        assert {i.lstrip("M") for i in splits[name]} == {i for i in splits[name] if not i.startswith("M")}

    blocks = feature_slices(22)
    train = np.concatenate([np.load(root / "new_joint_vecs" / f"{i}.npy") for i in splits["train"]]).astype(
        np.float64
    )
    std = train.std(0)
    for block in blocks.values():
        std[block] = std[block].mean()
    np.testing.assert_allclose(np.load(root / "Mean.npy"), train.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.load(root / "Std.npy"), std, rtol=1e-5)

    for clip_id in splits["all"]:
        feats = np.load(root / "new_joint_vecs" / f"{clip_id}.npy")
        joints = np.load(root / "new_joints" / f"{clip_id}.npy")
        assert feats.dtype == np.float32 and feats.shape[1] == 263 and 40 <= len(feats) <= 196
        np.testing.assert_allclose(joints, recover_from_ric(feats, 22), atol=1e-6)
        lines = read_captions(root / "texts" / f"{clip_id}.txt")
        assert len(lines) == 3 and all(line.whole_clip for line in lines)
        assert all(re.fullmatch(r"[a-z]+/[A-Z]+", tok) for line in lines for tok in line.tokens)
    original = read_captions(root / "texts" / "000000.txt")
    mirrored = read_captions(root / "texts" / "M000000.txt")
    assert [S.mirror_caption(line.caption) for line in original] == [line.caption for line in mirrored]

    data = MotionDataset(root, "train")
    assert len(data) == len(splits["train"]) and data[0]["motion"].shape[1] == 263


def test_generate_dataset_rejects_bad_arguments(tmp_path):
    with pytest.raises(ConfigError, match="clips must be >= 3"):
        S.generate_dataset(tmp_path / "x", 2, 0)
    with pytest.raises(ConfigError, match="kind"):
        S.generate_dataset(tmp_path / "x", 5, 0, kind="kit")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("user data")
    with pytest.raises(ConfigError, match="not an empty folder"):
        S.generate_dataset(tmp_path / "full", 5, 0)
    with pytest.raises(ConfigError, match="synthetic family"):
        S.sample_clip(np.random.default_rng(0), "fly")
