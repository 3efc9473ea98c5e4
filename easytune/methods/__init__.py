"""Fine-tuning methods: each decides which steps carry gradients, where the stop-gradients and loss terms are
and when the optimizer steps; ``easytune.Trainer`` executes the plan."""

from easytune.methods.alignprop import AlignProp
from easytune.methods.base import Method, StepPlan
from easytune.methods.draft import DRaFT, DRaFTLV
from easytune.methods.drtune import DRTune
from easytune.methods.easytune import EasyTune, step_weights
from easytune.methods.refl import ReFL

__all__ = [
    "AlignProp",
    "DRTune",
    "DRaFT",
    "DRaFTLV",
    "EasyTune",
    "Method",
    "ReFL",
    "StepPlan",
    "step_weights",
]
