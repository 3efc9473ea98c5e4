"""easytune: step-aware reward fine-tuning of text-to-motion diffusion models.

``import easytune as et`` is cheap: it touches no device and imports no optional dependency.
The public names below are resolved lazily on first access.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Trainer": ("easytune.trainer", "Trainer"),
    "methods": ("easytune.methods", None),
    "ops": ("easytune.ops", None),
    "diffusion": ("easytune.diffusion", None),
    "models": ("easytune.models", None),
    "data": ("easytune.data", None),
    "text": ("easytune.text", None),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'easytune' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value
