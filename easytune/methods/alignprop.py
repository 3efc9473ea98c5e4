"""AlignProp: randomized truncated backprop through sampling with gradient checkpointing."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from easytune.errors import ConfigError
from easytune.methods.base import Method, StepPlan, check_count, randint
from easytune.methods.draft import backprop_tail

DISTRIBUTIONS = ("normal", "uniform")


class AlignProp(Method):
    """Per trajectory draw the first step that keeps a graph, ``start``: ``round(N(mean, std))`` clipped to
    [low, high] (``distribution="normal"``, AlignProp's 42 +- 5 of 50 steps) or uniform on [low, high]. Steps
    before ``start`` run without grad (their eps is detached), the rest keep the full graph as in DRaFT, each
    denoiser call gradient-checkpointed (``checkpoint=True``); reward on the final sample, one update.
    """

    def __init__(
        self,
        mean: float = 42.0,
        std: float = 5.0,
        low: int = 1,
        high: int = 49,
        distribution: str = "normal",
        checkpoint: bool = True,
    ) -> None:
        if distribution not in DISTRIBUTIONS:
            raise ConfigError(f"AlignProp: distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
        self.low = check_count("AlignProp", "low", low, low=0)
        self.high = check_count("AlignProp", "high", high, low=low)
        if std < 0:
            raise ConfigError(f"AlignProp: std must be >= 0, got {std}")
        self.mean, self.std = float(mean), float(std)
        self.distribution = distribution
        self.checkpoint = checkpoint

    def plan(
        self, timesteps: Sequence[int], generator: torch.Generator, prediction_type: str = "epsilon"
    ) -> list[StepPlan]:
        n = len(timesteps)
        if self.high > n - 1:
            raise ConfigError(
                f"AlignProp: high={self.high} must be <= {n - 1} (the scheduler has {n} sampling "
                "steps); set low/high/mean for this step count"
            )
        if self.distribution == "uniform":
            start = randint(self.low, self.high, generator)
        else:
            draw = self.mean + self.std * float(torch.randn((), generator=generator, dtype=torch.float64))
            start = min(max(round(draw), self.low), self.high)
        return backprop_tail(n, start, checkpoint=self.checkpoint)
