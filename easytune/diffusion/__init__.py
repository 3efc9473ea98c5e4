"""Diffusion schedulers (diffusers-compatible DDIM / DDPM), beta schedules, guidance and DDIM sampling."""

from easytune.diffusion.guidance import concat_conditions, guided_denoise
from easytune.diffusion.guided_step import GuidedStep
from easytune.diffusion.sampling import ddim_sample
from easytune.diffusion.schedulers import (
    DDIMScheduler,
    DDPMScheduler,
    SchedulerConfig,
    SchedulerOutput,
    randn_like_diffusers,
)
from easytune.diffusion.schedules import BETA_SCHEDULES, make_betas

__all__ = [
    "BETA_SCHEDULES",
    "DDIMScheduler",
    "DDPMScheduler",
    "GuidedStep",
    "SchedulerConfig",
    "SchedulerOutput",
    "concat_conditions",
    "ddim_sample",
    "guided_denoise",
    "make_betas",
    "randn_like_diffusers",
]
