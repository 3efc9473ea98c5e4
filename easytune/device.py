"""Device names on the command line and in configs: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``."""

from __future__ import annotations

import torch

from easytune.errors import ConfigError

DEVICE_CHOICES = "auto | cpu | cuda | cuda:N"


def resolve_device(spec: str | torch.device, option: str = "--device") -> torch.device:
    """``auto`` -> ``cuda`` when a CUDA device is usable, else ``cpu``; ``cpu``, ``cuda`` and ``cuda:N`` are
    checked against this machine. Raises ``ConfigError`` naming ``option`` for anything else or for a CUDA
    device this torch build or machine does not have."""
    text = str(spec).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ConfigError(f"{option} must be one of {DEVICE_CHOICES}, got {spec!r}") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ConfigError(f"{option} must be one of {DEVICE_CHOICES}, got {spec!r} ({device.type!r} devices)")
    if torch.version.cuda is None:
        raise ConfigError(
            f"{option} {spec}: this torch build ({torch.__version__}) has no CUDA support; use --device cpu "
            "or install a CUDA build of torch"
        )
    if not torch.cuda.is_available():
        raise ConfigError(f"{option} {spec}: no CUDA device is visible on this machine; use --device cpu")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ConfigError(
            f"{option} {spec}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}"
        )
    return device
