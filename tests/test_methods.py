"""Step plans of every method: which steps carry gradients, stop-gradients, loss terms, updates, draws."""

from __future__ import annotations

import statistics

import pytest
import torch

from easytune.errors import ConfigError
from easytune.methods import AlignProp, DRaFT, DRaFTLV, DRTune, EasyTune, ReFL, StepPlan, step_weights

TIMESTEPS = list(range(981, 0, -20))  # MLD: 50 DDIM steps


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_easytune_plan_last_k_steps_each_with_its_own_update():
    plan = EasyTune(k=10).plan(TIMESTEPS, gen())
    assert [p.index for p in plan] == list(range(50))
    for p in plan[:40]:
        assert not p.grad and p.reward_on is None and not p.update
    for p in plan[40:]:
        assert p.grad and p.detach_input and p.reward_on == "x0_hat" and p.update and p.weight == 1.0
    assert not EasyTune(k=10).frozen_sampler and EasyTune(k=10, variant="chain").frozen_sampler


@pytest.mark.parametrize("k", [1, 2, 10, 50])
def test_weighting_schedules(k):
    idx = list(range(50 - k, 50))
    early, late = step_weights("early", idx, TIMESTEPS), step_weights("late", idx, TIMESTEPS)
    assert step_weights("uniform", idx, TIMESTEPS) == [1.0] * k
    assert sum(early) / k == pytest.approx(1.0) and sum(late) / k == pytest.approx(1.0)
    assert early == sorted(early, reverse=True) and late == sorted(late)  # early: high-noise steps weigh more
    if k > 1:
        assert early[0] > early[-1] and late[0] < late[-1]
    assert step_weights(lambda i, t: t / 1000, idx, TIMESTEPS) == [TIMESTEPS[i] / 1000 for i in idx]
    plan = EasyTune(k=k, weighting="early").plan(TIMESTEPS, gen())
    assert [p.weight for p in plan if p.update] == early


def test_easytune_rejects_bad_options():
    with pytest.raises(ConfigError, match="k must be an integer >= 1"):
        EasyTune(k=0)
    with pytest.raises(ConfigError, match="weighting"):
        EasyTune(k=2, weighting="middle")
    with pytest.raises(ConfigError, match="variant"):
        EasyTune(k=2, variant="tree")
    with pytest.raises(ConfigError, match="non-finite"):
        EasyTune(k=2, weighting=lambda i, t: float("nan")).plan(TIMESTEPS, gen())
    with pytest.raises(ConfigError, match="exceeds"):
        EasyTune(k=51).plan(TIMESTEPS, gen())


@pytest.mark.parametrize("k", [1, 10, 50])
def test_draft_plan_keeps_the_graph_through_the_last_k_steps(k):
    plan = DRaFT(k=k).plan(TIMESTEPS, gen())
    assert len(plan) == 50
    assert not any(p.grad for p in plan[: 50 - k])
    assert all(p.grad and not p.detach_input for p in plan[50 - k :])
    assert (
        [p.index for p in plan if p.reward_on] == [49] and plan[-1].reward_on == "sample" and plan[-1].update
    )
    assert sum(p.update for p in plan) == 1


def test_draft_lv_plan():
    plan = DRaFTLV(n=4).plan(TIMESTEPS, gen())
    chain, extra = plan[:50], plan[50:]
    assert not any(p.grad or p.reward_on for p in chain)
    assert len(extra) == 4 and all(p.renoise and p.grad and p.index == 49 and p.weight == 0.25 for p in extra)
    assert [p.update for p in extra] == [False, False, False, True]


def test_refl_draws_t_min_uniformly_among_the_last_m_steps():
    g = gen(1)
    draws = []
    for _ in range(400):
        plan = ReFL(m=10).plan(TIMESTEPS, g)
        t_min = plan[-1].index
        assert len(plan) == t_min + 1 and plan[-1].grad and plan[-1].reward_on == "x0_hat" and plan[-1].update
        assert not any(p.grad for p in plan[:-1])
        draws.append(t_min)
    assert set(draws) == set(range(40, 50))
    assert ReFL(m=1).plan(TIMESTEPS, g)[-1].index == 49


def test_drtune_plan():
    g = gen(2)
    offsets, stops = set(), set()
    for _ in range(200):
        plan = DRTune(k=4, m=10).plan(TIMESTEPS, g)
        trained = sorted(p.index for p in plan if p.grad)
        t_min = plan[-1].index
        assert all(p.detach_input for p in plan) and plan[-1].reward_on == "x0_hat"
        assert sum(p.update for p in plan) == 1 and len(plan) == t_min + 1
        offset = trained[0]
        assert trained == [i for i in (offset, offset + 12, offset + 24, offset + 36) if i <= t_min]
        offsets.add(offset)
        stops.add(t_min)
    assert offsets == {0, 1, 2}  # 50 - 4 * 12 = 2
    assert stops == set(range(40, 50))
    with pytest.raises(ConfigError, match="m=10 must be <= 9"):
        DRTune(k=3, m=10).plan(list(range(10)), gen())  # offset 1 could follow an early stop at step 0


def test_alignprop_truncation_distribution():
    g = gen(3)
    starts = []
    for _ in range(2000):
        plan = AlignProp().plan(TIMESTEPS, g)
        start = next(p.index for p in plan if p.grad)
        assert all(p.grad and p.checkpoint and not p.detach_input for p in plan[start:])
        assert plan[-1].reward_on == "sample" and sum(p.update for p in plan) == 1
        starts.append(start)
    assert min(starts) >= 1 and max(starts) <= 49
    assert statistics.mean(starts) == pytest.approx(42, abs=0.5)
    assert statistics.pstdev(starts) == pytest.approx(5, abs=0.5)
    uniform = {
        next(p.index for p in AlignProp(distribution="uniform", low=3, high=6).plan(TIMESTEPS, g) if p.grad)
        for _ in range(200)
    }
    assert uniform == {3, 4, 5, 6}
    assert next(p.index for p in AlignProp(mean=60, std=1).plan(TIMESTEPS, g) if p.grad) == 49  # clipped


def test_alignprop_and_planner_errors():
    with pytest.raises(ConfigError, match="high=49"):
        AlignProp(high=49).plan(list(range(10)), gen())
    assert AlignProp().window(10) == (8.4, 1.0, 1, 9)  # derived from the step count
    assert AlignProp().window(50) == (42.0, 5.0, 1, 49)  # AlignProp's 42 +- 5 of 50
    starts = {next(p.index for p in AlignProp().plan(list(range(5)), gen(s)) if p.grad) for s in range(40)}
    assert starts <= {1, 2, 3, 4} and len(starts) >= 2
    for bad in ({"mean": float("nan")}, {"std": float("inf")}, {"std": -1.0}):
        with pytest.raises(ConfigError, match="AlignProp"):
            AlignProp(**bad)
    with pytest.raises(ConfigError, match="distribution"):
        AlignProp(distribution="beta")
    with pytest.raises(ConfigError, match="reward_on"):
        StepPlan(0, reward_on="noise")
    with pytest.raises(ConfigError, match="update needs a loss term"):
        StepPlan(0, update=True)


def test_plans_are_reproducible_from_the_generator():
    for method in (ReFL(m=10), DRTune(k=5, m=10), AlignProp()):
        assert method.plan(TIMESTEPS, gen(9)) == method.plan(TIMESTEPS, gen(9))
