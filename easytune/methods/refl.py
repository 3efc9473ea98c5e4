"""ReFL: one gradient step at a random late timestep, reward on its one-step prediction (early stop)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from easytune.methods.base import Method, StepPlan, check_count, check_fits, no_grad_steps, randint


class ReFL(Method):
    """ReFL-M: draw t_min uniformly among the last ``m`` sampling steps, run without grad up to it, denoise
    once with grad, score ``decode(x0_hat)`` at t_min, one update, stop the trajectory there."""

    def __init__(self, m: int = 10) -> None:
        self.m = check_count("ReFL", "m", m)

    def plan(
        self, timesteps: Sequence[int], generator: torch.Generator, prediction_type: str = "epsilon"
    ) -> list[StepPlan]:
        n = len(timesteps)
        check_fits("ReFL", "m", self.m, n)
        t_min = randint(n - self.m, n - 1, generator)
        return no_grad_steps(t_min) + [StepPlan(t_min, grad=True, reward_on="x0_hat", update=True)]
