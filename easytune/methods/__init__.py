"""Fine-tuning methods: each decides which steps carry gradients, where the stop-gradients and loss terms are
and when the optimizer steps; ``easytune.Trainer`` executes the plan.

``names()``, ``from_spec("draft-50")`` and ``build(name, **options)`` come from the registry
(``easytune.methods.registry``, torch-free); the classes are imported on first access (PEP 562), so the
command line can read the registry without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from easytune.methods.registry import build, from_spec, info, names, parse_spec

_LAZY = {
    "AlignProp": "easytune.methods.alignprop",
    "DRTune": "easytune.methods.drtune",
    "DRaFT": "easytune.methods.draft",
    "DRaFTLV": "easytune.methods.draft",
    "EasyTune": "easytune.methods.easytune",
    "Method": "easytune.methods.base",
    "ReFL": "easytune.methods.refl",
    "StepPlan": "easytune.methods.base",
    "step_weights": "easytune.methods.easytune",
}

__all__ = [*sorted(_LAZY), "build", "from_spec", "info", "names", "parse_spec"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'easytune.methods' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
