"""Skeletons of HumanML3D (SMPL, 22 joints) and KIT-ML (MMM, 21 joints), quaternion helpers and kinematics.

Conventions (those of the HumanML3D processing scripts):

- y is up; a processed clip initially faces +Z; lengths are metres (HumanML3D) or millimetres (KIT).
- Quaternions are ``(w, x, y, z)`` with the Hamilton product; ``qrot(q, v)`` rotates ``v`` by ``q``.
- The continuous 6D rotation is the first two **columns** of the rotation matrix, ``[c0 (3), c1 (3)]``.
- ``raw_offsets`` are unit rest-pose bone directions (joint minus parent); bone vectors are
  ``raw_offsets * bone_lengths[:, None]``.
- A local rotation is relative to the previous joint **of its kinematic chain**, and every chain starts
  from the root rotation, including the two arm chains that start at spine3 (joint 9). Inverse and forward
  kinematics here follow that convention, so they match the 6D features of the dataset.

Every quaternion / kinematics helper accepts numpy arrays or torch tensors (any leading batch shape) and
returns the same type; the torch path is differentiable. numpy inputs are computed through torch without a
copy and keep their dtype (float64 stays float64).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from easytune.errors import ConfigError

Array = np.ndarray | torch.Tensor

# ---------------------------------------------------------------------------------------------------------
# HumanML3D / SMPL, 22 joints
# ---------------------------------------------------------------------------------------------------------
SMPL_JOINT_NAMES: tuple[str, ...] = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle",
    "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
)  # fmt: skip

SMPL_RAW_OFFSETS = np.array(
    [
        [0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, -1, 0], [0, 1, 0], [0, -1, 0],
        [0, -1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1], [0, 1, 0], [1, 0, 0], [-1, 0, 0], [0, 0, 1],
        [0, -1, 0], [0, -1, 0], [0, -1, 0], [0, -1, 0], [0, -1, 0], [0, -1, 0],
    ],
    dtype=np.float64,
)  # fmt: skip

SMPL_KINEMATIC_CHAIN: tuple[tuple[int, ...], ...] = (
    (0, 2, 5, 8, 11),
    (0, 1, 4, 7, 10),
    (0, 3, 6, 9, 12, 15),
    (9, 14, 17, 19, 21),
    (9, 13, 16, 18, 20),
)

# Bone lengths (metres) of the skeleton every processed HumanML3D clip has (the reference retargets all
# clips to the first frame of clip 000021). Measured on the real clip 012314 (new_joints/012314.npy):
# the mean over its 170 frames of |joint - parent|; the per-frame spread is < 2e-6. Index 0 (root) is 0.
SMPL_BONE_LENGTHS = np.array(
    [
        0.0, 0.103074, 0.1098834, 0.1315682, 0.3936232, 0.3901882, 0.1431902, 0.432433, 0.4256434,
        0.0573647, 0.1433818, 0.1494191, 0.21936, 0.1374868, 0.1433828, 0.1030392, 0.131614, 0.1229844,
        0.2568399, 0.2630919, 0.2660118, 0.2698763,
    ],
    dtype=np.float64,
)  # fmt: skip

# ---------------------------------------------------------------------------------------------------------
# KIT-ML / MMM, 21 joints
# ---------------------------------------------------------------------------------------------------------
KIT_JOINT_NAMES: tuple[str, ...] = (
    "root", "BP", "BT", "BLN", "BUN", "LS", "LE", "LW", "RS", "RE", "RW",
    "LH", "LK", "LA", "LMrot", "LF", "RH", "RK", "RA", "RMrot", "RF",
)  # fmt: skip

KIT_RAW_OFFSETS = np.array(
    [
        [0, 0, 0], [0, 1, 0], [0, 1, 0], [0, 1, 0], [0, 1, 0], [1, 0, 0], [0, -1, 0], [0, -1, 0],
        [-1, 0, 0], [0, -1, 0], [0, -1, 0], [1, 0, 0], [0, -1, 0], [0, -1, 0], [0, 0, 1], [0, 0, 1],
        [-1, 0, 0], [0, -1, 0], [0, -1, 0], [0, 0, 1], [0, 0, 1],
    ],
    dtype=np.float64,
)  # fmt: skip

KIT_KINEMATIC_CHAIN: tuple[tuple[int, ...], ...] = (
    (0, 11, 12, 13, 14, 15),
    (0, 16, 17, 18, 19, 20),
    (0, 1, 2, 3, 4),
    (3, 5, 6, 7),
    (3, 8, 9, 10),
)


def _parents(chain: Sequence[Sequence[int]], num_joints: int) -> tuple[int, ...]:
    parents = [-1] * num_joints
    for c in chain:
        for a, b in zip(c[:-1], c[1:]):
            parents[b] = a
    return tuple(parents)


def _mirror(names: Sequence[str], pairs: Sequence[tuple[str, str]]) -> tuple[int, ...]:
    perm = list(range(len(names)))
    for a, b in pairs:
        i, j = names.index(a), names.index(b)
        perm[i], perm[j] = j, i
    return tuple(perm)


@dataclass(frozen=True)
class SkeletonSpec:
    """Everything the feature pipeline needs to know about one skeleton.

    ``face_joints`` is the reference's ``face_joint_indx`` (labelled r_hip, l_hip, r_shoulder, l_shoulder);
    ``feet_left`` / ``feet_right`` are its ``fid_l`` / ``fid_r`` (contact features: left pair, then right);
    ``leg_joints`` (``l_idx1, l_idx2``) give the leg length used for the retargeting scale;
    ``bone_lengths`` is the target skeleton (``None``: not published, clips keep their own lengths);
    ``mirror`` is the left/right joint permutation (mirroring also negates x);
    ``foot_threshold`` is the squared per-frame foot displacement below which a foot is in contact.
    """

    kind: str
    joint_names: tuple[str, ...]
    raw_offsets: np.ndarray
    kinematic_chain: tuple[tuple[int, ...], ...]
    face_joints: tuple[int, int, int, int]
    feet_left: tuple[int, int]
    feet_right: tuple[int, int]
    leg_joints: tuple[int, int]
    bone_lengths: np.ndarray | None
    mirror: tuple[int, ...]
    foot_threshold: float
    fps: float

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)

    @property
    def parents(self) -> tuple[int, ...]:
        """Parent index per joint (-1 for the root)."""
        return _parents(self.kinematic_chain, self.num_joints)

    @property
    def feature_dim(self) -> int:
        """4 root + 3(J-1) positions + 6(J-1) rotations + 3J velocities + 4 contacts = 12J - 1."""
        return 12 * self.num_joints - 1

    def target_offsets(self) -> np.ndarray | None:
        """Bone vectors [J, 3] float64 of the target skeleton, or None when it has no published lengths."""
        if self.bone_lengths is None:
            return None
        return self.raw_offsets * self.bone_lengths[:, None]


HUMANML = SkeletonSpec(
    kind="humanml",
    joint_names=SMPL_JOINT_NAMES,
    raw_offsets=SMPL_RAW_OFFSETS,
    kinematic_chain=SMPL_KINEMATIC_CHAIN,
    face_joints=(2, 1, 17, 16),
    feet_left=(7, 10),
    feet_right=(8, 11),
    leg_joints=(5, 8),
    bone_lengths=SMPL_BONE_LENGTHS,
    mirror=_mirror(
        SMPL_JOINT_NAMES,
        [
            (f"left_{n}", f"right_{n}")
            for n in ("hip", "knee", "ankle", "foot", "collar", "shoulder", "elbow", "wrist")
        ],
    ),
    foot_threshold=0.002,
    fps=20.0,
)

# The reference labels KIT joints 11/16/5/8 as r_hip/l_hip/r_shoulder/l_shoulder and 14,15 as the right foot,
# while the MMM names say LH/RH/LS/RS and LMrot/LF. Only the indices matter (they fix the facing sign and
# the contact order), so they are kept exactly as the reference has them.
KIT = SkeletonSpec(
    kind="kit",
    joint_names=KIT_JOINT_NAMES,
    raw_offsets=KIT_RAW_OFFSETS,
    kinematic_chain=KIT_KINEMATIC_CHAIN,
    face_joints=(11, 16, 5, 8),
    feet_left=(19, 20),
    feet_right=(14, 15),
    leg_joints=(17, 18),
    bone_lengths=None,
    mirror=_mirror(
        KIT_JOINT_NAMES, [("L" + n, "R" + n) for n in ("S", "E", "W", "H", "K", "A", "Mrot", "F")]
    ),
    foot_threshold=0.05,
    fps=12.5,
)

SKELETONS: dict[str, SkeletonSpec] = {"humanml": HUMANML, "kit": KIT}


def get_skeleton(kind: str | int) -> SkeletonSpec:
    """``"humanml"`` / ``"kit"``, or a joint count (22 / 21)."""
    for spec in SKELETONS.values():
        if kind in (spec.kind, spec.num_joints):
            return spec
    raise ConfigError(f"skeleton kind {kind!r}: expected one of 'humanml', 'kit', 22 or 21")


# ---------------------------------------------------------------------------------------------------------
# numpy / torch dispatch
# ---------------------------------------------------------------------------------------------------------
def _as_torch(x: object) -> object:
    if isinstance(x, np.ndarray):
        if not np.issubdtype(x.dtype, np.floating):
            x = x.astype(np.float64)
        return torch.from_numpy(np.ascontiguousarray(x))
    return x


def numpy_compatible(fn: Callable[..., torch.Tensor]) -> Callable[..., Array]:
    """Let a torch function take numpy arrays: numpy in (any positional argument) -> numpy out."""

    @functools.wraps(fn)
    def wrapper(*args: object, **kwargs: object) -> Array:
        if any(isinstance(a, np.ndarray) for a in args):
            out = fn(*(_as_torch(a) for a in args), **kwargs)
            return tuple(o.numpy() for o in out) if isinstance(out, tuple) else out.numpy()
        return fn(*args, **kwargs)

    return wrapper


def _cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = torch.broadcast_tensors(a, b)
    return torch.linalg.cross(a, b, dim=-1)


def _promote(*xs: torch.Tensor) -> list[torch.Tensor]:
    dtype = functools.reduce(torch.promote_types, (x.dtype for x in xs))
    return [x.to(dtype) for x in xs]


# ---------------------------------------------------------------------------------------------------------
# quaternions (w, x, y, z)
# ---------------------------------------------------------------------------------------------------------
@numpy_compatible
def qinv(q: torch.Tensor) -> torch.Tensor:
    """Conjugate (the inverse of a unit quaternion). [..., 4]."""
    return q * q.new_tensor([1.0, -1.0, -1.0, -1.0])


@numpy_compatible
@numpy_compatible
def qmul(q: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Hamilton product ``q * r`` (apply r, then q). [..., 4] x [..., 4] (broadcast) -> [..., 4]."""
    q, r = _promote(q, r)
    w1, x1, y1, z1 = q.unbind(-1)
    w2, x2, y2, z2 = r.unbind(-1)
    return torch.stack(
        (
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
        ),
        dim=-1,
    )


@numpy_compatible
def qrot(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Rotate vectors ``v`` [..., 3] by unit quaternions ``q`` [..., 4] (broadcast)."""
    q, v = _promote(q, v)
    qv = q[..., 1:]
    uv = _cross(qv, v)
    uuv = _cross(qv, uv)
    return v + 2.0 * (q[..., :1] * uv + uuv)


@numpy_compatible
def qbetween(v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    """The minimal unit quaternion rotating direction ``v0`` onto ``v1`` ([..., 3] each, any lengths).

    For exactly opposite directions (where the reference formula gives NaN) it returns the half turn about
    an axis perpendicular to ``v0``.
    """
    v0, v1 = _promote(v0, v1)
    v0, v1 = torch.broadcast_tensors(v0, v1)
    axis = _cross(v0, v1)
    w = torch.sqrt((v0 * v0).sum(-1, keepdim=True) * (v1 * v1).sum(-1, keepdim=True)) + (v0 * v1).sum(
        -1, keepdim=True
    )
    q = torch.cat([w, axis], dim=-1)
    norm = torch.linalg.vector_norm(q, dim=-1, keepdim=True)
    scale = torch.sqrt((v0 * v0).sum(-1, keepdim=True) * (v1 * v1).sum(-1, keepdim=True))
    degenerate = norm <= 16 * torch.finfo(q.dtype).eps * scale
    ex = v0.new_tensor([1.0, 0.0, 0.0]).expand_as(v0)
    ey = v0.new_tensor([0.0, 1.0, 0.0]).expand_as(v0)
    use_y = v0[..., :1].abs() > 0.9 * torch.linalg.vector_norm(v0, dim=-1, keepdim=True)
    half_turn = torch.cat([torch.zeros_like(w), _cross(v0, torch.where(use_y, ey, ex))], dim=-1)
    q = torch.where(degenerate, half_turn, q)
    norm = torch.linalg.vector_norm(q, dim=-1, keepdim=True)
    return q / norm


@numpy_compatible
def quat_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Unit (or not: it is normalised) quaternions [..., 4] -> rotation matrices [..., 3, 3]."""
    w, x, y, z = q.unbind(-1)
    two_s = 2.0 / (q * q).sum(-1)
    m = torch.stack(
        (
            1 - two_s * (y * y + z * z), two_s * (x * y - z * w), two_s * (x * z + y * w),
            two_s * (x * y + z * w), 1 - two_s * (x * x + z * z), two_s * (y * z - x * w),
            two_s * (x * z - y * w), two_s * (y * z + x * w), 1 - two_s * (x * x + y * y),
        ),
        dim=-1,
    )  # fmt: skip
    return m.reshape(q.shape[:-1] + (3, 3))


@numpy_compatible
def matrix_to_quat(m: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [..., 3, 3] -> unit quaternions [..., 4] with w >= 0 (numerically stable branch)."""
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = m.reshape(m.shape[:-2] + (9,)).unbind(-1)
    q_abs = torch.sqrt(
        torch.stack(
            (1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22), dim=-1
        ).clamp_min(0.0)
    )
    cands = torch.stack(
        (
            torch.stack((q_abs[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01), dim=-1),
            torch.stack((m21 - m12, q_abs[..., 1] ** 2, m10 + m01, m02 + m20), dim=-1),
            torch.stack((m02 - m20, m10 + m01, q_abs[..., 2] ** 2, m12 + m21), dim=-1),
            torch.stack((m10 - m01, m20 + m02, m21 + m12, q_abs[..., 3] ** 2), dim=-1),
        ),
        dim=-2,
    ) / (2.0 * q_abs[..., None].clamp_min(0.1))
    best = q_abs.argmax(dim=-1)[..., None, None].expand(q_abs.shape[:-1] + (1, 4))
    q = torch.gather(cands, -2, best).squeeze(-2)
    q = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


@numpy_compatible
def quat_to_cont6d(q: torch.Tensor) -> torch.Tensor:
    """Quaternions [..., 4] -> 6D rotations [..., 6] (first two matrix columns)."""
    m = quat_to_matrix(q)
    return torch.cat([m[..., 0], m[..., 1]], dim=-1)


@numpy_compatible
def cont6d_to_matrix(d6: torch.Tensor) -> torch.Tensor:
    """6D rotations [..., 6] -> rotation matrices [..., 3, 3] by Gram-Schmidt (columns x, y, z)."""
    x = d6[..., 0:3] / torch.linalg.vector_norm(d6[..., 0:3], dim=-1, keepdim=True)
    z = _cross(x, d6[..., 3:6])
    z = z / torch.linalg.vector_norm(z, dim=-1, keepdim=True)
    y = _cross(z, x)
    return torch.stack([x, y, z], dim=-1)


@numpy_compatible
def cont6d_to_quat(d6: torch.Tensor) -> torch.Tensor:
    """6D rotations [..., 6] -> unit quaternions [..., 4] (w >= 0)."""
    return matrix_to_quat(cont6d_to_matrix(d6))


# ---------------------------------------------------------------------------------------------------------
# kinematics
# ---------------------------------------------------------------------------------------------------------
@numpy_compatible
def bone_offsets(joints: torch.Tensor, raw_offsets: torch.Tensor, parents: Sequence[int]) -> torch.Tensor:
    """Bone vectors ``raw_offsets * |joint - parent|`` [..., J, 3] measured on poses [..., J, 3]."""
    joints, raw_offsets = _promote(joints, raw_offsets)
    idx = torch.tensor([max(p, 0) for p in parents], device=joints.device)
    lengths = torch.linalg.vector_norm(joints - joints[..., idx, :], dim=-1, keepdim=True)
    return lengths * raw_offsets


@functools.lru_cache(maxsize=16)
def _chain_tables(
    kinematic_chain: tuple[tuple[int, ...], ...], num_joints: int
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[tuple[int, ...], ...]]:
    """Cached body of ``chain_tables`` (hashable arguments)."""
    parent = list(_parents(kinematic_chain, num_joints))
    chain_prev = list(parent)
    depth = [0] + [-1] * (num_joints - 1)
    for chain in kinematic_chain:
        chain_prev[chain[1]] = 0
        for a, b in zip(chain[:-1], chain[1:]):
            if depth[a] < 0:
                raise ConfigError(f"kinematic chain {chain}: starts at joint {a} before a chain reaches it")
            depth[b] = depth[a] + 1
    orphans = [j for j, d in enumerate(depth) if d < 0]
    if orphans:
        raise ConfigError(f"kinematic chain: joints {orphans} are on no chain")
    levels = tuple(tuple(j for j in range(num_joints) if depth[j] == d) for d in range(1, max(depth) + 1))
    return tuple(parent), tuple(chain_prev), levels


def chain_tables(
    kinematic_chain: Sequence[Sequence[int]], num_joints: int
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[tuple[int, ...], ...]]:
    """``(parent, chain_prev, levels)`` of a kinematic chain: ``chain_prev[j]`` is the joint whose global
    rotation j's local rotation is relative to (the root for the first joint of every chain); ``levels``
    lists the non-root joints by depth (a valid evaluation order for forward kinematics)."""
    return _chain_tables(tuple(tuple(int(j) for j in c) for c in kinematic_chain), num_joints)


@numpy_compatible
def forward_kinematics(
    local_quats: torch.Tensor,
    root_pos: torch.Tensor,
    offsets: torch.Tensor,
    kinematic_chain: Sequence[Sequence[int]],
) -> torch.Tensor:
    """Joint positions [..., J, 3] from local rotations [..., J, 4], root positions [..., 3] and bone
    vectors ``offsets`` [J, 3] or [..., J, 3]. ``local_quats[..., 0, :]`` is the root's global rotation;
    every chain starts from it (see the module docstring)."""
    local_quats, root_pos, offsets = _promote(local_quats, root_pos, offsets)
    parent, chain_prev, levels = chain_tables(kinematic_chain, local_quats.shape[-2])
    rots: list[torch.Tensor | None] = [local_quats[..., 0, :]] + [None] * (local_quats.shape[-2] - 1)
    pos: list[torch.Tensor | None] = [root_pos] + [None] * (local_quats.shape[-2] - 1)
    for level in levels:
        idx = list(level)
        prev_rot = torch.stack([rots[chain_prev[j]] for j in idx], dim=-2)
        rot = qmul(prev_rot, local_quats[..., idx, :])
        parent_pos = torch.stack([pos[parent[j]] for j in idx], dim=-2)
        new_pos = qrot(rot, offsets[..., idx, :]) + parent_pos
        for k, j in enumerate(idx):
            rots[j], pos[j] = rot[..., k, :], new_pos[..., k, :]
    return torch.stack(pos, dim=-2)


@numpy_compatible
def gaussian_smooth(x: torch.Tensor, sigma: float, dim: int = 0) -> torch.Tensor:
    """Gaussian filter along ``dim`` with edge replication, radius ``int(4 sigma + 0.5)`` (the settings of
    ``scipy.ndimage.gaussian_filter1d(..., mode='nearest')``)."""
    radius = int(4.0 * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    xm = x.movedim(dim, -1)
    flat = xm.reshape(-1, 1, xm.shape[-1])
    # edge replication by index clamping (works for any radius, also one longer than the sequence)
    idx = torch.arange(-radius, xm.shape[-1] + radius, device=x.device).clamp(0, xm.shape[-1] - 1)
    padded = flat[..., idx]
    out = torch.nn.functional.conv1d(padded, kernel.view(1, 1, -1))
    return out.reshape(xm.shape).movedim(-1, dim)


@numpy_compatible
def facing_direction(
    joints: torch.Tensor, face_joints: Sequence[int], hip_sign: float = 1.0, smooth_sigma: float = 0.0
) -> torch.Tensor:
    """Unit horizontal forward directions [..., T, 3] of poses [..., T, J, 3].

    ``across = normalise(hip_sign * (j[f0] - j[f1]) + (j[f2] - j[f3]))`` with ``face_joints = (f0..f3)``,
    ``forward = normalise(smooth(up x across))``, smoothed over time (dim -2) when ``smooth_sigma > 0``.
    ``hip_sign=+1`` is the reference's initial-facing formula; its inverse kinematics unpacks the same
    indices in another order, which amounts to ``hip_sign=-1``. We keep both: the dataset's rotations and
    facing frames depend on them.
    """
    f0, f1, f2, f3 = face_joints
    across = hip_sign * (joints[..., f0, :] - joints[..., f1, :]) + (joints[..., f2, :] - joints[..., f3, :])
    across = across / torch.linalg.vector_norm(across, dim=-1, keepdim=True)
    forward = _cross(across.new_tensor([0.0, 1.0, 0.0]), across)
    if smooth_sigma > 0:
        forward = gaussian_smooth(forward, smooth_sigma, dim=-2)
    return forward / torch.linalg.vector_norm(forward, dim=-1, keepdim=True)


@numpy_compatible
def inverse_kinematics(
    joints: torch.Tensor,
    raw_offsets: torch.Tensor,
    kinematic_chain: Sequence[Sequence[int]],
    face_joints: Sequence[int],
    smooth_sigma: float = 0.0,
    first_root_identity: bool = False,
) -> torch.Tensor:
    """Local rotations [..., T, J, 4] of poses ``joints`` [..., T, J, 3] (the reference's
    ``inverse_kinematics_np``).

    The root rotation turns the facing direction (see ``facing_direction``, ``hip_sign=-1``; Gaussian-
    smoothed over time when ``smooth_sigma > 0``) onto +Z; with ``first_root_identity`` the root rotation of
    frame 0 is the identity instead (as in the script that produced the released HumanML3D features: their
    frame-0 rows are only reproduced with it). Every other joint's rotation is the minimal rotation taking
    its raw offset onto its bone direction, relative to the previous joint of its chain. Forward kinematics
    with any bone lengths reproduces the bone directions exactly.
    """
    joints, raw_offsets = _promote(joints, raw_offsets)
    forward = facing_direction(joints, face_joints, hip_sign=-1.0, smooth_sigma=smooth_sigma)
    root_quat = qbetween(forward, forward.new_tensor([0.0, 0.0, 1.0]))
    if first_root_identity:
        identity = root_quat.new_tensor([1.0, 0.0, 0.0, 0.0]).expand_as(root_quat[..., :1, :])
        root_quat = torch.cat([identity, root_quat[..., 1:, :]], dim=-2)
    parent, chain_prev, _ = chain_tables(kinematic_chain, joints.shape[-2])
    direction = joints[..., 1:, :] - joints[..., list(parent[1:]), :]
    bone_rot = qbetween(raw_offsets[1:].expand_as(direction), direction)
    global_rot = torch.cat([root_quat[..., None, :], bone_rot], dim=-2)
    local = qmul(qinv(global_rot[..., list(chain_prev[1:]), :]), bone_rot)
    return torch.cat([root_quat[..., None, :], local], dim=-2)
