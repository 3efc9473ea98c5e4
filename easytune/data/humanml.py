"""Reader for the HumanML3D / KIT-ML on-disk format.

Layout of a dataset root (both datasets)::

    Mean.npy, Std.npy            float [D] feature statistics (D = 263 HumanML3D, 251 KIT)
    <split>.txt                  one clip id per line (train, val, test, ...)
    new_joint_vecs/<id>.npy      float [T, D] features
    new_joints/<id>.npy          float [T, J, 3] joints (optional, not read here)
    texts/<id>.txt               one caption per line: ``caption#word/POS word/POS ...#start#end``

A caption line with ``start == end == 0`` (or NaN) describes the whole clip; any other line describes the
sub-clip of feature rows ``[int(start * fps), int(end * fps))`` (fps 20 HumanML3D, 12.5 KIT), which
becomes an item of its own (captions with the same range share one item). Items whose length is outside
``[min_len, max_len]`` are counted and reported in one log line, never dropped silently; anything
missing or malformed raises ``DataError`` naming the file.

Motions are read lazily: construction reads only the ``.npy`` headers and the caption files, so a
directory of thousands of clips opens in well under a second.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from easytune.data.features import feature_slices, joints_num_from_dim
from easytune.data.skeleton import SkeletonSpec, get_skeleton
from easytune.errors import ConfigError, DataError

log = logging.getLogger(__name__)

MOTION_DIR = "new_joint_vecs"
JOINTS_DIR = "new_joints"
TEXT_DIR = "texts"
DEFAULT_MIN_LEN = {"humanml": 40, "kit": 24}
DEFAULT_MAX_LEN = 199
CAPTION_MODES = ("random", "first")
CROP_MODES = ("random", "floor", "none")


@dataclass(frozen=True)
class CaptionLine:
    """One parsed line of ``texts/<id>.txt``; ``start`` / ``end`` in seconds (0, 0: the whole clip)."""

    caption: str
    tokens: tuple[str, ...]
    start: float
    end: float

    @property
    def whole_clip(self) -> bool:
        return self.start == 0.0 and self.end == 0.0

    def frames(self, fps: float) -> tuple[int, int]:
        """Feature-row range ``[int(start * fps), int(end * fps))`` of a sub-clip caption."""
        return int(self.start * fps), int(self.end * fps)


def _seconds(field: str, path: Path, lineno: int, name: str) -> float:
    try:
        value = float(field)
    except ValueError:
        raise DataError(f"{path}:{lineno}: {name} {field!r} is not a number") from None
    if math.isnan(value):
        return 0.0
    if math.isinf(value) or value < 0:
        raise DataError(f"{path}:{lineno}: {name} {field!r} must be a finite number >= 0")
    return value


def read_text(path: Path, what: str) -> str:
    """A dataset text file as str: UTF-8, a leading byte-order mark dropped. DataError naming the file
    (and the line of the first byte that is not UTF-8) if it is missing or not UTF-8."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: {what} does not exist") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte {raw[err.start]:#04x})") from None


def read_captions(path: str | Path) -> list[CaptionLine]:
    """Parse a caption file. DataError if it is missing, empty, or has a malformed line."""
    path = Path(path)
    text = read_text(path, "caption file")
    out = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.strip().rsplit("#", 3)
        if len(fields) != 4:
            raise DataError(
                f"{path}:{lineno}: expected 'caption#tokens#start#end' (4 '#'-separated fields), "
                f"got {len(fields)} in {line.strip()[:80]!r}"
            )
        caption, tokens, start, end = fields
        if not caption.strip():
            raise DataError(f"{path}:{lineno}: empty caption")
        start_s = _seconds(start, path, lineno, "start")
        end_s = _seconds(end, path, lineno, "end")
        out.append(CaptionLine(caption.strip(), tuple(tokens.split()), start_s, end_s))
    if not out:
        raise DataError(f"{path}: caption file is empty")
    return out


def read_split(root: str | Path, split: str) -> list[str]:
    """Clip ids listed in ``<root>/<split>.txt`` (blank lines ignored). DataError if missing or empty."""
    path = Path(root) / f"{split}.txt"
    if not path.is_file():
        available = sorted(p.stem for p in Path(root).glob("*.txt"))
        raise DataError(f"{path}: split file does not exist (split files in {root}: {available})")
    ids, seen = [], {}
    for lineno, line in enumerate(read_text(path, "split file").splitlines(), start=1):
        clip = line.strip()
        if not clip:
            continue
        if clip in seen:
            raise DataError(f"{path}:{lineno}: clip id {clip!r} is listed twice (first on line {seen[clip]})")
        seen[clip] = lineno
        ids.append(clip)
    if not ids:
        raise DataError(f"{path}: split file lists no clip ids")
    return ids


def npy_shape(path: str | Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a ``.npy`` file from its header alone (no data read)."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    except FileNotFoundError:
        raise DataError(f"{path}: file does not exist") from None
    except (ValueError, OSError) as err:
        raise DataError(f"{path}: not a readable .npy file ({err})") from None
    return tuple(shape), np.dtype(dtype)


def load_motion(path: str | Path, feature_dim: int) -> np.ndarray:
    """Features float32 [T, feature_dim] of one clip. DataError for a wrong shape or NaN / inf."""
    path = Path(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: file does not exist") from None
    except (ValueError, OSError) as err:
        raise DataError(f"{path}: not a readable .npy file ({err})") from None
    if arr.dtype.kind != "f":  # the loaders' rule too: no silent cast of ints, complex or strings
        raise DataError(f"{path}: expected floating-point features, got dtype {arr.dtype}")
    if arr.ndim != 2 or arr.shape[1] != feature_dim:
        raise DataError(f"{path}: expected features of shape [T, {feature_dim}], got {arr.shape}")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise DataError(f"{path}: contains NaN or inf (first at frame {bad[0]}, feature {bad[1]})")
    return arr


def load_mean_std(root: str | Path, feature_dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(Mean.npy, Std.npy)`` of a dataset root as float32 [D]. DataError if missing, mis-shaped (also
    against ``feature_dim`` when given), not finite, or a std entry is <= 0."""
    out = []
    for name in ("Mean.npy", "Std.npy"):
        path = Path(root) / name
        if not path.is_file():
            raise DataError(f"{path}: does not exist (every dataset root needs Mean.npy and Std.npy)")
        try:
            arr = np.load(path, allow_pickle=False).astype(np.float32)
        except (ValueError, OSError) as err:
            raise DataError(f"{path}: not a readable .npy file ({err})") from None
        if arr.ndim != 1 or (feature_dim is not None and arr.shape[0] != feature_dim):
            want = f"[{feature_dim}]" if feature_dim is not None else "[D]"
            raise DataError(f"{path}: expected shape {want}, got {arr.shape}")
        if not np.isfinite(arr).all():
            raise DataError(f"{path}: contains NaN or inf")
        out.append(arr)
    mean, std = out
    if mean.shape != std.shape:
        raise DataError(f"{root}: Mean.npy has shape {mean.shape} but Std.npy has {std.shape}")
    if (std <= 0).any():
        raise DataError(f"{Path(root) / 'Std.npy'}: entries {np.flatnonzero(std <= 0)[:8].tolist()} are <= 0")
    return mean, std


def format_caption(caption: str, tokens: Sequence[str] = (), start: float = 0.0, end: float = 0.0) -> str:
    """One caption-file line ``caption#tokens#start#end`` (``'#'`` and newlines in the caption are replaced by
    spaces)."""
    clean = " ".join(caption.replace("#", " ").split())
    if not clean:
        raise DataError(f"caption {caption!r}: empty after cleaning")
    return f"{clean}#{' '.join(tokens)}#{float(start)!r}#{float(end)!r}"


def write_clip(
    root: str | Path,
    clip: str,
    features: np.ndarray,
    captions: Sequence[str | CaptionLine],
    joints: np.ndarray | None = None,
) -> None:
    """Write one clip: ``new_joint_vecs/<clip>.npy`` (float32), ``texts/<clip>.txt`` and optionally
    ``new_joints/<clip>.npy``. A plain string caption describes the whole clip."""
    root = Path(root)
    lines = [
        format_caption(c) if isinstance(c, str) else format_caption(c.caption, c.tokens, c.start, c.end)
        for c in captions
    ]
    if not lines:
        raise DataError(f"write_clip {clip!r}: needs at least one caption")
    for sub, arr in ((MOTION_DIR, features), (JOINTS_DIR, joints)):
        if arr is not None:
            (root / sub).mkdir(parents=True, exist_ok=True)
            np.save(root / sub / f"{clip}.npy", np.asarray(arr, dtype=np.float32))
    (root / TEXT_DIR).mkdir(parents=True, exist_ok=True)
    (root / TEXT_DIR / f"{clip}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_split(root: str | Path, split: str, ids: Sequence[str]) -> None:
    """Write ``<root>/<split>.txt``, one id per line."""
    Path(root).mkdir(parents=True, exist_ok=True)
    (Path(root) / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")


def write_mean_std(root: str | Path, mean: np.ndarray, std: np.ndarray) -> None:
    """Write ``Mean.npy`` / ``Std.npy`` (float32 [D])."""
    Path(root).mkdir(parents=True, exist_ok=True)
    np.save(Path(root) / "Mean.npy", np.asarray(mean, dtype=np.float32))
    np.save(Path(root) / "Std.npy", np.asarray(std, dtype=np.float32))


def compute_mean_std(motions: Iterable[np.ndarray], min_std: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Dataset statistics the way HumanML3D computes them: the per-feature mean over all frames, and per
    feature block (see ``features.feature_slices``) the mean of the per-feature standard deviations, so
    every feature of a block shares one std. A block std below ``min_std`` (e.g. contacts that never
    change) is raised to ``min_std`` with a warning. Returns float32 [D] each."""
    frames = [np.asarray(m, dtype=np.float64) for m in motions]
    if not frames:
        raise DataError("compute_mean_std: no motions given")
    data = np.concatenate(frames, axis=0)
    mean, per_dim = data.mean(axis=0), data.std(axis=0)
    std = np.empty_like(per_dim)
    for name, block in feature_slices(joints_num_from_dim(data.shape[1])).items():
        value = float(per_dim[block].mean())
        if value < min_std:
            log.warning("compute_mean_std: block %r has std %.3g; raised to %.3g", name, value, min_std)
            value = min_std
        std[block] = value
    return mean.astype(np.float32), std.astype(np.float32)


def normalize(motion: np.ndarray | torch.Tensor, mean, std) -> np.ndarray | torch.Tensor:
    """``(motion - mean) / std`` over the last axis (numpy or torch, mean/std numpy or torch)."""
    if torch.is_tensor(motion):
        mean, std = torch.as_tensor(mean).to(motion), torch.as_tensor(std).to(motion)
    return (motion - mean) / std


def denormalize(motion: np.ndarray | torch.Tensor, mean, std) -> np.ndarray | torch.Tensor:
    """``motion * std + mean`` over the last axis (numpy or torch)."""
    if torch.is_tensor(motion):
        mean, std = torch.as_tensor(mean).to(motion), torch.as_tensor(std).to(motion)
    return motion * std + mean


@dataclass(frozen=True)
class _Entry:
    clip: str
    start: int
    end: int
    captions: tuple[str, ...]
    is_sub: bool = False
    tokens: tuple[
        str, ...
    ] = ()  # per caption: its ``word/POS word/POS ...`` string ("" when the file has none)

    @property
    def length(self) -> int:
        return self.end - self.start

    @property
    def item_id(self) -> str:
        return f"{self.clip}@{self.start}-{self.end}" if self.is_sub else self.clip


def _texts(lines: Sequence[CaptionLine]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(captions, their ``word/POS`` token strings) of caption lines."""
    return tuple(x.caption for x in lines), tuple(" ".join(x.tokens) for x in lines)


class MotionDataset(torch.utils.data.Dataset):
    """Text-motion items of one split of a HumanML3D / KIT root.

    Item: ``{"motion": float32 tensor [T, D] (normalised unless normalize=False), "length": T,
    "caption": str, "captions": list[str] (all captions of the item), "tokens": str (the caption's
    ``word/POS ...`` tokens from its text file, "" when the file gives none), "id": str}``; sub-clip ids are
    ``<clip>@<start>-<end>`` (feature rows).

    ``caption_mode``: ``"random"`` (one caption drawn per access, training) or ``"first"``.
    ``crop``: ``"random"`` (the T2M loaders' crop: the length is floored to a multiple of ``unit_length``,
    one unit shorter with probability 1/3 when ``unit_length < 10``, at a random offset), ``"floor"``
    (floored length from frame 0, deterministic) or ``"none"``. Randomness comes from
    ``numpy.random.default_rng((seed, epoch, index))``: reproducible, the same in every DataLoader worker;
    call ``set_epoch`` to vary it between epochs.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        kind: str = "humanml",
        min_len: int | None = None,
        max_len: int | None = None,
        unit_length: int = 4,
        normalize: bool = True,
        caption_mode: str = "random",
        seed: int = 0,
        crop: str = "random",
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.skeleton: SkeletonSpec = get_skeleton(kind)
        self.kind = self.skeleton.kind
        self.fps = self.skeleton.fps
        self.feature_dim = self.skeleton.feature_dim
        self.min_len = DEFAULT_MIN_LEN[self.kind] if min_len is None else int(min_len)
        self.max_len = DEFAULT_MAX_LEN if max_len is None else int(max_len)
        self.unit_length = int(unit_length)
        if self.unit_length < 1:
            raise ConfigError(f"unit_length must be >= 1, got {unit_length}")
        if self.min_len < max(1, self.unit_length) or self.max_len < self.min_len:
            raise ConfigError(
                f"length filter [{self.min_len}, {self.max_len}]: expected unit_length ({self.unit_length}) "
                "<= min_len <= max_len"
            )
        if caption_mode not in CAPTION_MODES:
            raise ConfigError(f"caption_mode {caption_mode!r}: expected one of {CAPTION_MODES}")
        if crop not in CROP_MODES:
            raise ConfigError(f"crop {crop!r}: expected one of {CROP_MODES}")
        self.caption_mode, self.crop, self.seed, self.epoch = caption_mode, crop, int(seed), 0
        self.normalize = normalize
        if not self.root.is_dir():
            raise DataError(f"{self.root}: dataset root does not exist")
        self.mean, self.std = load_mean_std(self.root, self.feature_dim)
        self.entries: list[_Entry] = []
        self.filtered: dict[str, list[str]] = {"too_short": [], "too_long": []}
        self._scan(read_split(self.root, split))

    def _scan(self, ids: Sequence[str]) -> None:
        motion_dir, text_dir = self.root / MOTION_DIR, self.root / TEXT_DIR
        split_file = self.root / f"{self.split}.txt"
        n_sub = n_clamped = 0
        for clip in ids:
            path = motion_dir / f"{clip}.npy"
            if not path.is_file():
                raise DataError(f"{split_file}: lists {clip!r} but {path} does not exist")
            shape, dtype = npy_shape(path)
            if len(shape) != 2 or shape[1] != self.feature_dim or dtype.kind != "f":
                raise DataError(
                    f"{path}: expected {self.kind} features, float [T, {self.feature_dim}]; "
                    f"got {dtype} {shape}"
                )
            n_frames = shape[0]
            whole: list[CaptionLine] = []
            subs: dict[tuple[int, int], list[CaptionLine]] = {}
            for line in read_captions(text_dir / f"{clip}.txt"):
                if line.whole_clip:
                    whole.append(line)
                else:
                    subs.setdefault(line.frames(self.fps), []).append(line)
            if whole:
                caps, toks = _texts(whole)
                self._add(_Entry(clip, 0, n_frames, caps, tokens=toks))
            for (start, end), lines in subs.items():
                n_sub += 1
                n_clamped += end > n_frames
                end = max(start, min(end, n_frames))
                caps, toks = _texts(lines)
                self._add(_Entry(clip, start, end, caps, is_sub=True, tokens=toks))
        n_filtered = sum(len(v) for v in self.filtered.values())
        log.info(
            "%s split %r: %d items from %d clips (%d sub-clips, %d of them ending past their clip and cut at "
            "its end); left out by the length filter [%d, %d]: %d (%d shorter, %d longer)",
            self.root,
            self.split,
            len(self.entries),
            len(ids),
            n_sub,
            n_clamped,
            self.min_len,
            self.max_len,
            n_filtered,
            len(self.filtered["too_short"]),
            len(self.filtered["too_long"]),
        )
        if not self.entries:
            raise DataError(
                f"{split_file}: no item has a length in [{self.min_len}, {self.max_len}] "
                f"({len(self.filtered['too_short'])} shorter, {len(self.filtered['too_long'])} longer)"
            )

    def _add(self, entry: _Entry) -> None:
        if entry.length < self.min_len:
            self.filtered["too_short"].append(entry.item_id)
        elif entry.length > self.max_len:
            self.filtered["too_long"].append(entry.item_id)
        else:
            self.entries.append(entry)

    @property
    def lengths(self) -> np.ndarray:
        """Uncropped item lengths, int64 [N]."""
        return np.array([e.length for e in self.entries], dtype=np.int64)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.entries)

    def _crop(self, length: int, rng: np.random.Generator) -> tuple[int, int]:
        if self.crop == "none":
            return 0, length
        units = length // self.unit_length
        if self.crop == "random" and self.unit_length < 10 and units > 1 and rng.integers(3) == 2:
            units -= 1
        new_len = units * self.unit_length
        offset = int(rng.integers(length - new_len + 1)) if self.crop == "random" else 0
        return offset, new_len

    def __getitem__(self, index: int) -> dict:
        entry = self.entries[index]
        rng = np.random.default_rng((self.seed, self.epoch, index))
        motion = load_motion(self.root / MOTION_DIR / f"{entry.clip}.npy", self.feature_dim)
        motion = motion[entry.start : entry.end]
        offset, length = self._crop(len(motion), rng)
        motion = motion[offset : offset + length]
        if self.normalize:
            motion = normalize(motion, self.mean, self.std)
        captions = list(entry.captions)
        pick = int(rng.integers(len(captions))) if self.caption_mode == "random" else 0
        return {
            "motion": torch.from_numpy(np.ascontiguousarray(motion, dtype=np.float32)),
            "length": int(length),
            "caption": captions[pick],
            "captions": captions,
            "tokens": entry.tokens[pick] if entry.tokens else "",
            "id": entry.item_id,
        }


def collate_motion(items: Sequence[dict]) -> dict:
    """Pad items to the longest: ``{"motion": float32 [B, Tmax, D] (zeros past each length), "lengths":
    int64 [B], "mask": bool [B, Tmax] (True = valid frame), "caption": list[str], "captions":
    list[list[str]], "tokens": list[str], "id": list[str]}``."""
    if not items:
        raise DataError("collate_motion: empty batch")
    dims = {int(it["motion"].shape[-1]) for it in items}
    if len(dims) != 1:
        raise DataError(f"collate_motion: items have different feature widths {sorted(dims)}")
    lengths = torch.tensor([int(it["motion"].shape[0]) for it in items], dtype=torch.int64)
    for it, n in zip(items, lengths.tolist()):
        if int(it.get("length", n)) != n:
            raise DataError(f"collate_motion: item {it.get('id')!r} has length {it['length']} but {n} frames")
    t_max = int(lengths.max())
    motion = torch.zeros(len(items), t_max, dims.pop(), dtype=torch.float32)
    for i, it in enumerate(items):
        motion[i, : lengths[i]] = torch.as_tensor(it["motion"], dtype=torch.float32)
    return {
        "motion": motion,
        "lengths": lengths,
        "mask": torch.arange(t_max)[None, :] < lengths[:, None],
        "caption": [it["caption"] for it in items],
        "tokens": [it.get("tokens", "") for it in items],
        "captions": [list(it["captions"]) for it in items],
        "id": [it["id"] for it in items],
    }
