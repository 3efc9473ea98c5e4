"""AlignProp: randomized truncated backprop through sampling with gradient checkpointing."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from easytune.errors import ConfigError
from easytune.methods.base import Method, StepPlan, check_count, randint
from easytune.methods.draft import backprop_tail

DISTRIBUTIONS = ("normal", "uniform")


class AlignProp(Method):
    """Per trajectory draw the first step that keeps a graph, ``start``: ``round(N(mean, std))`` clipped to
    [low, high] (``distribution="normal"``) or uniform on [low, high]. Steps before ``start`` run without
    grad (their eps is detached), the rest keep the full graph as in DRaFT, each denoiser call
    gradient-checkpointed (``checkpoint=True``); reward on the final sample, one update.

    Unset (None) values follow the number of sampling steps n: ``mean = 0.84 n``, ``std = 0.1 n``,
    ``low = 1``, ``high = n - 1`` (AlignProp's 42 +- 5 of 50 steps at n = 50).
    """

    def __init__(
        self,
        mean: float | None = None,
        std: float | None = None,
        low: int | None = None,
        high: int | None = None,
        distribution: str = "normal",
        checkpoint: bool = True,
    ) -> None:
        if distribution not in DISTRIBUTIONS:
            raise ConfigError(f"AlignProp: distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
        for name, value in (("mean", mean), ("std", std)):
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise ConfigError(f"AlignProp: {name} must be a finite number, got {value!r}")
        if std is not None and std < 0:
            raise ConfigError(f"AlignProp: std must be >= 0, got {std}")
        self.low = None if low is None else check_count("AlignProp", "low", low, low=0)
        self.high = None if high is None else check_count("AlignProp", "high", high, low=self.low or 0)
        self.mean = None if mean is None else float(mean)
        self.std = None if std is None else float(std)
        self.distribution = distribution
        self.checkpoint = checkpoint

    def window(self, n: int) -> tuple[float, float, int, int]:
        """(mean, std, low, high) for ``n`` sampling steps (unset values derived from n)."""
        low = 1 if self.low is None else self.low
        high = n - 1 if self.high is None else self.high
        mean = 0.84 * n if self.mean is None else self.mean
        std = 0.1 * n if self.std is None else self.std
        if high > n - 1 or low > high:
            raise ConfigError(
                f"AlignProp: need low <= high <= {n - 1} (the scheduler has {n} sampling steps), got "
                f"low={low}, high={high}; set --low / --high for this step count"
            )
        return mean, std, low, high

    def plan(
        self, timesteps: Sequence[int], generator: torch.Generator, prediction_type: str = "epsilon"
    ) -> list[StepPlan]:
        n = len(timesteps)
        mean, std, low, high = self.window(n)
        if self.distribution == "uniform":
            start = randint(low, high, generator)
        else:
            draw = mean + std * float(torch.randn((), generator=generator, dtype=torch.float64))
            start = min(max(round(draw), low), high)
        return backprop_tail(n, start, checkpoint=self.checkpoint)
