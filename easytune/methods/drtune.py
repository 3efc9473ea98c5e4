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

    For epsilon and v prediction x0_hat at t_min is affine in x_t, so the reward gradient flows through x_t
    into the trained steps. For x0 prediction (``prediction_type="sample"``, and ``"flow_sample"`` for
    x0-predicting flow models) x0_hat IS the network output and depends on x_t only through the network:
    the t_min step then keeps its graph with its input attached (one input-Jacobian, at that step only), so
    the gradient reaches t_min's weights and, through x_t, the trained steps (docs/methods.md, "DRTune on
    x0- and v-prediction models").
    """

    def __init__(self, k: int = 10, m: int = 10) -> None:
        self.k = check_count("DRTune", "k", k)
        self.m = check_count("DRTune", "m", m)

    def plan(
        self, timesteps: Sequence[int], generator: torch.Generator, prediction_type: str = "epsilon"
    ) -> list[StepPlan]:
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
        if prediction_type in ("sample", "flow_sample"):  # x0_hat = network output: keep its input's graph
            last = StepPlan(t_min, grad=True, detach_input=False, reward_on="x0_hat", update=True)
        else:
            last = StepPlan(t_min, grad=t_min in trained, reward_on="x0_hat", update=True)
        return plans + [last]
