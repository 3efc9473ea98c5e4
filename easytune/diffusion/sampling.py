"""The DDIM sampling loop with classifier-free guidance (inference; the trainer runs its own loop)."""

from __future__ import annotations

from typing import Any

import torch

from easytune import ops
from easytune.diffusion.guidance import DenoiseFn, guided_denoise
from easytune.diffusion.schedulers import DDIMScheduler, randn_like_diffusers
from easytune.errors import ConfigError


def ddim_sample(
    denoise_fn: DenoiseFn,
    scheduler: DDIMScheduler,
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

    Each step is one batched cond/uncond denoiser call + ``ops.guided_step``; ``uncond=None`` disables
    guidance. Runs in the caller's grad mode (wrap in ``torch.no_grad()`` for inference).
    """
    if not isinstance(scheduler, DDIMScheduler):
        raise ConfigError(
            f"ddim_sample needs an easytune DDIMScheduler, got {type(scheduler).__name__} "
            "(convert with DDIMScheduler.from_config(scheduler))"
        )
    if scheduler.num_inference_steps is None:
        raise ConfigError("ddim_sample: call scheduler.set_timesteps(num_inference_steps) first")
    x = x_T
    batch = x.shape[0]
    timesteps = scheduler.timesteps.cpu()
    alphas_t, alphas_prev = (
        a.to(x.device) for a in scheduler.alpha_pair(timesteps)
    )  # one transfer, no syncs
    for i, t in enumerate(timesteps.to(x.device)):
        t_batch = t.expand(batch)
        alpha_t, alpha_prev = (a[i].expand(batch).contiguous() for a in (alphas_t, alphas_prev))
        out_cond, out_uncond = guided_denoise(denoise_fn, x, t_batch, cond, uncond)
        noise = randn_like_diffusers(x.shape, generator, x.device, x.dtype) if eta > 0 else None
        _, _, x = ops.guided_step(
            out_cond,
            out_uncond,
            x,
            alpha_t,
            alpha_prev,
            guidance_scale=guidance_scale,
            prediction_type=scheduler.config.prediction_type,
            eta=eta,
            noise=noise,
            backend=backend,
        )
    return x
