"""Stick-figure rendering of motions with PIL: GIF (or MP4 with imageio + ffmpeg) and PNG frame strips.

Input motions are joint positions [T, J, 3] (y up, metres or millimetres) or HumanML3D / KIT features
[T, 263 | 251] (de-normalised with ``mean`` / ``std`` when given, then decoded with
``features.recover_from_ric``). Each panel has a fixed orthographic camera (front-right, slightly above)
fitted to the whole clip, a ground grid, the root trajectory (walked part darker) and a caption title.
Left limbs are blue, right limbs red, the spine dark grey.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from easytune.errors import ConfigError, DataError

__all__ = ["load_motion", "features_to_joints", "render_motions", "render_strip", "render_file"]

_FEATURE_JOINTS = {263: 22, 251: 21}
_LEFT, _RIGHT, _SPINE = (40, 90, 200), (205, 45, 45), (60, 60, 60)
_BG, _GROUND, _GRID, _PATH, _PATH_DONE = (
    (255, 255, 255),
    (236, 238, 240),
    (210, 214, 218),
    (200, 200, 200),
    (90, 90, 90),
)


def features_to_joints(
    feats: np.ndarray,
    mean: np.ndarray | None = None,
    std: np.ndarray | None = None,
    *,
    source: str = "features",
) -> np.ndarray:
    """Features [T, 263 | 251] (normalised if ``mean``/``std`` are given) -> joints float32 [T, J, 3]."""
    from easytune.data.features import recover_from_ric

    feats = np.asarray(feats, dtype=np.float32)
    if feats.ndim != 2 or feats.shape[-1] not in _FEATURE_JOINTS:
        raise DataError(f"{source}: expected features [T, 263] or [T, 251], got shape {tuple(feats.shape)}")
    if (mean is None) != (std is None):
        raise ConfigError(f"{source}: give both mean and std to de-normalise, or neither")
    if mean is not None and std is not None:
        for name, arr in (("mean", mean), ("std", std)):
            if np.shape(arr) != (feats.shape[-1],):
                raise DataError(f"{source}: {name} has shape {np.shape(arr)}, expected ({feats.shape[-1]},)")
        feats = feats * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    joints = recover_from_ric(feats, _FEATURE_JOINTS[feats.shape[-1]])
    return np.asarray(joints, dtype=np.float32)


def load_motion(
    path: str | Path, mean: np.ndarray | None = None, std: np.ndarray | None = None
) -> np.ndarray:
    """Joints float32 [T, J, 3] from a ``.npy`` of joints [T, J, 3] or features [T, 263 | 251]."""
    path = Path(path)
    try:
        arr = np.load(path)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read a .npy array ({err})") from err
    if arr.ndim == 3 and arr.shape[-1] == 3:
        if mean is not None or std is not None:
            raise ConfigError(f"{path}: holds joints {arr.shape}; mean/std apply to features only")
        return _check_joints(arr, str(path))
    if arr.ndim == 2 and arr.shape[-1] in _FEATURE_JOINTS:
        return features_to_joints(arr, mean, std, source=str(path))
    raise DataError(f"{path}: expected joints [T, J, 3] or features [T, 263 | 251], got shape {arr.shape}")


def _check_joints(joints: np.ndarray, source: str) -> np.ndarray:
    if hasattr(joints, "detach"):  # a torch tensor (any device)
        joints = joints.detach().cpu().numpy()
    joints = np.asarray(joints, dtype=np.float32)
    if joints.ndim != 3 or joints.shape[-1] != 3 or joints.shape[0] < 1:
        raise DataError(f"{source}: expected joints [T, J, 3] with T >= 1, got shape {tuple(joints.shape)}")
    if not np.isfinite(joints).all():
        raise DataError(f"{source}: joints contain NaN or inf")
    return joints


def _bones(num_joints: int) -> tuple[list[tuple[int, int, tuple[int, int, int]]], int | None]:
    """(parent, child, colour) of the SMPL-22 / KIT-21 chains and the head joint; ([], None) for other J."""
    from easytune.data.skeleton import get_skeleton

    try:
        spec = get_skeleton(num_joints)
    except ConfigError:
        return [], None
    bones, head = [], None
    for chain in spec.kinematic_chain:
        side = spec.raw_offsets[chain[1]][0]  # + = left (both skeletons face +Z with left at +x)
        colour = _LEFT if side > 0 else _RIGHT if side < 0 else _SPINE
        if colour is _SPINE and chain[0] == 0:
            head = chain[-1]
        bones += [(a, b, colour) for a, b in zip(chain[:-1], chain[1:])]
    return bones, head


class _Camera:
    """Orthographic camera from azimuth 30 deg (front-right) and elevation 20 deg that follows the root
    horizontally; its scale is fixed per clip so the tallest pose fits the panel."""

    def __init__(self, joints: np.ndarray, width: int, height: int, top: int) -> None:
        az, el = math.radians(30.0), math.radians(20.0)
        self.depth_axis = np.array([math.sin(az) * math.cos(el), math.sin(el), math.cos(az) * math.cos(el)])
        self.right = np.cross(-self.depth_axis, [0.0, 1.0, 0.0])
        self.right /= np.linalg.norm(self.right)
        self.up = np.cross(self.right, -self.depth_axis)
        self.floor = float(joints[..., 1].min())
        self.body = float((joints[..., 1] - self.floor).max()) or 1.0
        self.scale = min((height - top - 10) / (1.3 * self.body), width / (1.3 * self.body))
        self.anchor = (width / 2.0, top + 5 + 1.1 * self.body * self.scale)
        self.centers = np.stack([joints[:, 0, 0], np.full(len(joints), self.floor), joints[:, 0, 2]], -1)

    def project(self, pts: np.ndarray, t: int) -> np.ndarray:
        """World points [..., 3] -> pixel coordinates [..., 2] with the camera of frame ``t``."""
        d = pts - self.centers[t]
        return np.stack(
            [self.anchor[0] + (d @ self.right) * self.scale, self.anchor[1] - (d @ self.up) * self.scale], -1
        )


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


class _Panel:
    """Draws frames of one motion into a ``width`` x ``height`` panel."""

    def __init__(self, joints: np.ndarray, title: str | None, width: int, height: int) -> None:
        self.joints = joints
        self.width, self.height = width, height
        self.font = _font(max(10, width // 26))
        chars = max(10, int(width / (self.font.getlength("x") or 6)))
        self.lines = textwrap.wrap(title, chars)[:3] if title else []
        self.line_h = int(getattr(self.font, "size", 10) * 1.25)
        self.cam = _Camera(joints, width, height, 4 + self.line_h * len(self.lines))
        self.bones, self.head = _bones(joints.shape[1])
        raw = self.cam.body / 3.4
        mag = 10 ** math.floor(math.log10(raw))
        self.grid_step = min((1, 2, 5, 10), key=lambda m: abs(m * mag - raw)) * mag
        self.root_path = self.cam.centers

    def _ground(self, draw: ImageDraw.ImageDraw, t: int) -> None:
        cx, y, cz = self.cam.centers[t]
        half, step = 1.2 * self.cam.body, self.grid_step
        x0, x1, z0, z1 = cx - half, cx + half, cz - half, cz + half
        box = np.array([[x0, y, z0], [x1, y, z0], [x1, y, z1], [x0, y, z1]])
        draw.polygon([tuple(p) for p in self.cam.project(box, t)], fill=_GROUND)
        for x in np.arange(math.ceil(x0 / step) * step, x1, step):
            draw.line([tuple(p) for p in self.cam.project(np.array([[x, y, z0], [x, y, z1]]), t)], fill=_GRID)
        for z in np.arange(math.ceil(z0 / step) * step, z1, step):
            draw.line([tuple(p) for p in self.cam.project(np.array([[x0, y, z], [x1, y, z]]), t)], fill=_GRID)

    def frame(self, t: int, title: bool = True) -> Image.Image:
        """Frame ``t`` (clamped to the last frame) as an RGB image; the title is drawn when ``title``."""
        t = min(t, len(self.joints) - 1)
        img = Image.new("RGB", (self.width, self.height), _BG)
        draw = ImageDraw.Draw(img)
        self._ground(draw, t)
        near = np.abs(self.root_path - self.cam.centers[t]).max(axis=1) < 1.2 * self.cam.body
        path = np.where(near[:, None], self.cam.project(self.root_path, t), np.nan)
        for segment, colour, w in ((path, _PATH, 1), (path[: t + 1], _PATH_DONE, 2)):
            for run in np.split(segment, np.flatnonzero(np.isnan(segment[:, 0]))):
                run = run[~np.isnan(run[:, 0])]
                if len(run) > 1:
                    draw.line([tuple(p) for p in run], fill=colour, width=w)
        pose = self.joints[t]
        pts = self.cam.project(pose, t)
        width = max(2, self.width // 90)
        shadow = pose.copy()
        shadow[:, 1] = self.cam.floor
        spts = self.cam.project(shadow, t)
        for a, b, _ in self.bones:
            draw.line([tuple(spts[a]), tuple(spts[b])], fill=(200, 203, 207), width=width)
        depth = pose @ self.cam.depth_axis
        order = sorted(self.bones, key=lambda bone: depth[bone[0]] + depth[bone[1]])
        for a, b, colour in order:
            draw.line([tuple(pts[a]), tuple(pts[b])], fill=colour, width=width)
        r = width * 0.9
        for x, y in pts:
            draw.ellipse([x - r, y - r, x + r, y + r], fill=(30, 30, 30))
        if self.head is not None:
            hr = width * 3
            x, y = pts[self.head]
            draw.ellipse([x - hr, y - hr, x + hr, y + hr], outline=_SPINE, width=width)
        for i, line in enumerate(self.lines if title else []):
            draw.text((6, 3 + i * self.line_h), line, fill=(0, 0, 0), font=self.font)
        return img


def _panels(
    motions: Sequence[np.ndarray], titles: Sequence[str | None] | None, width: int, height: int
) -> list[_Panel]:
    if isinstance(motions, np.ndarray) and motions.ndim == 3:
        motions = [motions]
    if not len(motions):
        raise DataError("render: no motions given")
    if titles is not None and len(titles) != len(motions):
        raise ConfigError(f"render: {len(titles)} titles for {len(motions)} motions")
    titles = list(titles) if titles is not None else [None] * len(motions)
    return [_Panel(_check_joints(m, f"motion {i}"), titles[i], width, height) for i, m in enumerate(motions)]


def _side_by_side(images: list[Image.Image]) -> Image.Image:
    out = Image.new("RGB", (sum(i.width for i in images), max(i.height for i in images)), _BG)
    x = 0
    for img in images:
        out.paste(img, (x, 0))
        x += img.width
    return out


def render_motions(
    motions: Sequence[np.ndarray],
    path: str | Path,
    titles: Sequence[str | None] | None = None,
    fps: float = 20.0,
    size: int = 320,
) -> Path:
    """Animate joints [T_i, J, 3] side by side into ``path`` (.gif, or .mp4 with imageio + ffmpeg).

    Shorter motions hold their last frame. Returns the path written.
    """
    path = Path(path)
    if not fps > 0:
        raise ConfigError(f"render: fps must be > 0, got {fps}")
    suffix = path.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise ConfigError(f"render: output {path} must end in .gif or .mp4 (use render_strip for .png)")
    panels = _panels(motions, titles, size, size)
    frames = [_side_by_side([p.frame(t) for p in panels]) for t in range(max(len(p.joints) for p in panels))]
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".gif":
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(round(1000 / fps)), loop=0)
        return path
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg  # noqa: F401
    except ImportError as err:
        raise ConfigError(
            f"render: writing {path} needs imageio with ffmpeg (pip install 'imageio[ffmpeg]'); "
            "or write a .gif instead"
        ) from err
    w, h = frames[0].size
    with imageio.get_writer(path, fps=fps, macro_block_size=1) as writer:
        for frame in frames:
            writer.append_data(np.asarray(frame.crop((0, 0, w - w % 2, h - h % 2))))
    return path


def render_strip(
    motions: np.ndarray | Sequence[np.ndarray],
    path: str | Path,
    n_frames: int = 6,
    titles: Sequence[str | None] | None = None,
    size: int = 200,
) -> Path:
    """A PNG with one row per motion and ``n_frames`` evenly spaced frames (first to last) per row."""
    if int(n_frames) < 1:
        raise ConfigError(f"render_strip: n_frames must be >= 1, got {n_frames}")
    panels = _panels(motions, titles, size, size)
    rows = []
    for panel in panels:
        idx = np.linspace(0, len(panel.joints) - 1, int(n_frames)).round().astype(int)
        rows.append(_side_by_side([panel.frame(int(t), title=i == 0) for i, t in enumerate(idx)]))
    out = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)), _BG)
    y = 0
    for row in rows:
        out.paste(row, (0, y))
        y += row.height
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out.save(path)
    return path


def render_file(
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    titles: Sequence[str | None] | None = None,
    fps: float = 20.0,
    mean: np.ndarray | None = None,
    std: np.ndarray | None = None,
    n_frames: int = 6,
    size: int | None = None,
) -> Path:
    """Load ``inputs`` (.npy joints or features) and write ``out``: .gif / .mp4 animation or .png strip."""
    motions = [load_motion(p, mean, std) for p in inputs]
    if Path(out).suffix.lower() == ".png":
        return render_strip(motions, out, n_frames=n_frames, titles=titles, size=size or 200)
    return render_motions(motions, out, titles=titles, fps=fps, size=size or 320)
