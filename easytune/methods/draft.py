"""DRaFT-K (truncated backprop through sampling) and DRaFT-LV (low-variance K = 1)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from easytune.methods.base import Method, StepPlan, check_count, check_fits, no_grad_steps


def backprop_tail(n_steps: int, first_grad: int, checkpoint: bool = False) -> list[StepPlan]:
    """Steps before ``first_grad`` without grad, the rest with the full graph (input not detached), reward on
    the final sample and one update: the DRaFT-K / AlignProp trajectory."""
    plans = no_grad_steps(first_grad)
    plans += [
        StepPlan(i, grad=True, detach_input=False, checkpoint=checkpoint) for i in range(first_grad, n_steps)
    ]
    last = plans[-1]
    plans[-1] = StepPlan(
        last.index, grad=True, detach_input=False, reward_on="sample", update=True, checkpoint=checkpoint
    )
    return plans


class DRaFT(Method):
    """DRaFT-K: the last ``k`` steps keep the full graph (gradients flow through the chain), the earlier ones
    run without grad; one update on ``-mean reward(decode(x_0))``. ``k`` = all steps: full backprop."""

    def __init__(self, k: int = 10) -> None:
        self.k = check_count("DRaFT", "k", k)

    def plan(
        self, timesteps: Sequence[int], generator: torch.Generator, prediction_type: str = "epsilon"
    ) -> list[StepPlan]:
        n = len(timesteps)
        check_fits("DRaFT", "k", self.k, n)
        return backprop_tail(n, n - self.k)


class DRaFTLV(Method):
    """DRaFT-LV: sample x_0 without grad, then ``n`` times: re-noise x_0 to the last sampling timestep
    with fresh noise, denoise it once with grad and back-propagate ``-mean reward / n``; one update with
    the averaged gradient (Clark et al.: lower-variance K = 1 gradient)."""

    def __init__(self, n: int = 2) -> None:
        self.n = check_count("DRaFTLV", "n", n)

    def plan(
        self, timesteps: Sequence[int], generator: torch.Generator, prediction_type: str = "epsilon"
    ) -> list[StepPlan]:
        last = len(timesteps) - 1
        plans = no_grad_steps(last + 1)
        plans += [
            StepPlan(
                last, grad=True, renoise=True, reward_on="sample", weight=1.0 / self.n, update=j == self.n - 1
            )
            for j in range(self.n)
        ]
        return plans
