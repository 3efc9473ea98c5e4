"""Beta schedules, computed exactly as diffusers does (float32, same operation order).

``linear``: betas evenly spaced in [beta_start, beta_end]; ``scaled_linear``: evenly spaced in
sqrt-space then squared (Stable Diffusion, MLD); ``squaredcos_cap_v2``: the cosine schedule of
Nichol & Dhariwal (alpha_bar(t) = cos((t + 0.008) / 1.008 * pi / 2)^2, each beta capped at 0.999).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from easytune.errors import ConfigError

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


def cosine_betas(num_train_timesteps: int, max_beta: float = 0.999) -> torch.Tensor:
    """``squaredcos_cap_v2`` betas, float32 [num_train_timesteps]."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [
        min(1 - alpha_bar((i + 1) / num_train_timesteps) / alpha_bar(i / num_train_timesteps), max_beta)
        for i in range(num_train_timesteps)
    ]
    return torch.tensor(betas, dtype=torch.float32)


def make_betas(
    num_train_timesteps: int,
    beta_start: float,
    beta_end: float,
    beta_schedule: str,
    trained_betas: Sequence[float] | torch.Tensor | None = None,
) -> torch.Tensor:
    """Betas float32 [num_train_timesteps] for ``beta_schedule`` (or ``trained_betas`` when given)."""
    if num_train_timesteps < 1:
        raise ConfigError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")
    if trained_betas is not None:
        betas = torch.as_tensor(trained_betas, dtype=torch.float32).flatten()
        if betas.numel() != num_train_timesteps:
            raise ConfigError(
                f"trained_betas has {betas.numel()} values, expected num_train_timesteps="
                f"{num_train_timesteps}"
            )
    elif beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    elif beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    elif beta_schedule == "squaredcos_cap_v2":
        betas = cosine_betas(num_train_timesteps)
    else:
        raise ConfigError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {beta_schedule!r}")
    if not bool(((betas >= 0) & (betas < 1)).all()):
        raise ConfigError(
            f"betas must lie in [0, 1); beta_schedule={beta_schedule!r} with beta_start={beta_start}, "
            f"beta_end={beta_end} gives [{betas.min().item()}, {betas.max().item()}]"
        )
    return betas
