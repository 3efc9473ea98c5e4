"""Schedulers (diffusers-compatible DDIM / DDPM, flow-matching Euler), beta schedules, guidance, sampling."""

from easytune.diffusion.flow_match import FlowMatchEulerDiscreteScheduler
from easytune.diffusion.guidance import concat_conditions, guided_denoise
from easytune.diffusion.guided_step import GuidedStep
from easytune.diffusion.loading import is_flow, sampling_scheduler, training_scheduler
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
    "FlowMatchEulerDiscreteScheduler",
    "GuidedStep",
    "SchedulerConfig",
    "SchedulerOutput",
    "concat_conditions",
    "ddim_sample",
    "guided_denoise",
    "is_flow",
    "make_betas",
    "randn_like_diffusers",
    "sampling_scheduler",
    "training_scheduler",
]
