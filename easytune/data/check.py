"""Validation of a HumanML3D / KIT dataset root (``easytune data check``).

Every file is read in full. Each problem names its file and what is wrong; the summary gives clips and
items per split, a length histogram, the feature width and captions per clip.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from easytune.data.humanml import (
    DEFAULT_MAX_LEN,
    DEFAULT_MIN_LEN,
    JOINTS_DIR,
    MOTION_DIR,
    TEXT_DIR,
    load_mean_std,
    load_motion,
    npy_shape,
    read_captions,
    read_split,
)
from easytune.data.skeleton import SkeletonSpec, get_skeleton
from easytune.errors import DataError

log = logging.getLogger("easytune.data")

DEFAULT_SPLITS = ("train", "val", "test")
HISTOGRAM_EDGES = (0, 24, 40, 80, 120, 160, 200)


@dataclass
class CheckReport:
    """Result of ``check_dataset``: ``problems`` (each ``"<file>: <what>"``) make the dataset invalid;
    ``notes`` are observations that do not (e.g. sub-clip ranges cut at the clip end)."""

    root: Path
    kind: str
    feature_dim: int
    min_len: int
    max_len: int
    allow_out_of_range: bool = False
    split_clips: dict[str, int] = field(default_factory=dict)
    split_items: dict[str, int] = field(default_factory=dict)
    clip_lengths: dict[str, int] = field(default_factory=dict)
    captions_per_clip: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """Human-readable multi-line summary (no problems listed)."""
        lines = [f"dataset {self.root} ({self.kind}, {self.feature_dim} features per frame)"]
        for split, n in self.split_clips.items():
            lines.append(f"  split {split:<10s} {n:6d} clips  {self.split_items.get(split, 0):6d} items")
        lengths = np.array(list(self.clip_lengths.values()), dtype=np.int64)
        if lengths.size:
            lines.append(
                f"  clip lengths (frames): min {lengths.min()}  median {int(np.median(lengths))}  "
                f"max {lengths.max()}  (loader keeps [{self.min_len}, {self.max_len}])"
            )
            edges = list(HISTOGRAM_EDGES)
            if lengths.max() >= edges[-1]:
                edges.append(int(lengths.max()) + 1)
            counts, _ = np.histogram(lengths, bins=edges)
            width = max(1, int(counts.max()))
            for lo, hi, c in zip(edges[:-1], edges[1:], counts):
                lines.append(f"    [{lo:4d}, {hi:4d})  {c:6d}  {'#' * round(40 * c / width)}")
        caps = np.array(list(self.captions_per_clip.values()), dtype=np.int64)
        if caps.size:
            lines.append(f"  captions per clip: min {caps.min()}  mean {caps.mean():.2f}  max {caps.max()}")
        lines.append(f"  {len(self.problems)} problems, {len(self.notes)} notes")
        return "\n".join(lines)


def check_dataset(
    root: str | Path,
    kind: str = "humanml",
    *,
    splits: Sequence[str] = DEFAULT_SPLITS,
    min_len: int | None = None,
    max_len: int | None = None,
    allow_out_of_range: bool = False,
    progress: str | None = None,
) -> CheckReport:
    """Validate ``root``; never raises for a dataset problem, it lists it in the report. ``progress``: the
    label of a progress bar over the clips (tqdm, when installed).

    Problems: a missing or malformed Mean.npy / Std.npy, missing or empty split files, split ids without a
    motion or caption file, a motion that is not float [T, D] with D the kind's width, NaN / inf, an empty
    or malformed caption file, a caption range that is empty or starts past its clip, a ``new_joints`` file
    whose shape disagrees with its features, and (unless ``allow_out_of_range``) clips or sub-clips whose
    length is outside ``[min_len, max_len]`` (defaults: 40 / 24 and 199, the loader's filter).
    """
    root = Path(root)
    spec = get_skeleton(kind)
    report = CheckReport(
        root=root,
        kind=spec.kind,
        feature_dim=spec.feature_dim,
        min_len=DEFAULT_MIN_LEN[spec.kind] if min_len is None else int(min_len),
        max_len=DEFAULT_MAX_LEN if max_len is None else int(max_len),
        allow_out_of_range=allow_out_of_range,
    )
    if not root.is_dir():
        report.problems.append(f"{root}: dataset root does not exist")
        return report
    try:
        load_mean_std(root, spec.feature_dim)
    except DataError as err:
        report.problems.append(str(err))

    items_per_clip: dict[str, int] = {}
    for split in splits:
        try:
            ids = read_split(root, split)
        except DataError as err:
            report.problems.append(str(err))
            continue
        report.split_clips[split] = len(ids)
        for clip in _progress(ids, progress, split):
            if clip not in items_per_clip:
                items_per_clip[clip] = _check_clip(report, spec, clip, f"{root / split}.txt")
        report.split_items[split] = sum(items_per_clip[c] for c in ids)
    return report


def _progress(ids: list[str], label: str | None, split: str):
    from easytune.progress import progress

    return progress(ids, total=len(ids), desc=f"{label} ({split})", unit="clip", enabled=label is not None)


def _check_clip(report: CheckReport, spec: SkeletonSpec, clip: str, split_file: str) -> int:
    """Check one clip's files; returns its number of items inside the length filter."""
    motion_path = report.root / MOTION_DIR / f"{clip}.npy"
    text_path = report.root / TEXT_DIR / f"{clip}.txt"
    missing = [p for p in (motion_path, text_path) if not p.is_file()]
    for path in missing:
        report.problems.append(f"{split_file}: lists {clip!r} but {path} does not exist")
    if missing:
        return 0
    try:
        n_frames = len(load_motion(motion_path, spec.feature_dim))
        captions = read_captions(text_path)
    except DataError as err:
        report.problems.append(str(err))
        return 0
    report.clip_lengths[clip] = n_frames
    report.captions_per_clip[clip] = len(captions)

    joints_path = report.root / JOINTS_DIR / f"{clip}.npy"
    if joints_path.is_file():
        try:
            shape, _ = npy_shape(joints_path)
        except DataError as err:
            report.problems.append(str(err))
        else:
            if shape != (n_frames, spec.num_joints, 3):
                report.problems.append(
                    f"{joints_path}: expected shape ({n_frames}, {spec.num_joints}, 3) to match "
                    f"{motion_path.name}, got {shape}"
                )

    ranges = {(0, n_frames)} if any(c.whole_clip for c in captions) else set()
    for lineno, cap in enumerate(captions, start=1):
        if cap.whole_clip:
            continue
        start, end = cap.frames(spec.fps)
        if start >= end or start >= n_frames:
            report.problems.append(
                f"{text_path}: caption {lineno} ({cap.start:g}s-{cap.end:g}s = frames [{start}, {end})) is "
                f"empty or starts past the clip's {n_frames} frames"
            )
            continue
        if end > n_frames:
            report.notes.append(
                f"{text_path}: caption {lineno} ends at frame {end}, past the clip's {n_frames} frames; "
                "cut at its end"
            )
        ranges.add((start, min(end, n_frames)))
    inside = 0
    for start, end in sorted(ranges):
        length = end - start
        if report.min_len <= length <= report.max_len:
            inside += 1
            continue
        what = f"{motion_path}" + ("" if (start, end) == (0, n_frames) else f" frames [{start}, {end})")
        msg = f"{what}: length {length} is outside [{report.min_len}, {report.max_len}]"
        if report.allow_out_of_range:
            report.notes.append(msg + " (left out by the loader)")
        else:
            report.problems.append(msg + " (pass --min-len/--max-len or --allow-out-of-range)")
    return inside


# A dataset checked clean by ``easytune data check`` (or a run's own check) holds this file: the fingerprint
# of what was checked. A run whose dataset still matches it skips re-reading every clip.
STAMP = ".easytune-checked.json"


def fingerprint(root: str | Path, splits: Sequence[str] = DEFAULT_SPLITS) -> dict[str, object]:
    """Count, total size and newest modification time of the files a check reads (statistics, split lists,
    motions, captions): any added, removed, resized or rewritten file changes it. One ``stat`` per file."""
    root = Path(root)
    files = [root / "Mean.npy", root / "Std.npy", *(root / f"{s}.txt" for s in splits)]
    for folder in (MOTION_DIR, TEXT_DIR):
        if (root / folder).is_dir():
            files += sorted((root / folder).iterdir())
    stats = [f.stat() for f in files if f.is_file()]
    return {
        "splits": sorted(splits),
        "files": len(stats),
        "bytes": sum(st.st_size for st in stats),
        "newest_mtime_ns": max((st.st_mtime_ns for st in stats), default=0),
    }


def _stamp_matches(root: Path, splits: Sequence[str]) -> bool:
    try:
        saved = json.loads((root / STAMP).read_text())
    except (OSError, ValueError):
        return False
    covered = set(saved.get("splits", ()))
    if not set(splits) <= covered:
        return False
    return saved == {**fingerprint(root, sorted(covered)), "kind": saved.get("kind")}


def write_stamp(root: str | Path, kind: str, splits: Sequence[str]) -> bool:
    """Record that ``root`` checked clean for ``splits``; False when the folder is read-only (no stamp)."""
    root = Path(root)
    try:
        (root / STAMP).write_text(json.dumps({**fingerprint(root, splits), "kind": kind}))
    except OSError:
        return False
    return True


def check_before_run(
    root: str | Path,
    what: str,
    *,
    kind: str | None = None,
    splits: Sequence[str] = ("train",),
    skip: bool = False,
    show_progress: bool = True,
) -> None:
    """Validate the data a run will read before its first step: every clip of ``splits`` in full (the
    ``easytune data check`` checks; clips outside the length filter are the loaders' business, not a problem),
    all problems listed in one ``DataError``. Skipped when ``skip`` (``--skip-data-check``) or when the
    dataset's stamp (``STAMP``) still matches its files; a clean check writes the stamp. A progress bar
    unless not ``show_progress`` (the run's ``--no-progress``)."""
    root = Path(root)
    if kind is None:  # the skeleton whose feature width Mean.npy has (a bad Mean.npy: the check names it)
        try:
            width = npy_shape(root / "Mean.npy")[0][-1]
        except (DataError, IndexError):
            width = None
        kind = next((k for k in ("humanml", "kit") if get_skeleton(k).feature_dim == width), "humanml")
    if skip:
        log.info("%s: data check of %s skipped (--skip-data-check)", what, root)
        return
    if root.is_dir() and _stamp_matches(root, splits):
        log.info("%s: %s is unchanged since it was checked (%s): not re-read", what, root, STAMP)
        return
    report = check_dataset(
        root,
        kind,
        splits=splits,
        allow_out_of_range=True,
        progress=f"{what}: checking data" if show_progress else None,
    )
    if report.problems:
        listed = "\n  ".join(report.problems[:20])
        more = f"\n  ... and {len(report.problems) - 20} more" if len(report.problems) > 20 else ""
        raise DataError(
            f"{what}: {len(report.problems)} problem(s) in the data of {root} (nothing was trained):\n  "
            f"{listed}{more}\n(`easytune data check {root}` lists them; --skip-data-check runs anyway)"
        )
    write_stamp(root, report.kind, splits)
