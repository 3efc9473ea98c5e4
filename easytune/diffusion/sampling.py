"""The sampling loop with classifier-free guidance, DDIM or flow Euler (inference; the trainer runs its own
loop)."""

from __future__ import annotations

from typing import Any

import torch

from easytune.diffusion.flow_match import FlowMatchEulerDiscreteScheduler
from easytune.diffusion.guidance import DenoiseFn
from easytune.diffusion.guided_step import GuidedStep
from easytune.diffusion.schedulers import DDIMScheduler, randn_like_diffusers
from easytune.errors import ConfigError


def ddim_sample(
    denoise_fn: DenoiseFn,
    scheduler: DDIMScheduler | FlowMatchEulerDiscreteScheduler,
    x_T: torch.Tensor,
    cond: Any,
    uncond: Any = None,
    *,
    guidance_scale: float = 1.0,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Run ``x_T`` [B, ...] through ``scheduler.timesteps`` (after ``set_timesteps``); return x_0.

    Each step is one batched cond/uncond denoiser call + ``ops.guided_step`` (``GuidedStep``);
    ``uncond=None`` disables guidance. Runs in the caller's grad mode (wrap in ``torch.no_grad()`` for
    inference).
    """
    if not isinstance(scheduler, (DDIMScheduler, FlowMatchEulerDiscreteScheduler)):
        raise ConfigError(
            f"ddim_sample needs an easytune DDIMScheduler or FlowMatchEulerDiscreteScheduler, got "
            f"{type(scheduler).__name__} (convert with easytune.diffusion.sampling_scheduler(scheduler))"
        )
    if scheduler.num_inference_steps is None:
        raise ConfigError("ddim_sample: call scheduler.set_timesteps(num_inference_steps) first")
    step = GuidedStep(denoise_fn, scheduler, guidance_scale=guidance_scale, eta=eta, backend=backend)
    return step.sample(
        x_T, cond, uncond, noise_fn=lambda x: randn_like_diffusers(x.shape, generator, x.device, x.dtype)
    )
