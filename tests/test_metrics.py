"""Retrieval and generation metrics against hand-computed and closed-form references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from easytune import metrics
from easytune.errors import ConfigError


def test_retrieval_hand_computed_ranks():
    # text rows, motion columns; cosine of these unit vectors is the dot product.
    t = np.eye(3)
    m = np.array(
        [
            [1.0, 0.0, 0.0],  # motion 0 matches text 0 best
            [0.8, 0.6, 0.0],  # motion 1: text 0 -> 0.8, text 1 -> 0.6
            [0.0, 0.0, 1.0],
        ]
    )
    r = metrics.retrieval_metrics(t, m)
    # t2m: text 0 ranks motion 0 first (1.0 > 0.8); text 1 ranks motion 1 (0.6) first; text 2 first.
    assert r["t2m"]["R@1"] == 100.0 and r["t2m"]["MedR"] == 1.0
    # m2t: motion 1 prefers text 0 (0.8) over its own text 1 (0.6): rank 2.
    assert r["m2t"]["R@1"] == pytest.approx(200 / 3) and r["m2t"]["R@2"] == 100.0
    assert r["m2t"]["MedR"] == 1.0 and r["n"] == 3


def test_ties_get_average_rank():
    sim = np.array([[0.5, 0.5, 0.5], [0.0, 1.0, 0.0], [0.9, 0.0, 0.1]])
    ranks = metrics.ranks_of_diagonal(sim)
    np.testing.assert_allclose(ranks, [1.0, 0.0, 1.0])  # row 0: tied with 2 others -> (0+1+2)/3
    out = metrics.recall_from_ranks(ranks, ks=(1, 2))
    assert out == {"R@1": pytest.approx(100 / 3), "R@2": 100.0, "MedR": 2.0}


def test_grouped_retrieval_uses_full_groups_of_a_seeded_shuffle():
    rng = np.random.default_rng(1)
    t, m = rng.normal(size=(70, 8)), rng.normal(size=(70, 8))
    out = metrics.grouped_retrieval_metrics(t, m, group_size=32, seed=3)
    assert out["groups"] == 2 and out["samples_used"] == 64 and out["n"] == 70
    perm = np.random.default_rng(3).permutation(70)[:64].reshape(2, 32)
    ranks = []
    for g in perm:  # brute force: count strictly better candidates per query
        sim = metrics.cosine_similarity(t[g], m[g])
        ranks += [int((sim[i] > sim[i, i]).sum()) for i in range(32)]
    assert out["t2m"]["R@1"] == pytest.approx(100 * np.mean(np.array(ranks) < 1))
    assert out["t2m"]["R@5"] == pytest.approx(100 * np.mean(np.array(ranks) < 5))
    assert out["t2m"]["R@10"] <= 100.0
    two = metrics.grouped_retrieval_metrics(t, m, group_size=32, seed=3, shuffles=2)
    other = metrics.grouped_retrieval_metrics(t, m, group_size=32, seed=4)
    assert two["groups"] == 4 and two["samples_used"] == 64
    assert two["t2m"]["R@5"] == pytest.approx((out["t2m"]["R@5"] + other["t2m"]["R@5"]) / 2)
    with pytest.raises(ConfigError, match="cannot fill one group"):
        metrics.grouped_retrieval_metrics(t[:10], m[:10], group_size=32)


def test_perfect_embeddings_and_torch_inputs():
    x = torch.randn(64, 16, dtype=torch.float64)
    r = metrics.retrieval_metrics(x, x)
    assert r["t2m"]["R@1"] == 100.0 and r["m2t"]["MedR"] == 1.0
    rp = metrics.r_precision(x, x, group_size=32, seed=0)
    assert rp["top1"] == rp["top3"] == 1.0 and rp["groups"] == 2
    assert metrics.matching_score(x, x) == 0.0


def test_r_precision_euclidean_hand_example():
    t = np.array([[0.0], [1.0], [10.0], [11.0]])
    m = np.array([[0.4], [0.45], [10.0], [12.0]])
    # Distances per text: [.4 .45 10 12], [.6 .55 9 11], [9.6 9.55 0 2], [10.6 10.55 1 1]: every ground truth
    # is nearest; text 3 ties (1 vs 1) -> average rank 0.5, still < 1.
    rp = metrics.r_precision(t, m, group_size=4, top_k=3, seed=0)
    assert rp["top1"] == 1.0
    m2 = np.array([[0.4], [0.3], [10.0], [12.5]])
    # text 0: .3 beats .4 -> rank 1; text 1: .6 beats .7 -> rank 1; text 2: rank 0; text 3: 1 beats 1.5 -> 1.
    rp2 = metrics.r_precision(t, m2, group_size=4, top_k=2, seed=0)
    assert rp2["top1"] == 0.25 and rp2["top2"] == 1.0


def test_matching_score_hand():
    t = np.array([[0.0, 0.0], [1.0, 1.0]])
    m = np.array([[3.0, 4.0], [1.0, 2.0]])
    assert metrics.matching_score(t, m) == pytest.approx((5.0 + 1.0) / 2)


def test_fid_identical_sets_is_zero():
    x = np.random.default_rng(0).normal(size=(200, 6))
    assert abs(metrics.fid(x, x)) < 1e-8


def test_frechet_distance_closed_form_diagonal():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 0.25]), np.array([4.0, 1.0, 1.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
    assert metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_matches_scipy_sqrtm():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    c1, c2 = a @ a.T + 0.1 * np.eye(5), b @ b.T + 0.1 * np.eye(5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(c1 + c2 - 2 * linalg.sqrtm(c1 @ c2).real)
    assert metrics.frechet_distance(mu1, c1, mu2, c2) == pytest.approx(ref, rel=1e-8)


def test_fid_of_samples_from_known_gaussians():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(20000, 4))
    y = rng.normal(size=(20000, 4)) * 2.0 + np.array([1.0, 0.0, 0.0, 0.0])
    # N(0, I) vs N(e1, 4 I): |e1|^2 + 4 * (1 + 4 - 2 * 2) = 5
    assert metrics.fid(x, y) == pytest.approx(5.0, abs=0.1)


def test_diversity_and_multimodality_of_known_gaussians():
    rng = np.random.default_rng(4)
    # 1-D standard normal: E|x - y| = 2 / sqrt(pi)
    assert metrics.diversity(rng.normal(size=(20000, 1)), pairs=10000, seed=0) == pytest.approx(
        2 / math.sqrt(math.pi), abs=0.03
    )
    gens = rng.normal(size=(2000, 30, 1)) * 3.0
    # T2M protocol: the two index sets are drawn independently, so a pair is the same generation with
    # probability 1/30 (distance 0): E = 3 * 2 / sqrt(pi) * (1 - 1/30).
    expected = 6 / math.sqrt(math.pi) * (1 - 1 / 30)
    assert metrics.multimodality(gens, pairs=10, seed=0) == pytest.approx(expected, abs=0.05)
    same = np.repeat(rng.normal(size=(5, 1, 3)), 12, axis=1)
    assert metrics.multimodality(same, pairs=10) == 0.0
    with pytest.raises(ConfigError, match="at least 300"):
        metrics.diversity(np.zeros((10, 2)))
    with pytest.raises(ConfigError, match="generations per prompt"):
        metrics.multimodality(np.zeros((3, 5, 2)), pairs=10)


def test_mean_interval_and_summary():
    mean, ci = metrics.mean_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and ci == pytest.approx(1.96 * math.sqrt(2 / 3) / math.sqrt(3))
    s = metrics.summarize_replications([{"a": 1.0, "b": 2.0}, {"a": 3.0}])
    assert set(s) == {"a"} and s["a"]["mean"] == 2.0 and s["a"]["n"] == 2


def test_bad_inputs_raise():
    with pytest.raises(ConfigError, match="same number"):
        metrics.retrieval_metrics(np.zeros((3, 2)), np.zeros((4, 2)))
    with pytest.raises(ConfigError, match="NaN"):
        metrics.fid(np.full((3, 2), np.nan), np.zeros((3, 2)))
