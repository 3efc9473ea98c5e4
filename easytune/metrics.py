"""Retrieval metrics for reward models and generation metrics for text-to-motion models.

All functions take embeddings as numpy arrays or torch tensors ([N, D], row ``i`` of the text and motion
arrays are a matching pair) and compute in float64 NumPy. Conventions follow the T2M evaluation
protocol (Guo et al. 2022) and TMR:

- retrieval (reward models): cosine similarity, R@k in percent and median rank (1 = best), text->motion
  (``t2m``) and motion->text (``m2t``); ties in similarity get the average rank of the tied block;
- generation (independent evaluator): Euclidean distances; R-Precision top-k in shuffled groups of 32,
  FID between motion-embedding Gaussians, MM-Dist, Diversity, MultiModality;
- replications: mean and 95% interval half-width ``1.96 * std / sqrt(n)`` (population std, as T2M).

Functions never pad or silently drop samples: a group size larger than the data raises ``ConfigError``
and ``grouped_*`` results report how many samples the full groups used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from easytune.errors import ConfigError

RECALL_KS = (1, 2, 3, 5, 10)


def _array(x: Any, name: str, ndim: int = 2) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != ndim:
        raise ConfigError(f"{name}: expected a {ndim}-D array, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ConfigError(f"{name}: contains NaN or inf")
    return a


def _pair(text: Any, motion: Any) -> tuple[np.ndarray, np.ndarray]:
    t, m = _array(text, "text embeddings"), _array(motion, "motion embeddings")
    if t.shape[0] != m.shape[0] or t.shape[0] == 0:
        raise ConfigError(
            f"text and motion embeddings must hold the same number (> 0) of rows, got "
            f"{t.shape[0]} and {m.shape[0]}"
        )
    return t, m


def cosine_similarity(a: Any, b: Any) -> np.ndarray:
    """[N, D] x [M, D] -> [N, M] cosine similarities (zero vectors give 0)."""
    a, b = _array(a, "a"), _array(b, "b")
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return a @ b.T


def euclidean_distances(a: Any, b: Any) -> np.ndarray:
    """[N, D] x [M, D] -> [N, M] Euclidean distances."""
    a, b = _array(a, "a"), _array(b, "b")
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(sq, 0.0))


def ranks_of_diagonal(scores: Any, higher_is_better: bool = True) -> np.ndarray:
    """0-based rank of the diagonal entry in each row of a square score matrix [N, N] -> [N] float.

    A tie between the diagonal and ``k`` other entries gives the average rank of the tied block.
    """
    s = _array(scores, "scores")
    if s.shape[0] != s.shape[1]:
        raise ConfigError(f"scores must be a square matrix, got shape {s.shape}")
    if not higher_is_better:
        s = -s
    gt = np.diag(s)[:, None]
    better = (s > gt).sum(1)
    ties = (s == gt).sum(1) - 1
    return better + ties / 2.0


def recall_from_ranks(ranks: np.ndarray, ks: Sequence[int] = RECALL_KS) -> dict[str, float]:
    """``R@k`` (percent of queries with 0-based rank < k) and ``MedR`` (median 1-based rank)."""
    out = {f"R@{k}": 100.0 * float(np.mean(ranks < k)) for k in ks}
    out["MedR"] = float(np.median(ranks) + 1.0)
    return out


def retrieval_metrics(text: Any, motion: Any, ks: Sequence[int] = RECALL_KS) -> dict[str, dict[str, float]]:
    """Cosine retrieval over all N pairs: ``{"t2m": {R@1.., MedR}, "m2t": {...}, "n": N}``."""
    t, m = _pair(text, motion)
    sim = cosine_similarity(t, m)
    return {
        "t2m": recall_from_ranks(ranks_of_diagonal(sim), ks),
        "m2t": recall_from_ranks(ranks_of_diagonal(sim.T), ks),
        "n": t.shape[0],
    }


def _groups(n: int, group_size: int, seed: int) -> np.ndarray:
    """Indices [G, group_size] of a seeded shuffle split into full groups (the remainder is left out)."""
    if group_size < 2:
        raise ConfigError(f"group_size must be >= 2, got {group_size}")
    if n < group_size:
        raise ConfigError(f"{n} samples cannot fill one group of {group_size}; lower the group size")
    perm = np.random.default_rng(seed).permutation(n)
    g = n // group_size
    return perm[: g * group_size].reshape(g, group_size)


def grouped_retrieval_metrics(
    text: Any,
    motion: Any,
    group_size: int = 32,
    seed: int = 0,
    ks: Sequence[int] = RECALL_KS,
    shuffles: int = 1,
) -> dict[str, Any]:
    """Cosine retrieval within seeded shuffled groups of ``group_size`` (TMR/SPM "batches of 32").

    Ranks are computed inside each group and pooled over all grouped queries; ``R@k`` with
    ``k >= group_size`` is 100 by construction. ``shuffles`` > 1 repeats the grouping with seeds
    ``seed, seed + 1, ...`` and pools all of them (less variance on small splits). Returns ``{"t2m",
    "m2t", "groups", "group_size", "shuffles", "samples_used", "n"}``; per shuffle the
    ``n % group_size`` samples left over are not used (``samples_used`` counts the used ones per shuffle).
    """
    t, m = _pair(text, motion)
    if shuffles < 1:
        raise ConfigError(f"shuffles must be >= 1, got {shuffles}")
    idx = np.concatenate([_groups(t.shape[0], group_size, seed + s) for s in range(shuffles)])
    r_t2m, r_m2t = [], []
    for g in idx:
        sim = cosine_similarity(t[g], m[g])
        r_t2m.append(ranks_of_diagonal(sim))
        r_m2t.append(ranks_of_diagonal(sim.T))
    return {
        "t2m": recall_from_ranks(np.concatenate(r_t2m), ks),
        "m2t": recall_from_ranks(np.concatenate(r_m2t), ks),
        "groups": int(idx.shape[0]),
        "group_size": group_size,
        "shuffles": shuffles,
        "samples_used": int(idx.size) // shuffles,
        "n": t.shape[0],
    }


def r_precision(
    text: Any, motion: Any, group_size: int = 32, top_k: int = 3, seed: int = 0
) -> dict[str, Any]:
    """T2M R-Precision: for each text in a shuffled group, is its motion among the ``top_k`` nearest
    (Euclidean) motions of the group? Returns ``{"top1".."top{k}": fraction, "groups", "samples_used"}``.
    """
    t, m = _pair(text, motion)
    if top_k > group_size:
        raise ConfigError(f"top_k={top_k} exceeds group_size={group_size}")
    idx = _groups(t.shape[0], group_size, seed)
    ranks = np.concatenate(
        [ranks_of_diagonal(euclidean_distances(t[g], m[g]), higher_is_better=False) for g in idx]
    )
    out: dict[str, Any] = {f"top{k}": float(np.mean(ranks < k)) for k in range(1, top_k + 1)}
    out.update(groups=int(idx.shape[0]), samples_used=int(idx.size))
    return out


def matching_score(text: Any, motion: Any) -> float:
    """MM-Dist: mean Euclidean distance between each text embedding and its own motion embedding."""
    t, m = _pair(text, motion)
    return float(np.linalg.norm(t - m, axis=1).mean())


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2.0)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """``|mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1 C2)^{1/2})`` for Gaussians (C PSD).

    The trace term uses ``tr((C1 C2)^{1/2}) = tr((S C2 S)^{1/2})`` with ``S = C1^{1/2}`` (symmetric PSD,
    so eigen-decompositions suffice; no complex square roots).
    """
    s = _sqrtm_psd(cov1)
    middle = np.linalg.eigvalsh((s @ cov2 @ s + (s @ cov2 @ s).T) / 2.0)
    tr_sqrt = float(np.sqrt(np.clip(middle, 0.0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * tr_sqrt)


def fid(real: Any, fake: Any) -> float:
    """FID between two sets of embeddings [N, D] and [M, D] (sample mean and unbiased covariance)."""
    r, f = _array(real, "real embeddings"), _array(fake, "fake embeddings")
    if r.shape[1] != f.shape[1] or min(r.shape[0], f.shape[0]) < 2:
        raise ConfigError(f"fid needs >= 2 rows per set and equal widths, got {r.shape} and {f.shape}")
    return frechet_distance(r.mean(0), np.cov(r, rowvar=False), f.mean(0), np.cov(f, rowvar=False))


def diversity(embeddings: Any, pairs: int = 300, seed: int = 0) -> float:
    """Mean Euclidean distance between ``pairs`` random pairs: two index sets of size ``pairs`` drawn
    without replacement (T2M protocol; needs ``N >= pairs``)."""
    e = _array(embeddings, "embeddings")
    if e.shape[0] < pairs:
        raise ConfigError(f"diversity with {pairs} pairs needs at least {pairs} samples, got {e.shape[0]}")
    rng = np.random.default_rng(seed)
    a = rng.choice(e.shape[0], pairs, replace=False)
    b = rng.choice(e.shape[0], pairs, replace=False)
    return float(np.linalg.norm(e[a] - e[b], axis=1).mean())


def multimodality(embeddings: Any, pairs: int = 10, seed: int = 0) -> float:
    """MultiModality over [P prompts, R generations, D]: per prompt, mean distance between ``pairs``
    random pairs of its generations (two index sets of size ``pairs`` without replacement, ``R >= pairs``),
    averaged over prompts."""
    e = _array(embeddings, "embeddings", ndim=3)
    if e.shape[1] < pairs:
        raise ConfigError(
            f"multimodality with {pairs} pairs needs >= {pairs} generations per prompt, got {e.shape[1]}"
        )
    rng = np.random.default_rng(seed)
    a = np.stack([rng.choice(e.shape[1], pairs, replace=False) for _ in range(e.shape[0])])
    b = np.stack([rng.choice(e.shape[1], pairs, replace=False) for _ in range(e.shape[0])])
    rows = np.arange(e.shape[0])[:, None]
    return float(np.linalg.norm(e[rows, a] - e[rows, b], axis=-1).mean())


def mean_interval(values: Sequence[float]) -> tuple[float, float]:
    """(mean, 95% half-width ``1.96 * std / sqrt(n)``) with the population std (T2M's convention)."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        raise ConfigError("mean_interval needs at least one value")
    return float(v.mean()), float(1.96 * v.std() / np.sqrt(v.size))


def summarize_replications(runs: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per metric over replications: ``{name: {"mean", "ci95", "n"}}`` (metrics present in every run)."""
    if not runs:
        raise ConfigError("summarize_replications needs at least one run")
    names = [k for k in runs[0] if all(k in r for r in runs)]
    out = {}
    for k in names:
        mean, ci = mean_interval([r[k] for r in runs])
        out[k] = {"mean": mean, "ci95": ci, "n": len(runs)}
    return out
