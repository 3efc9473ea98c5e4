"""Which scheduler a model's ``scheduler`` config asks for: DDIM / DDPM for diffusion models, the flow
Euler scheduler for flow-matching ones (config ``_class_name: FlowMatchEulerDiscreteScheduler``, as in
diffusers' ``scheduler_config.json``, or a flow ``prediction_type``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from easytune.diffusion.flow_match import FlowMatchEulerDiscreteScheduler
from easytune.diffusion.schedulers import DDIMScheduler, DDPMScheduler
from easytune.errors import ConfigError
from easytune.ops.guided_step import FLOW_PREDICTION_TYPES

FLOW_CLASS = "FlowMatchEulerDiscreteScheduler"
DIFFUSION_CLASSES = ("DDIMScheduler", "DDPMScheduler")


def is_flow(config: Mapping[str, Any] | Any) -> bool:
    """Whether a scheduler config (or a scheduler, by its ``.config``) describes a flow-matching model."""
    if not isinstance(config, Mapping):
        config = getattr(config, "config", None)
        if not isinstance(config, Mapping):
            raise ConfigError(
                f"expected a scheduler config mapping or a scheduler, got {type(config).__name__}"
            )
    name = config.get("_class_name")
    if name is not None and name != FLOW_CLASS and name not in DIFFUSION_CLASSES:
        raise ConfigError(
            f"scheduler _class_name {name!r} is not supported (expected {FLOW_CLASS} or one of "
            f"{DIFFUSION_CLASSES})"
        )
    return name == FLOW_CLASS or config.get("prediction_type") in FLOW_PREDICTION_TYPES


def sampling_scheduler(config: Mapping[str, Any] | Any) -> DDIMScheduler | FlowMatchEulerDiscreteScheduler:
    """The sampler of a model: its flow Euler scheduler, or DDIM for a diffusion model."""
    cls = FlowMatchEulerDiscreteScheduler if is_flow(config) else DDIMScheduler
    return cls.from_config(config)


def training_scheduler(config: Mapping[str, Any] | Any) -> DDPMScheduler | FlowMatchEulerDiscreteScheduler:
    """The forward process a model is trained on: the flow's interpolation, or DDPM's noising."""
    cls = FlowMatchEulerDiscreteScheduler if is_flow(config) else DDPMScheduler
    return cls.from_config(config)
