"""The contract between a fine-tuning method and the trainer.

A method turns the sampling timesteps of one trajectory into a list of ``StepPlan`` (drawing any random
choice from the trainer's generator); the trainer executes the list in order. Indices count sampling
steps from 0 (x_T, the noisiest) to n_steps - 1 (the step that returns x_0). A list that ends before
n_steps - 1 stops the trajectory early.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from easytune.config import check_int
from easytune.errors import ConfigError

REWARD_TARGETS = ("x0_hat", "sample")


@dataclass(frozen=True)
class StepPlan:
    """What the trainer does at one denoising step.

    index:        position in the scheduler's timesteps (0 = first, noisiest).
    grad:         the denoiser output keeps its autograd graph (else it runs under ``no_grad``).
    detach_input: the denoiser sees ``x_t.detach()`` (stop-gradient through its input). The DDIM update
                  itself always uses the undetached ``x_t``, so a graph carried by ``x_t`` still flows
                  through the affine step (DRTune).
    reward_on:    ``"x0_hat"`` (the one-step prediction) or ``"sample"`` (x_{t-1}, the final sample at the
                  last step): add the loss term ``-weight * reward_weight * mean_b reward_b`` here and
                  back-propagate it (gradients accumulate until ``update``); None: no loss term.
    weight:       lambda_t of that loss term.
    update:       after the backward: NaN/inf guard, gradient clipping, optimizer step, LR-scheduler step,
                  zero_grad. The chain continues from a detached sample after every loss term.
    renoise:      instead of the running sample, start from the chain's final sample (detached)
                  re-noised to this step's timestep with fresh noise (DRaFT-LV).
    checkpoint:   gradient-checkpoint this step's denoiser call (recompute activations in backward).
    normalize_grad: with ``update``: scale the accumulated gradient to unit norm before clipping and the
                  optimizer step (on the device, no host read), so every such update has the same size.
    """

    index: int
    grad: bool = False
    detach_input: bool = True
    reward_on: str | None = None
    weight: float = 1.0
    update: bool = False
    renoise: bool = False
    checkpoint: bool = False
    normalize_grad: bool = False

    def __post_init__(self) -> None:
        if self.reward_on is not None and self.reward_on not in REWARD_TARGETS:
            raise ConfigError(
                f"StepPlan.reward_on must be None or one of {REWARD_TARGETS}, got {self.reward_on!r}"
            )
        if self.update and self.reward_on is None:
            raise ConfigError("StepPlan.update needs a loss term at the same step (reward_on)")


class Method:
    """Base class: subclasses implement ``plan``. ``frozen_sampler`` (EasyTune's chain variant) makes the
    trainer keep the sampling weights fixed for the whole trajectory and apply updates to a policy copy
    that replaces them at the end."""

    frozen_sampler: bool = False

    def plan(
        self, timesteps: Sequence[int], generator: torch.Generator, prediction_type: str = "epsilon"
    ) -> list[StepPlan]:
        """The step plans of one trajectory over ``timesteps`` (descending ints, one per sampling step).

        ``prediction_type`` is the scheduler's (``epsilon`` | ``sample`` | ``v_prediction`` and the flow
        models' ``flow_prediction`` | ``flow_sample``): where the one-step prediction x0_hat depends on x_t
        only through the network (``sample``, ``flow_sample``), a method whose
        gradient path runs through x_t must keep that step's input attached (DRTune does).
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


def check_count(method: str, name: str, value: int, low: int = 1) -> int:
    """Validate an integer option at construction time."""
    check_int(f"{method}: {name}", value, low)
    return value


def check_fits(method: str, name: str, value: int, n_steps: int) -> None:
    """A step count must not exceed the trajectory length (checked when the trajectory is known)."""
    if value > n_steps:
        raise ConfigError(f"{method}: {name}={value} exceeds the {n_steps} sampling steps of the scheduler")


def randint(low: int, high: int, generator: torch.Generator) -> int:
    """Uniform integer in [low, high] (inclusive) from ``generator``."""
    return int(torch.randint(low, high + 1, (1,), generator=generator))


def no_grad_steps(stop: int) -> list[StepPlan]:
    """Plans for steps 0 .. stop-1 that only advance the chain."""
    return [StepPlan(i) for i in range(stop)]
