"""Composite rewards and the motion-quality rewards and metrics (issue 17), against float64 hand values on
synthetic motions with known skating, penetration, floating and jitter."""

from __future__ import annotations

import math

import pytest
import torch

from easytune.errors import ConfigError
from easytune.rewards import (
    FEET,
    Composite,
    QualityReward,
    floating_cost,
    foot_skate_cost,
    jitter_cost,
    parse_term,
    penetration_cost,
    quality_metrics,
)


def rest_pose() -> torch.Tensor:
    """The SMPL rest pose [22, 3] (HumanML3D bone lengths), its lowest foot joint at height 0."""
    from easytune.data.skeleton import HUMANML

    offsets = torch.as_tensor(HUMANML.target_offsets(), dtype=torch.float64)
    joints = torch.zeros(22, 3, dtype=torch.float64)
    for j, parent in enumerate(HUMANML.parents):
        if parent >= 0:
            joints[j] = joints[parent] + offsets[j]
    return joints - torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64) * joints[list(FEET), 1].min()


def stance(frames: int = 30, slide: float = 0.0, height: float = 0.0, shake: float = 0.0) -> torch.Tensor:
    """Joints [T, 22, 3]: the rest pose standing with its lowest foot joint at ``height``, the feet sliding
    ``slide`` m/frame along x; ``shake``: alternating +-shake on every joint (jitter)."""
    base = rest_pose() + torch.tensor([0.0, height, 0.0], dtype=torch.float64)
    t = torch.arange(frames, dtype=torch.float64)
    joints = base.expand(frames, 22, 3).clone()
    joints[:, list(FEET), 0] += slide * t[:, None]
    joints += shake * (-1.0) ** t[:, None, None]
    return joints


def test_quality_costs_hand_values():
    lengths = torch.tensor([30])
    planted, sliding = stance()[None], stance(slide=0.02)[None]
    heights = rest_pose()[list(FEET), 1].tolist()
    contact = sum(1 / (1 + math.exp(-(0.05 - h) / 0.01)) for h in heights) / 4  # mean soft contact
    assert foot_skate_cost(planted, lengths).item() == 0.0
    assert foot_skate_cost(sliding, lengths).item() == pytest.approx(contact * 0.02, rel=1e-9)
    assert penetration_cost(stance(height=-0.03)[None], lengths).item() == pytest.approx(0.03)
    assert penetration_cost(planted, lengths).item() == 0.0
    assert floating_cost(stance(height=0.15)[None], lengths).item() == pytest.approx(0.10)
    assert jitter_cost(planted, lengths).item() == 0.0  # constant velocity (here none): no acceleration
    assert jitter_cost(stance(shake=0.01)[None], lengths).item() == pytest.approx(4 * 0.01 * math.sqrt(3))
    # only valid frames count: a slide that starts after the length is not seen
    late = stance(slide=0.0)
    late[20:, list(FEET), 0] += 0.5 * torch.arange(10, dtype=torch.float64)[:, None]
    assert foot_skate_cost(late[None], torch.tensor([20])).item() == 0.0
    assert foot_skate_cost(late[None], torch.tensor([30])).item() > 0


def test_quality_metrics_hand_values():
    q_planted = quality_metrics([stance()])
    q_sliding = quality_metrics([stance(slide=0.03)])  # 0.03 m/frame > the 0.025 skating speed
    assert q_planted["Skating"] == 0.0 and q_sliding["Skating"] == 1.0
    assert quality_metrics([stance(slide=0.02)])["Skating"] == 0.0  # slow: not skating
    assert quality_metrics([stance(height=-0.02)])["Penetration"] == pytest.approx(2.0)
    assert quality_metrics([stance(height=0.25)])["Floating"] == pytest.approx(20.0)
    assert quality_metrics([stance(shake=0.01)])["Jitter"] == pytest.approx(4 * 0.01 * math.sqrt(3))


def test_a_sliding_stance_scores_worse_than_a_planted_one_through_the_features():
    """The reward reads normalised 263-d features (as the trainer gives it): joints -> features -> reward."""
    from easytune.data.features import joints_to_features

    def feats(joints):
        return torch.as_tensor(joints_to_features(joints.numpy(), "humanml", target_offsets=None)).float()[
            None
        ]

    mean, std = torch.zeros(263), torch.ones(263)
    batch = {"lengths": torch.tensor([29])}
    skate = QualityReward("foot_skate", mean, std)
    planted, sliding = skate(feats(stance()), batch), skate(feats(stance(slide=0.02)), batch)
    assert planted.item() > sliding.item() + 0.01
    x = feats(stance(slide=0.02)).requires_grad_()
    skate(x, batch).sum().backward()
    assert x.grad.abs().sum() > 0  # differentiable


def test_composite_sums_weighted_terms_and_keeps_each_mean():
    a = lambda x, b: x.sum(-1)  # noqa: E731
    c = lambda x, b: -(x**2).sum(-1)  # noqa: E731
    comp = Composite([(1.0, a, "a"), (0.5, c, "c")])
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    torch.testing.assert_close(comp(x, {}), a(x, {}) + 0.5 * c(x, {}))
    comp(2 * x, {})
    terms = comp.pop_terms()
    assert [v.item() for v in terms["a"]] == [2.5, 5.0] and [v.item() for v in terms["c"]] == [-7.5, -30.0]
    assert comp.pop_terms() == {}
    with pytest.raises(ConfigError, match="term names repeat"):
        Composite([(1.0, a, "a"), (1.0, c, "a")])
    with pytest.raises(ConfigError, match="must be a finite number"):
        Composite([(float("nan"), a, "a")])
    assert parse_term("foot_skate:0.5") == ("foot_skate", 0.5) and parse_term("spl") == ("spl", 1.0)
    for bad in (":1", "spl:x", "spl:inf"):
        with pytest.raises(ConfigError, match="--reward-term"):
            parse_term(bad)
