"""DRTune: stop-gradient on every denoiser input, a few evenly spaced trained steps, early stop."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from easytune.errors import ConfigError
from easytune.methods.base import Method, StepPlan, check_count, check_fits, randint


class DRTune(Method):
    """DRTune(k, m): per trajectory draw an offset s in [0, n - (n // k) * k] and train the ``k`` steps
    s, s + n // k, ..., and an early-stop step t_min uniformly among the last ``m`` steps. Every denoiser
    input is detached; trained steps keep their output's graph, the others run without grad; gradients
    reach earlier steps only through the affine DDIM update of x_t. At t_min: reward on
    ``decode(x0_hat)``, one update, stop.
    """

    def __init__(self, k: int = 10, m: int = 10) -> None:
        self.k = check_count("DRTune", "k", k)
        self.m = check_count("DRTune", "m", m)

    def plan(self, timesteps: Sequence[int], generator: torch.Generator) -> list[StepPlan]:
        n = len(timesteps)
        check_fits("DRTune", "k", self.k, n)
        check_fits("DRTune", "m", self.m, n)
        spacing = n // self.k
        if self.m > spacing * self.k:
            raise ConfigError(
                f"DRTune: m={self.m} must be <= {spacing * self.k} for k={self.k} and {n} steps, so "
                "that a trained step always precedes the early stop"
            )
        offset = randint(0, n - spacing * self.k, generator)
        trained = {offset + j * spacing for j in range(self.k)}
        t_min = randint(n - self.m, n - 1, generator)
        plans = [StepPlan(i, grad=i in trained) for i in range(t_min)]
        return plans + [StepPlan(t_min, grad=t_min in trained, reward_on="x0_hat", update=True)]
