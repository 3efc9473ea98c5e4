"""EasyTune: step-aware fine-tuning (one optimizer update per selected step, no recursive gradient)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from easytune.errors import ConfigError
from easytune.methods.base import Method, StepPlan, check_count, check_fits

WEIGHTINGS = ("uniform", "early", "late", "snr", "gradnorm")
VARIANTS = ("step", "chain")
Weighting = str | Callable[[int, int], float]


def step_weights(
    weighting: Weighting,
    indices: Sequence[int],
    timesteps: Sequence[int],
    alphas_cumprod: Sequence[float] | None = None,
) -> list[float]:
    """Per-step loss weights lambda for the selected steps ``indices`` (ascending = sampling order).

    uniform: 1. early: linear ramp 2(K-j)/(K+1) for the j-th selected step (j=0 the noisiest), so high-noise
    steps weigh more; late: 2(j+1)/(K+1). Both ramps average to 1 (the same total step size as uniform).
    snr (adaptive): proportional to the signal fraction ``alpha_bar_t = SNR_t / (1 + SNR_t)`` of each step
    (``alphas_cumprod``: alpha_bar of every timestep in ``timesteps``), normalised to mean 1: a step whose
    one-step prediction is mostly noise weighs less. gradnorm: 1 here; the trainer scales each step's
    gradient to unit norm (``StepPlan.normalize_grad``), so no step dominates the update.
    A callable gets ``(step_index, timestep)`` and returns the weight.
    """
    k = len(indices)
    if callable(weighting):
        weights = [float(weighting(i, int(timesteps[i]))) for i in indices]
    elif weighting in ("uniform", "gradnorm"):
        weights = [1.0] * k
    elif weighting == "snr":
        if alphas_cumprod is None:
            raise ConfigError("EasyTune: weighting 'snr' needs the alpha_bar of the timesteps")
        signal = [float(alphas_cumprod[i]) for i in indices]
        weights = [k * s / sum(signal) for s in signal]
    elif weighting == "early":
        weights = [2.0 * (k - j) / (k + 1) for j in range(k)]
    elif weighting == "late":
        weights = [2.0 * (j + 1) / (k + 1) for j in range(k)]
    else:
        raise ConfigError(
            f"EasyTune: weighting must be one of {WEIGHTINGS} or a callable (step_index, timestep) "
            f"-> float, got {weighting!r}"
        )
    for i, w in zip(indices, weights):
        if not math.isfinite(w):
            raise ConfigError(f"EasyTune: weighting gave a non-finite weight {w} at step {i}")
    return weights


class EasyTune(Method):
    """At each of the last ``k`` sampling steps: denoise ``x_t.detach()`` with grad, score the one-step
    prediction ``decode(x0_hat)``, back-propagate ``-lambda_t * mean reward`` and update the weights at once;
    the chain continues from the detached x_{t-1}. K updates per trajectory, one denoiser graph alive.

    variant ``"step"``: later steps sample with the updated weights (the paper's main setting).
    variant ``"chain"``: the trajectory and all K gradients use the weights of the trajectory's start;
    the K updates go to a policy copy that replaces them after the trajectory.
    """

    def __init__(self, k: int = 10, weighting: Weighting = "uniform", variant: str = "step") -> None:
        self.k = check_count("EasyTune", "k", k)
        if not callable(weighting) and weighting not in WEIGHTINGS:
            raise ConfigError(
                f"EasyTune: weighting must be one of {WEIGHTINGS} or a callable, got {weighting!r}"
            )
        if variant not in VARIANTS:
            raise ConfigError(f"EasyTune: variant must be one of {VARIANTS}, got {variant!r}")
        self.weighting = weighting
        self.variant = variant
        self.frozen_sampler = variant == "chain"
        # the trainer passes alphas_cumprod (alpha_bar of each timestep) to the plan of a method that asks
        self.wants_schedule = weighting == "snr"

    def plan(
        self,
        timesteps: Sequence[int],
        generator: torch.Generator,
        prediction_type: str = "epsilon",
        alphas_cumprod: Sequence[float] | None = None,
    ) -> list[StepPlan]:
        n = len(timesteps)
        check_fits("EasyTune", "k", self.k, n)
        selected = list(range(n - self.k, n))
        weights = dict(zip(selected, step_weights(self.weighting, selected, timesteps, alphas_cumprod)))
        normalize = self.weighting == "gradnorm"
        return [
            StepPlan(
                i, grad=True, reward_on="x0_hat", weight=weights[i], update=True, normalize_grad=normalize
            )
            if i in weights
            else StepPlan(i)
            for i in range(n)
        ]
