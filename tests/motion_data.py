"""Writers of small HumanML3D-layout datasets for tests (imported by test modules, not a test file)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def write_random_motions(
    root: Path,
    lengths: Sequence[int],
    captions: Sequence[Sequence[str]],
    mean: float = 0.0,
    std: float = 1.0,
    seed: int = 0,
) -> Path:
    """Clip ``i`` (id ``f"{i:06d}"``): random normal features [lengths[i], 263] and one text line per
    caption in ``captions[i]``; split ``train`` lists every clip; Mean / Std are the constants given."""
    rng = np.random.default_rng(seed)
    (root / "new_joint_vecs").mkdir(parents=True)
    (root / "texts").mkdir()
    ids = [f"{i:06d}" for i in range(len(lengths))]
    for clip, n, caps in zip(ids, lengths, captions):
        np.save(root / "new_joint_vecs" / f"{clip}.npy", rng.normal(size=(n, 263)).astype(np.float32))
        (root / "texts" / f"{clip}.txt").write_text("".join(f"{c}#a/DET#0.0#0.0\n" for c in caps))
    (root / "train.txt").write_text("\n".join(ids) + "\n")
    np.save(root / "Mean.npy", np.full(263, mean, dtype=np.float32))
    np.save(root / "Std.npy", np.full(263, std, dtype=np.float32))
    return root
