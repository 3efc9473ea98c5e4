"""HumanML3D motion features: joints -> 263-dim (KIT: 251-dim) vectors and back.

Per frame ``t`` of a clip of ``T`` poses the feature vector (``T - 1`` rows, J joints) is

====================  =============  ============================================================
block                 dims           meaning
====================  =============  ============================================================
``root_rot_vel``      1              half the yaw change t -> t+1 (radians; ``arcsin`` of the y
                                     component of the relative root quaternion)
``root_lin_vel``      2              root XZ displacement t -> t+1 in the facing frame of t+1
``root_y``            1              root height
``ric``               3 (J - 1)      joint positions relative to the root XZ, in the facing frame
``rot``               6 (J - 1)      local joint rotations (6D, see ``skeleton``)
``local_vel``         3 J            joint displacements t -> t+1 in the facing frame of t
``contacts``          4              foot contacts: left pair, right pair (1.0 = in contact)
====================  =============  ============================================================

``joints_to_features`` reproduces the reference ``process_file`` of the HumanML3D repository step by step
(retarget to the target bone lengths, floor at y = 0, root XZ of frame 0 at the origin, frame 0 facing
+Z, contacts with the squared-displacement threshold, inverse kinematics with the facing smoothed by a
Gaussian of sigma 20 frames). It computes in float64 (the reference computes in float32).
``recover_from_ric`` / ``recover_root_rot_pos`` decode features to joints, for numpy or (differentiably)
torch.
"""

from __future__ import annotations

import numpy as np
import torch

from easytune.data.skeleton import (
    Array,
    SkeletonSpec,
    bone_offsets,
    facing_direction,
    forward_kinematics,
    get_skeleton,
    inverse_kinematics,
    numpy_compatible,
    qbetween,
    qinv,
    qmul,
    qrot,
    quat_to_cont6d,
)
from easytune.errors import DataError

FACING_SMOOTH_SIGMA = 20.0
"""Gaussian sigma (frames) of the facing direction used for the rotations and the facing frame."""

_DEFAULT = "default"


def feature_dim(joints_num: int) -> int:
    """12 J - 1: 263 for 22 joints, 251 for 21."""
    return 12 * joints_num - 1


def joints_num_from_dim(dim: int) -> int:
    """Inverse of ``feature_dim``; DataError for a width no skeleton has."""
    for spec in (get_skeleton("humanml"), get_skeleton("kit")):
        if spec.feature_dim == dim:
            return spec.num_joints
    raise DataError(f"feature width {dim}: expected 263 (HumanML3D, 22 joints) or 251 (KIT, 21 joints)")


def feature_slices(joints_num: int) -> dict[str, slice]:
    """Column ranges of the feature blocks (see the module docstring) for ``joints_num`` joints."""
    sizes = {
        "root_rot_vel": 1,
        "root_lin_vel": 2,
        "root_y": 1,
        "ric": 3 * (joints_num - 1),
        "rot": 6 * (joints_num - 1),
        "local_vel": 3 * joints_num,
        "contacts": 4,
    }
    out, start = {}, 0
    for name, size in sizes.items():
        out[name] = slice(start, start + size)
        start += size
    return out


def retarget(joints: torch.Tensor, spec: SkeletonSpec, target_offsets: torch.Tensor) -> torch.Tensor:
    """The reference ``uniform_skeleton``: poses [T, J, 3] re-posed on bone vectors ``target_offsets``
    [J, 3]; the root trajectory is scaled by the ratio of leg lengths (target / clip's first frame)."""
    raw = torch.as_tensor(spec.raw_offsets, dtype=joints.dtype)
    src = bone_offsets(joints[0], raw, spec.parents)
    l1, l2 = spec.leg_joints
    src_leg = src[l1].abs().max() + src[l2].abs().max()
    tgt_leg = target_offsets[l1].abs().max() + target_offsets[l2].abs().max()
    quats = inverse_kinematics(joints, raw, spec.kinematic_chain, spec.face_joints)
    return forward_kinematics(quats, joints[:, 0] * (tgt_leg / src_leg), target_offsets, spec.kinematic_chain)


def joints_to_features(
    joints: Array,
    kind: str | None = None,
    *,
    target_offsets: Array | None | str = _DEFAULT,
    foot_threshold: float | None = None,
) -> Array:
    """Features [T-1, 12J-1] of one clip of joint positions [T, J, 3] (T >= 2).

    ``kind``: ``"humanml"`` / ``"kit"``, inferred from J when None. ``target_offsets``: bone vectors [J, 3]
    to retarget to; ``"default"`` takes the skeleton's published target (HumanML3D) or keeps the clip's
    own bone lengths when there is none (KIT); ``None`` skips retargeting. ``foot_threshold`` overrides the
    skeleton's squared-displacement contact threshold (0.002 HumanML3D, 0.05 KIT). Returns the input's
    type; numpy keeps its float dtype, torch its dtype and device. Differentiable for torch input.
    """
    is_numpy = isinstance(joints, np.ndarray)
    x = torch.from_numpy(np.asarray(joints)) if is_numpy else joints
    out_dtype = x.dtype if x.dtype.is_floating_point else torch.float32
    if x.ndim != 3 or x.shape[-1] != 3 or x.shape[0] < 2:
        raise DataError(f"joints: expected shape [T >= 2, J, 3], got {tuple(x.shape)}")
    spec = get_skeleton(kind if kind is not None else x.shape[1])
    if x.shape[1] != spec.num_joints:
        raise DataError(f"joints: {spec.kind} has {spec.num_joints} joints, got {x.shape[1]}")
    if not bool(torch.isfinite(x).all()):
        raise DataError("joints: contains NaN or inf")
    if isinstance(target_offsets, str):
        if target_offsets != _DEFAULT:
            raise DataError(
                f"target_offsets: expected 'default', None or a [J, 3] array, got {target_offsets!r}"
            )
        target_offsets = spec.target_offsets()
    target = None
    if target_offsets is not None:
        target = torch.as_tensor(target_offsets).to(device=x.device, dtype=torch.float64)
        if tuple(target.shape) != (spec.num_joints, 3):
            raise DataError(
                f"target_offsets: expected shape ({spec.num_joints}, 3), got {tuple(target.shape)}"
            )
    threshold = spec.foot_threshold if foot_threshold is None else float(foot_threshold)

    feats = _features(x.to(torch.float64), spec, target, threshold).to(out_dtype)
    return feats.numpy() if is_numpy else feats


def _features(pos: torch.Tensor, spec: SkeletonSpec, target: torch.Tensor | None, thr: float) -> torch.Tensor:
    if target is not None:
        pos = retarget(pos, spec, target)
    raw = torch.as_tensor(spec.raw_offsets, dtype=pos.dtype, device=pos.device)
    up_z = pos.new_tensor([0.0, 0.0, 1.0])

    # floor, root XZ of frame 0 at the origin, frame 0 facing +Z
    pos = pos - pos[..., 1].min() * pos.new_tensor([0.0, 1.0, 0.0])
    pos = pos - pos[0, 0] * pos.new_tensor([1.0, 0.0, 1.0])
    pos = qrot(qbetween(facing_direction(pos[0], spec.face_joints, hip_sign=1.0), up_z), pos)

    # foot contacts: squared displacement below the threshold
    step = pos[1:] - pos[:-1]
    disp2 = (step * step).sum(-1)
    contacts = torch.cat(
        [disp2[:, list(spec.feet_left)] < thr, disp2[:, list(spec.feet_right)] < thr], dim=-1
    ).to(pos.dtype)

    # rotations with the smoothed facing; the root rotation is the facing frame
    quats = inverse_kinematics(
        pos, raw, spec.kinematic_chain, spec.face_joints, FACING_SMOOTH_SIGMA, first_root_identity=True
    )
    r_rot = quats[:, 0]
    lin_vel = qrot(r_rot[1:], step[:, 0])
    rot_vel = torch.asin(qmul(r_rot[1:], qinv(r_rot[:-1]))[:, 2:3])

    # root-relative positions in the facing frame (the rotation-invariant "ric")
    ric = pos - pos[:, :1] * pos.new_tensor([1.0, 0.0, 1.0])
    ric = qrot(r_rot[:, None], ric)
    local_vel = qrot(r_rot[:-1, None], step)

    n = pos.shape[0] - 1
    return torch.cat(
        [
            rot_vel,
            lin_vel[:, [0, 2]],
            ric[:-1, 0, 1:2],
            ric[:-1, 1:].reshape(n, -1),
            quat_to_cont6d(quats[:-1, 1:]).reshape(n, -1),
            local_vel.reshape(n, -1),
            contacts,
        ],
        dim=-1,
    )


@numpy_compatible
def recover_root_rot_pos(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Root yaw quaternions [..., T, 4] and root positions [..., T, 3] from features [..., T, D].

    The yaw starts at 0 and integrates ``root_rot_vel``; the XZ path integrates ``root_lin_vel`` rotated
    back to the world; y is ``root_y``. Frame t uses the velocities of frames < t.
    """
    ang = torch.cumsum(torch.cat([torch.zeros_like(feats[..., :1, 0]), feats[..., :-1, 0]], dim=-1), dim=-1)
    zeros = torch.zeros_like(ang)
    r_rot = torch.stack([torch.cos(ang), zeros, torch.sin(ang), zeros], dim=-1)
    vel = feats[..., :-1, 1:3]
    vel = torch.cat([torch.zeros_like(vel[..., :1, :]), vel], dim=-2)
    vel3 = torch.stack([vel[..., 0], torch.zeros_like(vel[..., 0]), vel[..., 1]], dim=-1)
    r_pos = torch.cumsum(qrot(qinv(r_rot), vel3), dim=-2)
    r_pos = torch.stack([r_pos[..., 0], feats[..., 3], r_pos[..., 2]], dim=-1)
    return r_rot, r_pos


@numpy_compatible
def recover_from_ric(feats: torch.Tensor, joints_num: int | None = None) -> torch.Tensor:
    """Joint positions [..., T, J, 3] from features [..., T, 12J-1] (263 -> 22 joints, 251 -> 21).

    Uses the root path (``recover_root_rot_pos``) and the ``ric`` block only. Differentiable for torch.
    """
    inferred = joints_num_from_dim(feats.shape[-1])
    if joints_num is not None and joints_num != inferred:
        raise DataError(
            f"features: width {feats.shape[-1]} is for {inferred} joints, not joints_num={joints_num}"
        )
    r_rot, r_pos = recover_root_rot_pos(feats)
    ric = feats[..., 4 : 4 + 3 * (inferred - 1)].reshape(feats.shape[:-1] + (inferred - 1, 3))
    joints = qrot(qinv(r_rot)[..., None, :], ric) + (r_pos * r_pos.new_tensor([1.0, 0.0, 1.0]))[..., None, :]
    return torch.cat([r_pos[..., None, :], joints], dim=-2)
