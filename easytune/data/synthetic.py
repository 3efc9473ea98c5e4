"""Procedural text-motion data on the SMPL 22-joint skeleton, written in the HumanML3D on-disk layout.

A clip is built in three steps (docs/synthetic.md has the full description):

1. *channels*: a few named joint angles per frame (hip flexion, knee flexion, torso lean, shoulder
   abduction, ...) produced by one of the action families below (a gait generator for walking, running,
   turning and circling; keyframes with smooth interpolation for jumps, squats, kicks, waves, ...), plus the
   heading change per frame, a vertical lift (jump flight) and a root mode per frame (contact, flight with
   an explicit velocity, or running's coasting between stances);
2. *pose*: channels -> local rotations -> ``skeleton.forward_kinematics`` on a natural rest pose with the
   HumanML3D bone lengths;
3. *placement*: the root height puts the lowest foot joint on the floor (y = 0) and the root moves so that
   the feet in contact stay where they are (no foot skating), except in flight.

Families: walk, run, jump, wave (left/right arm), turn (left/right), sit down, squat, kick (left/right
leg), raise arms, walk backwards, walk in a circle, stand, and two-action compositions. Every clip has three
paraphrased captions naming side, speed and direction; ``M<id>`` copies are mirrored (x negated, left and
right joints swapped, "left"/"right" and "clockwise"/"counterclockwise" swapped in the captions).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from easytune.data.skeleton import HUMANML, SMPL_BONE_LENGTHS, forward_kinematics, qmul
from easytune.errors import ConfigError
from easytune.progress import progress

__all__ = [
    "FAMILIES",
    "COMPOSITIONS",
    "SyntheticClip",
    "sample_clip",
    "mirror_joints",
    "mirror_caption",
    "mirror_features",
    "pos_tag",
    "clip_families",
    "generate_dataset",
]

FPS = 20.0
MIN_FRAMES = 41  # joint frames; the features have one frame fewer: 40..196 (HumanML3D keeps 40..199)
MAX_FRAMES = 197
DEG = np.pi / 180.0
GRAVITY = 9.81

(PELVIS, L_HIP, R_HIP, SPINE1, L_KNEE, R_KNEE, SPINE2, L_ANKLE, R_ANKLE, SPINE3, L_FOOT, R_FOOT, NECK,
 L_COLLAR, R_COLLAR, HEAD, L_SHOULDER, R_SHOULDER, L_ELBOW, R_ELBOW, *_) = range(22)  # fmt: skip
FEET = (L_ANKLE, R_ANKLE, L_FOOT, R_FOOT)

# Rest-pose bone directions (joint minus parent) in the body frame: x = left, y = up, z = forward. Standing
# upright, arms hanging at the sides, toes slightly out; lengths are the HumanML3D target skeleton's.
_REST_DIRECTIONS = np.array(
    [
        [0, 0, 0],
        [0.58, -0.8, -0.1],
        [-0.58, -0.8, -0.1],
        [0, 0.97, -0.2],
        [0.08, -1, 0],
        [-0.08, -1, 0],
        [0, 1, 0.08],
        [-0.02, -1, -0.04],
        [0.02, -1, -0.04],
        [0, 0.9, 0.4],
        [0.3, -0.4, 0.87],
        [-0.3, -0.4, 0.87],
        [0, 1, -0.12],
        [0.55, 0.83, -0.1],
        [-0.55, 0.83, -0.1],
        [0, 0.9, 0.4],
        [0.94, 0.33, -0.05],
        [-0.94, 0.33, -0.05],
        [0.12, -1, -0.03],
        [-0.12, -1, -0.03],
        [0.04, -1, 0.12],
        [-0.04, -1, 0.12],
    ],
    dtype=np.float64,
)
_norm = np.linalg.norm(_REST_DIRECTIONS, axis=1, keepdims=True)
REST_OFFSETS = _REST_DIRECTIONS / np.where(_norm > 0, _norm, 1.0) * SMPL_BONE_LENGTHS[:, None]
_PARENTS = np.array([max(p, 0) for p in HUMANML.parents])

# ------------------------------------------------------------------------------------------- channels
_SIDED = ("hip_flex", "hip_abd", "knee", "ankle", "collar", "sh_flex", "sh_abd", "elbow", "elbow_z")
CHANNELS: tuple[str, ...] = (
    "pelvis_pitch",
    "pelvis_yaw",
    "pelvis_roll",
    "lean",
    "twist",
    "side",
    "neck_pitch",
    "neck_yaw",
    *(f"{name}_{s}" for s in "lr" for name in _SIDED),
)
CH = {name: i for i, name in enumerate(CHANNELS)}
# Rest posture added to every frame: elbows slightly bent, arms slightly away from the body.
_BASE = np.zeros(len(CHANNELS))
for _s in "lr":
    _BASE[CH[f"elbow_{_s}"]] = 12 * DEG
    _BASE[CH[f"sh_abd_{_s}"]] = 6 * DEG


def _channels_to_angles(ch: np.ndarray) -> np.ndarray:
    """Channels [T, C] -> Euler angles [T, 22, 3] (x, y, z) of the rotation *at* each joint (radians).

    Signs: flexion brings a limb forward, abduction moves it away from the midline (z flips with the side),
    torso ``lean`` > 0 bends forward, ``pelvis_yaw``/``neck_yaw``/``twist`` > 0 turn to the left.
    """
    a = np.zeros((ch.shape[0], 22, 3))
    c = {name: ch[:, i] for name, i in CH.items()}
    a[:, PELVIS] = np.stack([c["pelvis_pitch"], c["pelvis_yaw"], c["pelvis_roll"]], -1)
    for joint, share in ((SPINE1, 0.4), (SPINE2, 0.3), (SPINE3, 0.3)):
        a[:, joint] = share * np.stack([c["lean"], c["twist"], -c["side"]], -1)
    a[:, NECK, 0] = c["neck_pitch"]
    a[:, NECK, 1] = c["neck_yaw"]
    for s, sign, hip, knee, ankle, collar, shoulder, elbow in (
        ("l", 1.0, L_HIP, L_KNEE, L_ANKLE, L_COLLAR, L_SHOULDER, L_ELBOW),
        ("r", -1.0, R_HIP, R_KNEE, R_ANKLE, R_COLLAR, R_SHOULDER, R_ELBOW),
    ):
        a[:, hip, 0] = -c[f"hip_flex_{s}"]
        a[:, hip, 2] = sign * c[f"hip_abd_{s}"]
        a[:, knee, 0] = c[f"knee_{s}"]
        a[:, ankle, 0] = -c[f"ankle_{s}"]
        a[:, collar, 2] = sign * c[f"collar_{s}"]
        a[:, shoulder, 0] = -c[f"sh_flex_{s}"]
        a[:, shoulder, 2] = sign * c[f"sh_abd_{s}"]
        a[:, elbow, 0] = -c[f"elbow_{s}"]
        a[:, elbow, 2] = sign * c[f"elbow_z_{s}"]
    return a


def _axis_quats(angles: np.ndarray, axis: int) -> np.ndarray:
    q = np.zeros(angles.shape + (4,))
    q[..., 0] = np.cos(0.5 * angles)
    q[..., 1 + axis] = np.sin(0.5 * angles)
    return q


def _euler_to_quat(angles: np.ndarray) -> np.ndarray:
    """[..., 3] (x, y, z) -> quaternions [..., 4] of ``Ry @ Rz @ Rx`` (flex, then abduct, then twist)."""
    return qmul(
        _axis_quats(angles[..., 1], 1), qmul(_axis_quats(angles[..., 2], 2), _axis_quats(angles[..., 0], 0))
    )


def pose_joints(ch: np.ndarray, heading: np.ndarray) -> np.ndarray:
    """Joint positions [T, 22, 3] (root at the origin) of channels [T, C] and heading yaw [T] (radians)."""
    rot = _euler_to_quat(_channels_to_angles(ch))  # rotation at each joint [T, 22, 4]
    # skeleton.forward_kinematics rotates bone j by the product along its chain of local[j]; along our anatomy
    # that is the rotation at j's parent, except bones leaving the root (rotated by the root alone) and the
    # collars, whose chain restarts at the root and must carry the three spine rotations.
    local = rot[:, _PARENTS].copy()
    local[:, [L_HIP, R_HIP, SPINE1]] = (1.0, 0.0, 0.0, 0.0)
    spine = qmul(qmul(rot[:, SPINE1], rot[:, SPINE2]), rot[:, SPINE3])
    local[:, L_COLLAR] = spine
    local[:, R_COLLAR] = spine
    local[:, PELVIS] = qmul(_axis_quats(heading, 1), rot[:, PELVIS])
    return forward_kinematics(local, np.zeros((len(ch), 3)), REST_OFFSETS, HUMANML.kinematic_chain)


CONTACT, FLIGHT, COAST = 0, 1, 2  # per-frame root modes (see _place)


def _place(
    local: np.ndarray, heading: np.ndarray, lift: np.ndarray, mode: np.ndarray, glide: np.ndarray
) -> np.ndarray:
    """Put posed joints [T, 22, 3] (root at the origin) into the world.

    ``CONTACT`` frames: the lowest foot joint touches y = 0 (plus ``lift``) and the root moves so that the
    feet near the floor (soft-min weights over the four foot joints) keep their place. Airborne frames take
    their contact height from the surrounding contact frames (linear) plus ``lift``; ``FLIGHT`` frames move
    the root by ``glide`` [T, 2] (metres per frame in the heading frame, x = left, z = forward), ``COAST``
    frames (running) keep the velocity of the last contact frame.
    """
    n = len(local)
    feet = local[:, FEET]
    height = feet[..., 1]
    low = height.min(axis=1)
    base = -low
    air = mode != CONTACT
    idx = np.arange(n)
    if air.any():
        prev = np.maximum.accumulate(np.where(air, -1, idx))
        nxt = np.minimum.accumulate(np.where(air, n, idx)[::-1])[::-1]
        prev = np.where(prev < 0, nxt, prev)
        nxt = np.where(nxt >= n, prev, nxt)
        prev, nxt = np.clip(prev, 0, n - 1), np.clip(nxt, 0, n - 1)
        u = (idx - prev) / np.maximum(nxt - prev, 1)
        # interpolated contact height, but never a foot below the floor
        base = np.where(air, np.maximum((1 - u) * base[prev] + u * base[nxt], base), base)
    weights = np.exp(-(height - low[:, None]) / 0.004)
    weights /= weights.sum(axis=1, keepdims=True)
    step = np.einsum("tj,tjk->tk", weights[1:], feet[:-1][..., [0, 2]] - feet[1:][..., [0, 2]])
    coast = mode[1:] == COAST
    if coast.any():
        last = np.maximum.accumulate(np.where(coast, -1, idx[:-1]))
        step = np.where(coast[:, None], step[np.maximum(last, 0)], step)
    sin, cos = np.sin(heading[1:]), np.cos(heading[1:])
    gx, gz = glide[1:, 0], glide[1:, 1]
    flight = np.stack([gx * cos + gz * sin, -gx * sin + gz * cos], -1)
    step = np.where((mode[1:] == FLIGHT)[:, None], flight, step)
    xz = np.concatenate([np.zeros((1, 2)), np.cumsum(step, axis=0)])
    root = np.stack([xz[:, 0], base + lift, xz[:, 1]], -1)
    return local + root[:, None, :]


# ---------------------------------------------------------------------------------------------- tracks
@dataclass
class Track:
    """Per-frame controls of a motion segment: ``ch`` channels [n, C] (radians), ``turn`` heading change per
    frame [n] (radians, > 0 = to the left), ``lift`` [n] metres above foot contact, ``mode`` [n] int8 root
    mode (CONTACT / FLIGHT / COAST, see ``_place``), ``glide`` [n, 2] root velocity in flight (metres/frame,
    heading frame)."""

    ch: np.ndarray
    turn: np.ndarray
    lift: np.ndarray
    mode: np.ndarray
    glide: np.ndarray

    @staticmethod
    def empty(n: int) -> Track:
        return Track(
            np.zeros((n, len(CHANNELS))), np.zeros(n), np.zeros(n), np.zeros(n, np.int8), np.zeros((n, 2))
        )

    def __len__(self) -> int:
        return len(self.ch)

    def set(self, name: str, values: np.ndarray | float) -> None:
        self.ch[:, CH[name]] = values

    def add(self, name: str, values: np.ndarray | float) -> None:
        self.ch[:, CH[name]] += values

    def get(self, name: str) -> np.ndarray:
        return self.ch[:, CH[name]]

    @staticmethod
    def concat(tracks: list[Track]) -> Track:
        return Track(
            *(
                np.concatenate([getattr(t, f) for t in tracks])
                for f in ("ch", "turn", "lift", "mode", "glide")
            )
        )


def _smooth(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _envelope(n: int, up: float, down: float) -> np.ndarray:
    """1 in the middle, smooth ramps of ``up`` / ``down`` frames, 0 at the first and last frame."""
    t = np.arange(n, dtype=np.float64)
    return _smooth(t / max(up, 1.0)) * _smooth((n - 1 - t) / max(down, 1.0))


def _keyframes(keys: list[tuple[float, dict[str, float]]]) -> Track:
    """A track through channel keyframes ``(frame, {channel: degrees})`` (missing channels are 0), smoothstep
    interpolation between consecutive keys; the track ends at the last key's frame."""
    frames = np.array([k for k, _ in keys], dtype=np.float64)
    if np.any(np.diff(frames) <= 0):
        raise ValueError(f"keyframes must be strictly increasing, got {frames.tolist()}")
    values = np.zeros((len(keys), len(CHANNELS)))
    for i, (_, pose) in enumerate(keys):
        for name, deg in pose.items():
            values[i, CH[name]] = deg * DEG
    n = int(round(frames[-1])) + 1
    t = np.arange(n, dtype=np.float64)
    seg = np.clip(np.searchsorted(frames, t, side="right") - 1, 0, len(keys) - 2)
    u = _smooth((t - frames[seg]) / (frames[seg + 1] - frames[seg]))[:, None]
    track = Track.empty(n)
    track.ch = (1 - u) * values[seg] + u * values[seg + 1]
    return track


def _both(**channels: float) -> dict[str, float]:
    """Expand sided channel names to both sides: ``_both(knee=30)`` -> knee_l = knee_r = 30."""
    return {f"{k}_{s}": v for k, v in channels.items() for s in "lr"}


def _flat_foot(track: Track, side: str, extra: np.ndarray | float = 0.0, limit: float = 28 * DEG) -> None:
    """Ankle angle that keeps the foot parallel to the floor (soft-limited to +-``limit``), plus ``extra``."""
    flat = track.get("pelvis_pitch") - track.get(f"hip_flex_{side}") + track.get(f"knee_{side}")
    track.set(f"ankle_{side}", limit * np.tanh(flat / limit) + extra)


def _gait(
    n: int,
    rng: np.random.Generator,
    *,
    stride_hz: float,
    hip_amp: float,
    knee_swing: float,
    duty: float = 0.6,
    knee_stance: float = 4.0,
    knee_load: float = 6.0,
    backwards: bool = False,
    turn_total: float = 0.0,
    turn_rate: float = 0.0,
    lean: float = 2.0,
    arm_amp: float = 15.0,
    elbow: float = 10.0,
    march: float = 0.0,
    ramp: float = 12.0,
) -> Track:
    """Cyclic locomotion of ``n`` frames (angles in degrees).

    Each leg: stance for a ``duty`` fraction of the stride (hip flexion falls linearly from +hip_amp to
    -hip_amp, so the planted foot moves at a constant speed under the body; knee ``knee_load`` bump), then
    swing (cubic Hermite back to +hip_amp whose end velocities match the stance, so the foot lands and lifts
    without sliding; knee ``knee_swing`` bump; ``march`` adds hip flexion for stepping in place). With
    ``duty`` < 0.5 both feet are off the floor between stances (running: COAST frames). ``backwards`` plays
    the stride in reverse. ``turn_total`` (degrees) is spread over the clip with a smooth profile,
    ``turn_rate`` (degrees/s) is a constant turn scaled by the start/stop envelope.
    """
    t = np.arange(n) / FPS
    env = _envelope(n, ramp, ramp)
    cycle = stride_hz * t * (-1.0 if backwards else 1.0) + rng.uniform(0.0, 1.0)
    tr = Track.empty(n)
    slope = -2.0 * (1.0 - duty) / duty  # stance hip velocity in units of the swing phase
    swing_legs = np.zeros(n, dtype=int)
    phase = 2 * np.pi * np.mod(cycle, 1.0)  # of the left leg
    for s, offset in (("l", 0.0), ("r", 0.5)):
        u = np.mod(cycle + offset, 1.0)
        stance = u < duty
        w = np.where(stance, u / duty, (u - duty) / (1.0 - duty))
        hermite = (
            -(2 * w**3 - 3 * w**2 + 1)
            + slope * (w**3 - 2 * w**2 + w)
            + (-2 * w**3 + 3 * w**2)
            + slope * (w**3 - w**2)
        )
        hip = np.where(stance, 1.0 - 2.0 * w, hermite)
        bump = np.where(stance, 0.0, np.sin(np.pi * w ** (1.2 if backwards else 0.85)))
        load = np.where(stance, np.sin(np.pi * w), 0.0)
        swing_legs += ~stance
        tr.set(f"hip_flex_{s}", env * (hip_amp * (hip + 0.1) + march * bump) * DEG)
        tr.set(f"knee_{s}", env * (knee_stance + knee_load * load + knee_swing * bump) * DEG)
        tr.set(f"hip_abd_{s}", env * 2.0 * DEG)
        heel = 0.0 if backwards else np.where(stance, -22 * np.clip((w - 0.7) / 0.3, 0, 1) ** 2, 15 * bump)
        _flat_foot(tr, s, env * heel * DEG)
        # arms swing opposite to the leg of the same side
        tr.set(f"sh_flex_{s}", -env * arm_amp * hip * DEG)
        tr.set(f"sh_abd_{s}", env * 4.0 * DEG)
        tr.set(f"elbow_{s}", env * (elbow + 0.2 * arm_amp * (1 - hip)) * DEG)
    tr.set("pelvis_pitch", env * 0.2 * lean * DEG)
    tr.set("pelvis_yaw", -env * 0.2 * hip_amp * np.cos(phase) * DEG)
    tr.set("twist", env * 0.3 * hip_amp * np.cos(phase) * DEG)
    tr.set("lean", env * lean * DEG)
    tr.set("neck_pitch", env * 0.3 * lean * DEG)
    tr.mode[(swing_legs == 2) & (env > 0.3)] = COAST
    if turn_total:
        profile = _smooth((np.arange(n) - ramp * 0.5) / max(n - ramp, 1.0))
        tr.turn = np.diff(profile, prepend=0.0) * turn_total * DEG
    tr.turn = tr.turn + env * turn_rate * DEG / FPS
    return tr


def _idle(n: int, rng: np.random.Generator, amount: float = 1.0) -> Track:
    """Standing with a little sway and breathing."""
    tr = Track.empty(n)
    t = np.arange(n) / FPS
    f = rng.uniform(0.15, 0.35)
    ph = rng.uniform(0, 2 * np.pi)
    env = _envelope(n, 6, 6)
    tr.set("pelvis_roll", env * amount * 1.5 * np.sin(2 * np.pi * f * t + ph) * DEG)
    tr.set("lean", env * amount * (1.0 + 1.0 * np.sin(2 * np.pi * 0.3 * t + ph)) * DEG)
    tr.set("neck_pitch", env * amount * 2.0 * np.sin(2 * np.pi * 0.2 * t) * DEG)
    return tr


# --------------------------------------------------------------------------------------------- families
@dataclass
class Action:
    """A segment's controls and three paraphrased verb phrases (no subject, present tense)."""

    track: Track
    phrases: list[str]


def _pick(rng: np.random.Generator, options: list) -> object:
    return options[int(rng.integers(len(options)))]


def _three(rng: np.random.Generator, *lists: list[str]) -> list[str]:
    """Three phrases: element ``(i + offset_k) % len`` of each list (offsets random), joined by spaces."""
    offsets = [int(rng.integers(len(options))) for options in lists]
    return [" ".join(filter(None, (o[(i + k) % len(o)] for o, k in zip(lists, offsets)))) for i in range(3)]


_SPEED = {
    "slow": ["slowly", "at a slow pace", "in a relaxed way"],
    "normal": ["at a normal pace", "at a steady pace", "at a moderate speed"],
    "fast": ["quickly", "at a fast pace", "briskly"],
}
_COUNT = {
    1: ["once", "one time", "a single time"],
    2: ["twice", "two times", "twice"],
    3: ["three times", "three times", "three times"],
    4: ["four times", "four times", "four times"],
}


def _walk(rng: np.random.Generator, n: int) -> Action:
    speed = _pick(rng, ["slow", "normal", "fast"])
    stride, hip = {"slow": (0.75, 19.0), "normal": (0.92, 24.0), "fast": (1.08, 29.0)}[speed]
    path = _pick(rng, ["straight", "straight", "left", "right"])
    rate = {"straight": 0.0, "left": 1.0, "right": -1.0}[path] * rng.uniform(18, 30)
    track = _gait(
        n,
        rng,
        stride_hz=stride * rng.uniform(0.95, 1.05),
        hip_amp=hip * rng.uniform(0.9, 1.1),
        knee_swing=rng.uniform(50, 60),
        turn_rate=rate,
        arm_amp=hip * 0.8,
        lean=3.0,
    )
    direction = {
        "straight": ["forward", "straight ahead", "forwards in a straight line"],
        "left": [
            "forward while curving to the left",
            "forward and veers to the left",
            "along a path bending left",
        ],
        "right": [
            "forward while curving to the right",
            "forward and veers to the right",
            "along a path bending right",
        ],
    }[path]
    return Action(track, _three(rng, ["walks", "walks", "steps"], direction, _SPEED[speed]))


def _run(rng: np.random.Generator, n: int) -> Action:
    speed = _pick(rng, ["slow", "fast"])
    stride, hip = (1.25, 30.0) if speed == "slow" else (1.45, 38.0)
    path = _pick(rng, ["straight", "straight", "left", "right"])
    rate = {"straight": 0.0, "left": 1.0, "right": -1.0}[path] * rng.uniform(25, 40)
    track = _gait(
        n,
        rng,
        stride_hz=stride * rng.uniform(0.95, 1.05),
        hip_amp=hip * rng.uniform(0.92, 1.08),
        knee_swing=rng.uniform(85, 100),
        knee_stance=10.0,
        knee_load=25.0,
        duty=0.38,
        turn_rate=rate,
        arm_amp=0.8 * hip,
        elbow=65.0,
        lean=10.0 if speed == "slow" else 16.0,
        ramp=10,
    )
    verbs = ["jogs", "jogs", "runs slowly"] if speed == "slow" else ["runs", "sprints", "runs"]
    speeds = ["lightly", "at an easy pace", "at a slow pace"] if speed == "slow" else _SPEED["fast"]
    direction = {
        "straight": ["forward", "straight ahead", "forwards"],
        "left": ["forward while curving to the left", "in an arc to the left", "forward and veers left"],
        "right": ["forward while curving to the right", "in an arc to the right", "forward and veers right"],
    }[path]
    return Action(track, _three(rng, verbs, direction, speeds))


def _walk_backwards(rng: np.random.Generator, n: int) -> Action:
    speed = _pick(rng, ["slow", "normal"])
    stride, hip = (0.65, 12.0) if speed == "slow" else (0.85, 17.0)
    track = _gait(
        n,
        rng,
        stride_hz=stride * rng.uniform(0.95, 1.05),
        hip_amp=hip * rng.uniform(0.9, 1.1),
        knee_swing=rng.uniform(45, 55),
        backwards=True,
        arm_amp=8.0,
        lean=-1.0,
    )
    return Action(track, _three(rng, ["walks backwards", "steps backward", "moves backwards"], _SPEED[speed]))


def _circle(rng: np.random.Generator, n: int) -> Action:
    left = bool(rng.integers(2))
    speed = _pick(rng, ["slow", "normal"])
    stride, hip = (0.75, 15.0) if speed == "slow" else (0.92, 20.0)
    rate = (1 if left else -1) * 360.0 / ((n - 12) / FPS)  # about one full circle
    track = _gait(
        n,
        rng,
        stride_hz=stride,
        hip_amp=hip * rng.uniform(0.9, 1.1),
        knee_swing=rng.uniform(50, 58),
        turn_rate=rate,
        arm_amp=hip * 0.7,
        lean=3.0,
    )
    rot = "counterclockwise" if left else "clockwise"
    side = "left" if left else "right"
    shapes = [f"in a {rot} circle", f"in a circle turning {side}", f"around in a circle {rot}"]
    return Action(track, _three(rng, ["walks", "walks", "walks"], shapes, _SPEED[speed]))


def _turn(rng: np.random.Generator, n: int) -> Action:
    left = bool(rng.integers(2))
    angle = _pick(rng, [90.0, 180.0])
    track = _gait(
        n,
        rng,
        stride_hz=rng.uniform(0.9, 1.1),
        hip_amp=0.0,
        march=15.0,
        knee_swing=rng.uniform(30, 40),
        turn_total=(1 if left else -1) * angle * rng.uniform(0.95, 1.05),
        arm_amp=4.0,
        ramp=8,
    )
    side = "left" if left else "right"
    speed = "slow" if n / FPS > (2.6 if angle == 90 else 3.4) else "fast"
    if angle == 90:
        what = [
            f"turns to the {side}",
            f"turns ninety degrees to the {side}",
            f"makes a quarter turn to the {side}",
        ]
    else:
        what = [
            f"turns around to the {side}",
            f"turns around over the {side} shoulder",
            f"spins half a turn to the {side}",
        ]
    return Action(
        track, _three(rng, what, ["slowly", "slowly", "gradually"] if speed == "slow" else _SPEED["fast"])
    )


def _jump(rng: np.random.Generator) -> Action:
    count = int(rng.integers(1, 4))
    forward = bool(rng.integers(2))
    high = bool(rng.integers(2))
    parts = []
    for _ in range(count):
        h = rng.uniform(0.3, 0.42) if high else rng.uniform(0.12, 0.2)
        flight = max(5, int(round(FPS * 2 * np.sqrt(2 * h / GRAVITY))))
        crouch = rng.uniform(50, 65) if high else rng.uniform(35, 45)
        down, push = int(rng.integers(6, 9)), 3
        t0 = down + push
        keys = [
            (0, {}),
            (down, {**_both(hip_flex=crouch, knee=crouch * 1.45, sh_flex=-40), "lean": crouch * 0.55}),
            (t0, {**_both(hip_flex=0, knee=4, ankle=-30, sh_flex=110 if high else 60)}),
            (t0 + flight / 2, {**_both(hip_flex=25, knee=40, ankle=-10, sh_flex=90 if high else 40)}),
            (t0 + flight, {**_both(hip_flex=8, knee=12, ankle=-20, sh_flex=50 if high else 30)}),
            (
                t0 + flight + 5,
                {**_both(hip_flex=crouch * 0.8, knee=crouch * 1.2, sh_flex=30), "lean": crouch * 0.4},
            ),
            (t0 + flight + 5 + int(rng.integers(8, 12)), {}),
        ]
        tr = _keyframes(keys)
        for s in "lr":
            extra = tr.get(f"ankle_{s}").copy()
            _flat_foot(tr, s, extra)
        fl = np.zeros(len(tr), bool)
        fl[t0 + 1 : t0 + flight] = True
        u = (np.arange(len(tr)) - t0) / flight
        tr.lift = np.where(fl, 4 * h * u * (1 - u), 0.0)
        tr.mode[fl] = FLIGHT
        if forward:
            tr.glide[fl, 1] = rng.uniform(0.35, 0.7) / flight
        parts.append(tr)
    track = Track.concat(parts)
    if forward:
        verbs = ["jumps forward", "leaps forward", "hops forward"]
    else:
        verbs = ["jumps up and down", "jumps in place", "hops in place"]
    height = ["high", "high", "up high"] if high else ["", "a little", "low"]
    return Action(track, _three(rng, verbs, height, _COUNT[count]))


def _wave(rng: np.random.Generator) -> Action:
    s = _pick(rng, ["l", "r"])
    side = "left" if s == "l" else "right"
    raise_t, lower_t = int(rng.integers(8, 14)), int(rng.integers(9, 14))
    hz = rng.uniform(1.4, 2.6)
    cycles = int(rng.integers(2, 6))
    hold = int(round(cycles * FPS / hz))
    abd = rng.uniform(80, 100)
    up = {
        f"sh_abd_{s}": abd,
        f"sh_flex_{s}": rng.uniform(10, 25),
        f"elbow_z_{s}": 165 - abd,
        f"elbow_{s}": 10,
        f"collar_{s}": 8,
        "side": -4 if s == "l" else 4,
    }
    tr = _keyframes([(0, {}), (raise_t, up), (raise_t + hold, up), (raise_t + hold + lower_t, {})])
    t = np.arange(len(tr))
    osc = _envelope(len(tr), raise_t, lower_t) * np.sin(
        2 * np.pi * hz * np.maximum(t - raise_t * 0.6, 0) / FPS
    )
    tr.add(f"elbow_z_{s}", rng.uniform(22, 32) * DEG * osc)
    speed = ["quickly", "energetically", "rapidly"] if hz > 2.0 else ["slowly", "gently", "calmly"]
    what = [f"waves with the {side} hand", f"raises the {side} arm and waves", f"waves the {side} hand"]
    return Action(tr, _three(rng, what, speed))


def _kick(rng: np.random.Generator) -> Action:
    s = _pick(rng, ["l", "r"])
    o = "r" if s == "l" else "l"
    side = "left" if s == "l" else "right"
    count = int(rng.integers(1, 3))
    high = bool(rng.integers(2))
    parts = []
    for _ in range(count):
        lift_t, ext_t, back_t, down_t = (
            int(rng.integers(a, b)) for a, b in ((6, 10), (3, 5), (3, 6), (6, 10))
        )
        hip = rng.uniform(75, 95) if high else rng.uniform(45, 60)
        stance = {f"knee_{o}": 12, f"hip_flex_{o}": 6, **_both(sh_abd=30, elbow=30), "lean": -8}
        chamber = {**stance, f"hip_flex_{s}": hip * 0.8, f"knee_{s}": 100, f"ankle_{s}": -10}
        extend = {**stance, f"hip_flex_{s}": hip, f"knee_{s}": 6, f"ankle_{s}": -30, "lean": -12}
        t1 = lift_t + ext_t
        tr = _keyframes(
            [(0, {}), (lift_t, chamber), (t1, extend), (t1 + back_t, chamber), (t1 + back_t + down_t, {})]
        )
        ext = tr.get(f"ankle_{s}").copy()
        _flat_foot(tr, o)
        tr.set(f"ankle_{s}", ext)
        parts.append(tr)
    tr = Track.concat(parts)
    speed = "quickly" if sum(len(p) for p in parts) / count < 24 else "slowly"
    height = "high" if high else "low"
    what = [
        f"does a {height} kick with the {side} leg",
        f"kicks {height} with the {side} foot",
        f"kicks forward {speed} with the {side} leg",
    ]
    return Action(tr, _three(rng, what, _COUNT[count]))


def _sit(rng: np.random.Generator) -> Action:
    down = int(rng.integers(18, 34))
    slow = down > 26
    stand_up = bool(rng.integers(2))
    hold = int(rng.integers(15, 35))
    seated = {**_both(hip_flex=88, knee=88, sh_flex=8), "lean": 12}
    mid = {**_both(hip_flex=55, knee=50, sh_flex=35), "lean": 38}
    keys = [(0, {}), (down * 0.5, mid), (down, seated), (down + hold, seated)]
    if stand_up:
        up = int(rng.integers(18, 30))
        keys += [(down + hold + up * 0.5, mid), (down + hold + up, {})]
    tr = _keyframes(keys)
    for s in "lr":
        _flat_foot(tr, s)
    what = ["sits down", "sits down on a chair", "lowers into a seated position"]
    speed = ["slowly", "carefully", "slowly"] if slow else ["quickly", "quickly", "fast"]
    phrases = _three(rng, what, speed)
    if stand_up:
        phrases = [
            p + a
            for p, a in zip(phrases, [" and stands back up", " and then gets up again", " and stands up"])
        ]
    return Action(tr, phrases)


def _squat(rng: np.random.Generator) -> Action:
    count = int(rng.integers(1, 4))
    deep = bool(rng.integers(2))
    period = int(rng.integers(16, 30))
    hip = rng.uniform(95, 110) if deep else rng.uniform(55, 70)
    bottom = {**_both(hip_flex=hip, knee=hip * 1.2, sh_flex=min(85.0, hip * 0.9)), "lean": hip * 0.35}
    keys: list[tuple[float, dict[str, float]]] = [(0, {})]
    for i in range(count):
        keys += [
            (i * period + period * 0.5, bottom),
            (i * period + period * 0.5 + 2, bottom),
            ((i + 1) * period, {}),
        ]
    tr = _keyframes(keys)
    for s in "lr":
        _flat_foot(tr, s, limit=35 * DEG)
    depth, adverb, kind = ("deep", "deeply", "deep") if deep else ("shallow", "slightly", "half")
    speed = "quickly" if period < 22 else "slowly"
    what = [
        f"does a {depth} squat" if count == 1 else f"does {depth} squats",
        f"squats down {adverb} and {speed}",
        f"bends the knees into a {kind} squat",
    ]
    return Action(tr, _three(rng, what, _COUNT[count]))


def _raise_arms(rng: np.random.Generator) -> Action:
    where = _pick(rng, ["up", "side", "front"])
    count = int(rng.integers(1, 3))
    pose = {
        "up": _both(sh_flex=rng.uniform(160, 172), sh_abd=8, elbow=5),
        "side": _both(sh_abd=rng.uniform(85, 95), elbow=5),
        "front": _both(sh_flex=rng.uniform(85, 95), elbow=3),
    }[where]
    fast = bool(rng.integers(2))
    rise_range = (6, 10) if fast else (12, 18)
    keys: list[tuple[float, dict[str, float]]] = [(0, {})]
    t = 0.0
    for _ in range(count):
        rise, hold, fall = (
            int(rng.integers(*rise_range)),
            int(rng.integers(8, 25)),
            int(rng.integers(*rise_range)),
        )
        keys += [(t + rise, pose), (t + rise + hold, pose), (t + rise + hold + fall, {})]
        t += rise + hold + fall + int(rng.integers(2, 6))
        keys.append((t, {}))
    tr = _keyframes(keys[:-1])
    what = {
        "up": [
            "raises both arms above the head",
            "lifts both arms overhead",
            "puts both hands up in the air",
        ],
        "side": [
            "raises both arms out to the sides",
            "lifts both arms sideways",
            "spreads both arms out to the sides",
        ],
        "front": [
            "raises both arms straight in front",
            "lifts both arms forward",
            "holds both arms out in front",
        ],
    }[where]
    speed = ["quickly", "fast", "rapidly"] if fast else ["slowly", "slowly", "gradually"]
    return Action(tr, _three(rng, what, speed, _COUNT[count] if count > 1 else ["", "", "once"]))


def _stand(rng: np.random.Generator, n: int) -> Action:
    tr = _idle(n, rng)
    if rng.integers(2):
        first = _pick(rng, [1.0, -1.0])
        yaw = rng.uniform(40, 60)
        q = (n - 1) / 5
        tr.ch += _keyframes(
            [
                (0, {}),
                (q, {"neck_yaw": first * yaw, "twist": first * 10}),
                (2 * q, {}),
                (3 * q, {"neck_yaw": -first * yaw, "twist": -first * 10}),
                (n - 1, {}),
            ]
        ).ch[:n]
        a, b = ("left", "right") if first > 0 else ("right", "left")
        what = [
            f"stands and looks to the {a} and then to the {b}",
            f"stands in place and looks {a} and {b}",
            f"stays standing while looking {a} then {b}",
        ]
        return Action(tr, what)
    return Action(
        tr,
        _three(rng, ["stands still", "stands in place", "stays standing"], ["", "without moving", "quietly"]),
    )


# Cyclic or static families: the caller draws the frame count from the range and passes it to the sampler.
_SIZED: dict[str, tuple[Callable[[np.random.Generator, int], Action], tuple[int, int]]] = {
    "walk": (_walk, (50, 160)),
    "run": (_run, (45, 110)),
    "walk_backwards": (_walk_backwards, (50, 130)),
    "walk_circle": (_circle, (140, 185)),
    "turn": (_turn, (36, 80)),
    "stand": (_stand, (41, 100)),
}
# Episodic families: the action's timing decides its length.
_EPISODIC: dict[str, Callable[[np.random.Generator], Action]] = {
    "jump": _jump,
    "wave": _wave,
    "kick": _kick,
    "sit": _sit,
    "squat": _squat,
    "raise_arms": _raise_arms,
}
FAMILIES: tuple[str, ...] = (*_SIZED, *_EPISODIC)
COMPOSITIONS: tuple[tuple[str, str], ...] = (
    ("walk", "jump"),
    ("walk", "turn"),
    ("walk", "sit"),
    ("walk", "wave"),
    ("walk", "kick"),
    ("run", "stand"),
    ("stand", "walk"),
    ("jump", "walk"),
    ("wave", "walk"),
    ("squat", "raise_arms"),
    ("kick", "walk_backwards"),
    ("turn", "walk"),
    ("walk_backwards", "jump"),
    ("raise_arms", "squat"),
    ("turn", "run"),
    ("jump", "wave"),
)


def _action(rng: np.random.Generator, family: str, n_max: int) -> Action:
    """A segment of ``family`` with at most ``n_max`` frames (episodic ones are redrawn until they fit)."""
    if family in _SIZED:
        sampler, (lo, hi) = _SIZED[family]
        if min(hi, n_max) < lo:
            raise ValueError(f"family {family!r} needs at least {lo} frames, {n_max} left")
        return sampler(rng, int(rng.integers(lo, min(hi, n_max) + 1)))
    for _ in range(1000):
        action = _EPISODIC[family](rng)
        if len(action.track) <= n_max:
            return action
    raise ValueError(f"family {family!r}: no draw fits in {n_max} frames")


_SUBJECTS = ["a person", "a man", "someone", "the person", "a woman", "a figure"]
_RESERVE = 60  # frames kept for the second action of a composition (>= every family's shortest draw)
_PLAN_STREAM, _SPLIT_STREAM = 7_000_001, 7_000_002  # extra seed words for the family plan and the split


@dataclass
class SyntheticClip:
    """``joints`` float32 [T, 22, 3] (metres, y up, floor at 0), three ``captions``, ``family`` name."""

    joints: np.ndarray
    captions: list[str]
    family: str


@dataclass
class _Plan:
    track: Track
    captions: list[str]
    family: str


def _plan(rng: np.random.Generator, family: str) -> _Plan:
    names = family.split("+")
    if len(names) > 2 or any(n not in FAMILIES for n in names):
        raise ConfigError(
            f"synthetic family {family!r}: expected one of {sorted(FAMILIES)} or two joined by '+'"
        )
    pre, post = int(rng.integers(0, 7)), int(rng.integers(0, 7))
    budget = MAX_FRAMES - pre - post
    if len(names) == 1:
        action = _action(rng, names[0], budget)
        phrases, tracks = action.phrases, [action.track]
    else:
        first = _action(rng, names[0], budget - _RESERVE)
        second = _action(rng, names[1], budget - len(first.track))
        tracks = [first.track, second.track]
        joins = ["{} and then {}", "{}, then {}", "first {} and afterwards {}"]
        k = int(rng.integers(3))
        phrases = [
            joins[(i + k) % 3].format(a, b) for i, (a, b) in enumerate(zip(first.phrases, second.phrases))
        ]
    body = sum(len(t) for t in tracks)
    post = max(post, MIN_FRAMES - body - pre)
    track = Track.concat([_idle(pre, rng, 0.5), *tracks, _idle(post, rng, 0.5)])
    subject = int(rng.integers(len(_SUBJECTS)))
    captions = [
        " ".join(f"{_SUBJECTS[(subject + i) % len(_SUBJECTS)]} {p}".split()) + "."
        for i, p in enumerate(phrases)
    ]
    return _Plan(track, captions, family)


def _realise(plans: list[_Plan]) -> list[np.ndarray]:
    """Joints float32 [T_i, 22, 3] of planned clips; one batched forward-kinematics call for all frames."""
    ch = np.concatenate([p.track.ch for p in plans]) + _BASE
    headings = [np.cumsum(p.track.turn) for p in plans]
    local = pose_joints(ch, np.concatenate(headings))
    bounds = np.cumsum([0] + [len(p.track) for p in plans])
    return [
        _place(local[a:b], h, p.track.lift, p.track.mode, p.track.glide).astype(np.float32)
        for p, h, a, b in zip(plans, headings, bounds[:-1], bounds[1:])
    ]


def sample_clip(rng: np.random.Generator, family: str) -> SyntheticClip:
    """One clip of ``family`` (a key of ``FAMILIES`` or two joined by "+", e.g. "walk+jump"); T 41..197."""
    plan = _plan(rng, family)
    return SyntheticClip(_realise([plan])[0], plan.captions, plan.family)


def clip_families(clips: int, seed: int) -> list[str]:
    """The family of each clip of a dataset: blocks of 15 clips hold the 12 families once and 3 compositions
    (20 %), shuffled within the block."""
    rng = np.random.default_rng([seed, _PLAN_STREAM])
    out: list[str] = []
    while len(out) < clips:
        block = list(FAMILIES) + [
            "+".join(COMPOSITIONS[int(rng.integers(len(COMPOSITIONS)))]) for _ in range(3)
        ]
        out += [block[i] for i in rng.permutation(len(block))]
    return out[:clips]


# --------------------------------------------------------------------------------- mirroring and text
_SWAP = {"left": "right", "right": "left", "clockwise": "counterclockwise", "counterclockwise": "clockwise"}


def mirror_joints(joints: np.ndarray) -> np.ndarray:
    """Mirror poses [..., 22, 3] through the x = 0 plane: negate x and swap left and right joints."""
    return joints[..., list(HUMANML.mirror), :] * np.array([-1.0, 1.0, 1.0], dtype=joints.dtype)


def mirror_caption(caption: str) -> str:
    """Swap "left" <-> "right" and "clockwise" <-> "counterclockwise" (whole words; capitals kept)."""

    def swap(m: re.Match) -> str:
        word = m.group(0)
        new = _SWAP[word.lower()]
        return new.capitalize() if word[0].isupper() else new

    return re.sub(r"\b(?:left|right|clockwise|counterclockwise)\b", swap, caption, flags=re.IGNORECASE)


def mirror_features(feats: np.ndarray) -> np.ndarray:
    """The HumanML3D features [T, 263] of the mirrored motion, computed from the features directly.

    Equal (to float rounding) to ``joints_to_features(mirror_joints(joints))`` because every step of the
    feature pipeline commutes with the reflection M = diag(-1, 1, 1) and the left/right swap: yaw velocity
    and x components change sign, joints are permuted, a local rotation R becomes M R M (6D columns
    c0 -> (c0x, -c0y, -c0z), c1 -> (-c1x, c1y, c1z)) and the left/right contact pairs swap.
    """
    from easytune.data.features import feature_slices

    perm = np.array(HUMANML.mirror)
    blocks = feature_slices(HUMANML.num_joints)
    n = len(feats)
    out = np.array(feats, copy=True)
    out[:, blocks["root_rot_vel"]] *= -1
    out[:, blocks["root_lin_vel"].start] *= -1
    for name, joints, size, signs in (
        ("ric", perm[1:] - 1, 3, (-1, 1, 1)),
        ("rot", perm[1:] - 1, 6, (1, -1, -1, -1, 1, 1)),
        ("local_vel", perm, 3, (-1, 1, 1)),
    ):
        block = feats[:, blocks[name]].reshape(n, -1, size)
        out[:, blocks[name]] = (block[:, joints] * np.array(signs, dtype=feats.dtype)).reshape(n, -1)
    out[:, blocks["contacts"]] = feats[:, blocks["contacts"]][:, [2, 3, 0, 1]]
    return out


# Universal POS tags of the generator's vocabulary (base forms; the first tag listed for a word wins).
_TAGGED_WORDS = """
DET a an the both
PRON someone
CCONJ and
ADP above along at in into on over to with without while
NUM one two three four ninety
ADJ clockwise counterclockwise deep easy fast half high left little low moderate normal relaxed right seated
    shallow single slow steady straight
ADV afterwards again ahead around back backward backwards briskly calmly carefully deeply down energetically
    first forward forwards gently gradually lightly once out overhead quickly quietly rapidly sideways
    slightly slowly still then twice up
NOUN air arc arm chair circle degree figure foot front hand head kick knee leg line man pace path person
    place position quarter shoulder side speed squat time turn way woman
VERB bend curve do get hold hop jog jump kick leap lift look lower make move put raise run sit spin spread
    sprint squat stand stay step turn veer walk wave
"""
_WORDS_BY_TAG: dict[str, set[str]] = {}
for _line in re.sub(r"\n\s+", " ", _TAGGED_WORDS).strip().splitlines():
    _tag, *_words = _line.split()
    _WORDS_BY_TAG[_tag] = set(_words)
_IRREGULAR = {"does": ("do", "VERB")}


def _lemma(word: str) -> tuple[str, str]:
    """(lemma, tag) of a lower-case word: the lexicon (first tag listed), -s / -ing forms of its verbs and
    nouns, then suffix rules (-ly adverb, -ing verb, else noun)."""
    for tag, words in _WORDS_BY_TAG.items():
        if word in words:
            return word, tag
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if word.endswith("s"):
        for tag in ("VERB", "NOUN"):
            if word[:-1] in _WORDS_BY_TAG[tag]:
                return word[:-1], tag
    if word.endswith("ing"):
        for base in (word[:-3], word[:-3] + "e"):
            if base in _WORDS_BY_TAG["VERB"]:
                return base, "VERB"
    return word, "ADV" if word.endswith("ly") else "VERB" if word.endswith("ing") else "NOUN"


def pos_tag(caption: str) -> list[str]:
    """HumanML3D-style ``lemma/POS`` tokens of a caption (punctuation dropped), from a small rule tagger:
    the generator's lexicon with its -s / -ing forms, suffix rules for other words, and a verb after a
    determiner or adjective read as a noun ("does shallow squats")."""
    out: list[str] = []
    previous = ""
    for word in re.findall(r"[a-z]+", caption.lower()):
        lemma, tag = _lemma(word)
        if tag == "VERB" and previous in ("DET", "ADJ"):
            tag = "NOUN"
        out.append(f"{lemma}/{tag}")
        previous = tag
    return out


# ------------------------------------------------------------------------------------------- dataset
def _write_chunk(args: tuple[str, int, list[tuple[int, str]]]) -> list[tuple[str, str, int]]:
    """Generate and write clips ``(index, family)`` and their mirrors; returns (id, family, frames) each."""
    from easytune.data.features import joints_to_features, recover_from_ric
    from easytune.data.humanml import CaptionLine, write_clip

    root, seed, items = args
    plans = [_plan(np.random.default_rng([seed, index]), family) for index, family in items]
    out = []
    for (index, family), plan, joints in zip(items, plans, _realise(plans)):
        # the generator's skeleton already has the target bone lengths: retargeting would be the identity
        feats = joints_to_features(joints.astype(np.float64), "humanml", target_offsets=None).astype(
            np.float32
        )
        recovered = recover_from_ric(feats, 22)
        for clip_id, f, j, captions in (
            (f"{index:06d}", feats, recovered, plan.captions),
            (
                f"M{index:06d}",
                mirror_features(feats),
                mirror_joints(recovered),
                map(mirror_caption, plan.captions),
            ),
        ):
            write_clip(root, clip_id, f, [CaptionLine(c, tuple(pos_tag(c)), 0.0, 0.0) for c in captions], j)
            out.append((clip_id, family, len(f)))
    return out


def generate_dataset(
    out_dir: str | Path,
    clips: int,
    seed: int = 0,
    kind: str = "humanml",
    *,
    workers: int | None = None,
    chunk: int = 64,
    show_progress: bool = False,
) -> dict:
    """Write ``clips`` synthetic clips and their mirrored copies (``M<id>``) in the HumanML3D layout.

    ``out_dir`` gets new_joints/, new_joint_vecs/, texts/, Mean.npy / Std.npy (train split, HumanML3D block
    std) and train/val/test/all.txt (about 80/5/15 %, each mirror in its original's split). Files are
    identical for the same ``seed`` whatever ``workers`` (processes, default 1). ``out_dir`` must be empty
    or absent. Returns a summary (counts per split and family, frame statistics, seconds, clips per second).
    """
    from easytune.data.humanml import compute_mean_std, write_mean_std, write_split

    if kind != "humanml":
        raise ConfigError(
            f"generate_dataset: kind {kind!r} is not supported; the generator writes 'humanml' only"
        )
    if int(clips) < 3:
        raise ConfigError(f"generate_dataset: clips must be >= 3 (one per split), got {clips}")
    if workers is not None and int(workers) < 1:
        raise ConfigError(f"generate_dataset: workers must be >= 1, got {workers}")
    if int(chunk) < 1:
        raise ConfigError(f"generate_dataset: chunk must be >= 1, got {chunk}")
    root = Path(out_dir)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ConfigError(
            f"generate_dataset: {root} exists and is not an empty folder; choose a new output folder"
        )
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    families = clip_families(int(clips), seed)
    items = list(enumerate(families))
    jobs = [(str(root), seed, items[i : i + chunk]) for i in range(0, len(items), chunk)]
    if (workers or 1) > 1:
        import multiprocessing

        # spawn, not fork: a forked child of a process whose torch thread pool is running can deadlock
        with multiprocessing.get_context("spawn").Pool(int(workers)) as pool:
            chunks = pool.imap(_write_chunk, jobs)  # in order: the same files whatever ``workers``
            bar = progress(chunks, total=len(jobs), desc="synth", unit="chunk", enabled=show_progress)
            written = [row for rows in bar for row in rows]
    else:
        bar = progress(jobs, total=len(jobs), desc="synth", unit="chunk", enabled=show_progress)
        written = [row for job in bar for row in _write_chunk(job)]

    order = np.random.default_rng([seed, _SPLIT_STREAM]).permutation(int(clips))
    n_test, n_val = max(1, round(0.15 * clips)), max(1, round(0.05 * clips))
    split_of = {}
    for rank, index in enumerate(order):
        split_of[int(index)] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    ids = {name: [] for name in ("train", "val", "test")}
    for clip_id, _, _ in written:
        ids[split_of[int(clip_id.lstrip("M"))]].append(clip_id)
    for name, members in ids.items():
        write_split(root, name, sorted(members))
    write_split(root, "all", sorted(clip_id for clip_id, _, _ in written))
    feats = (np.load(root / "new_joint_vecs" / f"{clip_id}.npy") for clip_id in sorted(ids["train"]))
    write_mean_std(root, *compute_mean_std(feats))

    seconds = time.perf_counter() - start
    lengths = np.array([n for _, _, n in written])
    return {
        "root": str(root),
        "kind": kind,
        "seed": seed,
        "clips": int(clips),
        "motions": len(written),
        "splits": {name: len(members) for name, members in ids.items()},
        "families": dict(
            sorted(Counter(f for clip_id, f, _ in written if not clip_id.startswith("M")).items())
        ),
        "frames": {
            "min": int(lengths.min()),
            "max": int(lengths.max()),
            "mean": round(float(lengths.mean()), 1),
        },
        "seconds": round(seconds, 2),
        "clips_per_second": round(clips / seconds, 1),
    }


def cache_dir() -> Path:
    """easytune's cache folder: ``$EASYTUNE_CACHE``, else ``~/.cache/easytune``."""
    return Path(os.environ.get("EASYTUNE_CACHE", Path.home() / ".cache" / "easytune"))


def ensure_dataset(path: str | os.PathLike | None, clips: int = 600, seed: int = 0) -> Path:
    """The dataset folder: ``path`` when given, else the cached synthetic set ``synth-{clips}-seed{seed}``
    (generated when missing), the default data of the quickstart and of ``easytune compare``."""
    if path is not None:
        return Path(path)
    root = cache_dir() / f"synth-{clips}-seed{seed}"
    if not (root / "Mean.npy").is_file():
        logging.getLogger("easytune.data").info(
            "generating the synthetic dataset (%d clips, seed %d) in %s", clips, seed, root
        )
        generate_dataset(root, clips, seed)
    return root
