"""Skeleton helpers and the HumanML3D feature pipeline, checked against the real clip 012314."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from easytune.data import features as F
from easytune.data import skeleton as sk
from easytune.errors import DataError

# Per-block tolerances reached on the real clip (the dataset is float32; we compute in float64).
BLOCK_TOL = {
    "root_rot_vel": 1e-6,
    "root_lin_vel": 1e-6,
    "root_y": 1e-6,
    "ric": 5e-6,
    "rot": 2e-5,
    "local_vel": 5e-6,
    "contacts": 0.0,
}


def _load(sample):
    joints = np.load(sample / "new_joints" / "012314.npy")
    vecs = np.load(sample / "new_joint_vecs" / "012314.npy")
    return joints, vecs


def _extended_joints(joints: np.ndarray, vecs: np.ndarray) -> np.ndarray:
    """new_joints has the T processed frames; the features also used frame T (its last ``local_vel`` row).
    Rebuild that frame from the last row so the whole clip can be reprocessed."""
    r_rot, _ = F.recover_root_rot_pos(vecs.astype(np.float64))
    vel = vecs[-1, F.feature_slices(22)["local_vel"]].reshape(22, 3).astype(np.float64)
    last = joints[-1] + sk.qrot(np.repeat(sk.qinv(r_rot[-1])[None], 22, axis=0), vel)
    return np.concatenate([joints.astype(np.float64), last[None]], axis=0)


def _random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=(n, 4))
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def _yaw(angle: float) -> np.ndarray:
    return np.array([np.cos(angle / 2), 0.0, np.sin(angle / 2), 0.0])


# --------------------------------------------------------------------------------------------------------
# real clip
# --------------------------------------------------------------------------------------------------------
def test_recover_from_ric_matches_new_joints(humanml3d_sample):
    joints, vecs = _load(humanml3d_sample)
    rec = F.recover_from_ric(vecs, 22)
    assert rec.dtype == np.float32 and rec.shape == joints.shape
    np.testing.assert_allclose(rec, joints, atol=1e-5, rtol=0)
    rec_t = F.recover_from_ric(torch.from_numpy(vecs)[None].repeat(2, 1, 1))
    assert rec_t.shape == (2, *joints.shape)
    np.testing.assert_allclose(rec_t[1].numpy(), joints, atol=1e-5, rtol=0)


def test_joints_to_features_reproduces_new_joint_vecs(humanml3d_sample):
    joints, vecs = _load(humanml3d_sample)
    feats = F.joints_to_features(_extended_joints(joints, vecs))
    assert feats.shape == vecs.shape and feats.dtype == np.float64
    for name, block in F.feature_slices(22).items():
        err = np.abs(feats[:, block] - vecs[:, block]).max()
        assert err <= BLOCK_TOL[name], f"{name}: max error {err:.3g} > {BLOCK_TOL[name]}"


def test_joints_to_features_on_new_joints_alone(humanml3d_sample):
    # Without the extra frame, rows farther than the smoothing radius (80 frames) from the end still match.
    joints, vecs = _load(humanml3d_sample)
    feats = F.joints_to_features(joints)
    assert feats.shape == (len(joints) - 1, 263) and feats.dtype == np.float32
    rows = slice(0, len(joints) - 80)
    for name, block in F.feature_slices(22).items():
        err = np.abs(feats[rows, block] - vecs[rows, block]).max()
        assert err <= max(BLOCK_TOL[name], 1e-6), f"{name}: max error {err:.3g}"


def test_features_roundtrip_and_invariances(humanml3d_sample):
    joints, vecs = _load(humanml3d_sample)
    ext = _extended_joints(joints, vecs)
    feats = F.joints_to_features(ext)
    np.testing.assert_allclose(F.recover_from_ric(feats), joints, atol=1e-5, rtol=0)
    # a rigid yaw + translation of the input, and a uniform scale (undone by the retargeting), change nothing
    moved = sk.qrot(np.broadcast_to(_yaw(1.3), ext.shape[:-1] + (4,)), ext) + np.array([2.0, 0.5, -1.0])
    np.testing.assert_allclose(F.joints_to_features(moved), feats, atol=2e-5, rtol=0)
    np.testing.assert_allclose(F.joints_to_features(ext * 1.25), feats, atol=2e-5, rtol=0)


def test_torch_paths_match_numpy_and_are_differentiable(humanml3d_sample):
    joints, vecs = _load(humanml3d_sample)
    ext = _extended_joints(joints, vecs)[:40]
    np.testing.assert_allclose(
        F.joints_to_features(torch.from_numpy(ext)).numpy(), F.joints_to_features(ext), atol=1e-12, rtol=0
    )
    x = torch.from_numpy(vecs[:6].astype(np.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(F.recover_from_ric, (x,), eps=1e-6, atol=1e-5, fast_mode=True)
    j = torch.from_numpy(ext[:12]).requires_grad_(True)
    F.joints_to_features(j).square().sum().backward()
    assert torch.isfinite(j.grad).all() and j.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------------------
# KIT and synthetic poses
# --------------------------------------------------------------------------------------------------------
def _random_motion(spec: sk.SkeletonSpec, frames: int, rng: np.random.Generator) -> np.ndarray:
    """Smoothly varying small local rotations on the spec's skeleton, walking forward."""
    lengths = spec.bone_lengths
    if lengths is None:  # KIT: millimetres, no published target skeleton
        lengths = np.linspace(50.0, 300.0, spec.num_joints)
    base = rng.normal(scale=0.25, size=(spec.num_joints, 3))
    freq = rng.uniform(0.05, 0.2, size=(spec.num_joints, 3))
    t = np.arange(frames)[:, None, None]
    axis_angle = base * np.sin(freq * t + 1.0)
    angle = np.linalg.norm(axis_angle, axis=-1, keepdims=True)
    quats = np.concatenate([np.cos(angle / 2), np.sin(angle / 2) * axis_angle / angle], axis=-1)
    quats[:, 0] = np.stack([_yaw(0.02 * i) for i in range(frames)])
    steps = np.arange(frames)
    root = np.stack([0.01 * steps, np.full(frames, 3 * lengths.max()), 0.02 * steps], axis=-1)
    return sk.forward_kinematics(quats, root, spec.raw_offsets * lengths[:, None], spec.kinematic_chain)


def test_kit_features_shape_and_rigid_invariants():
    rng = np.random.default_rng(0)
    joints = _random_motion(sk.KIT, 50, rng)
    feats = F.joints_to_features(joints, "kit")
    assert feats.shape == (49, 251)
    rec = F.recover_from_ric(feats, 21)
    # recovered poses differ from the input by a rigid yaw + shift only: same bone lengths, same heights
    parents = np.array([max(p, 0) for p in sk.KIT.parents])
    np.testing.assert_allclose(
        np.linalg.norm(rec - rec[:, parents], axis=-1),
        np.linalg.norm(joints[:-1] - joints[:-1, parents], axis=-1),
        atol=1e-6,
    )
    np.testing.assert_allclose(rec[..., 1], joints[:-1, :, 1] - joints[..., 1].min(), atol=1e-6)
    horiz = lambda x: np.linalg.norm(x[:, :, None, [0, 2]] - x[:, None, :, [0, 2]], axis=-1)  # noqa: E731
    np.testing.assert_allclose(horiz(rec), horiz(joints[:-1]), atol=1e-6)


def test_humanml_retargets_to_the_standard_skeleton():
    rng = np.random.default_rng(1)
    spec = sk.HUMANML
    joints = _random_motion(spec, 30, rng)
    lengths = spec.bone_lengths * rng.uniform(0.8, 1.2, size=22)
    lengths[0] = 0.0
    other = sk.forward_kinematics(
        sk.inverse_kinematics(joints, spec.raw_offsets, spec.kinematic_chain, spec.face_joints),
        joints[:, 0],
        spec.raw_offsets * lengths[:, None],
        spec.kinematic_chain,
    )
    rec = F.recover_from_ric(F.joints_to_features(other))
    bones = np.linalg.norm(rec[:, 1:] - rec[:, list(spec.parents[1:])], axis=-1)
    np.testing.assert_allclose(bones, np.broadcast_to(spec.bone_lengths[1:], bones.shape), atol=1e-6)


def test_feature_layout_and_bad_inputs():
    assert F.feature_dim(22) == 263 and F.feature_dim(21) == 251
    slices = F.feature_slices(22)
    assert slices["ric"] == slice(4, 67) and slices["rot"] == slice(67, 193)
    assert slices["local_vel"] == slice(193, 259) and slices["contacts"] == slice(259, 263)
    with pytest.raises(DataError, match=r"\[T >= 2, J, 3\]"):
        F.joints_to_features(np.zeros((1, 22, 3)))
    with pytest.raises(DataError, match="humanml has 22 joints"):
        F.joints_to_features(np.zeros((5, 21, 3)), "humanml")
    bad = _random_motion(sk.HUMANML, 5, np.random.default_rng(0))
    bad[2, 3, 1] = np.nan
    with pytest.raises(DataError, match="NaN"):
        F.joints_to_features(bad)
    with pytest.raises(DataError, match="expected 263"):
        F.recover_from_ric(np.zeros((4, 100)))
    with pytest.raises(DataError, match="21 joints, not joints_num=22"):
        F.recover_from_ric(np.zeros((4, 251)), 22)


# --------------------------------------------------------------------------------------------------------
# quaternions and kinematics
# --------------------------------------------------------------------------------------------------------
def test_quaternion_helpers_numpy_and_torch_agree():
    rng = np.random.default_rng(0)
    q, r, v = _random_rotations(64, rng), _random_rotations(64, rng), rng.normal(size=(64, 3))
    m = sk.quat_to_matrix(q)
    np.testing.assert_allclose(sk.qrot(q, v), np.einsum("nij,nj->ni", m, v), atol=1e-12)
    np.testing.assert_allclose(sk.qrot(sk.qmul(q, r), v), sk.qrot(q, sk.qrot(r, v)), atol=1e-12)
    np.testing.assert_allclose(sk.qrot(sk.qinv(q), sk.qrot(q, v)), v, atol=1e-12)
    np.testing.assert_allclose(sk.qmul(q, r), sk.qmul(torch.from_numpy(q), torch.from_numpy(r)).numpy())
    # quaternion <-> 6D <-> matrix, also near the half turn (w ~ 0)
    q[:4] = [[1e-9, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [1e-7, 0.6, 0.8, 0]]
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    back = sk.cont6d_to_quat(sk.quat_to_cont6d(q))
    np.testing.assert_allclose(sk.quat_to_matrix(back), sk.quat_to_matrix(q), atol=1e-9)
    np.testing.assert_allclose(np.abs((back * q).sum(-1)), 1.0, atol=1e-9)
    assert (back[:, 0] >= 0).all()
    # qbetween: onto the target direction, including exactly opposite vectors
    a, b = rng.normal(size=(64, 3)), rng.normal(size=(64, 3))
    b[:3] = -a[:3] * 2.0
    rot = sk.qrot(sk.qbetween(a, b), a)
    np.testing.assert_allclose(rot / np.linalg.norm(rot, axis=-1, keepdims=True),
                               b / np.linalg.norm(b, axis=-1, keepdims=True), atol=1e-9)  # fmt: skip


def test_ik_fk_roundtrip_and_mirror():
    rng = np.random.default_rng(2)
    for spec in (sk.HUMANML, sk.KIT):
        joints = _random_motion(spec, 20, rng)
        quats = sk.inverse_kinematics(joints, spec.raw_offsets, spec.kinematic_chain, spec.face_joints, 3.0)
        offsets = sk.bone_offsets(joints[0], spec.raw_offsets, spec.parents)
        rec = sk.forward_kinematics(quats, joints[:, 0], offsets, spec.kinematic_chain)
        np.testing.assert_allclose(rec, joints, atol=1e-9)
        perm = np.array(spec.mirror)
        assert (perm[perm] == np.arange(spec.num_joints)).all()
        names = [spec.joint_names[i] for i in perm]
        assert sum(a != b for a, b in zip(names, spec.joint_names)) == 16
    assert sk.HUMANML.joint_names[sk.HUMANML.mirror[1]] == "right_hip"
    assert sk.get_skeleton(21) is sk.KIT and sk.get_skeleton("humanml").feature_dim == 263


def test_gaussian_smooth_matches_scipy_settings():
    x = torch.from_numpy(np.random.default_rng(3).normal(size=(30, 3)))
    out = sk.gaussian_smooth(x, 4.0, dim=0)
    radius = 16
    w = np.exp(-0.5 * (np.arange(-radius, radius + 1) / 4.0) ** 2)
    w /= w.sum()
    xn = x.numpy()
    padded = np.concatenate([np.repeat(xn[:1], radius, 0), xn, np.repeat(xn[-1:], radius, 0)])
    expected = np.stack([np.convolve(padded[:, c], w, mode="valid") for c in range(3)], axis=-1)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-12)
