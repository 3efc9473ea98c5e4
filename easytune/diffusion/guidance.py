"""Classifier-free guidance with the conditional and unconditional passes in ONE denoiser call.

``cond`` / ``uncond`` are a tensor [B, ...] or a dict / list / tuple of such tensors (same structure in
both, e.g. ``{"text": [B, 1, 768], "lengths": [B]}``); they are concatenated leaf by leaf along dim 0.
The guided combination itself (``uncond + w * (cond - uncond)``) is done by ``easytune.ops.guided_step``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from easytune.errors import ConfigError

DenoiseFn = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


def concat_conditions(cond: Any, uncond: Any, path: str = "cond") -> Any:
    """``cat([cond, uncond], dim=0)`` leaf by leaf for tensors and dicts / lists / tuples of tensors."""
    if isinstance(cond, torch.Tensor):
        if not isinstance(uncond, torch.Tensor) or cond.shape[1:] != uncond.shape[1:]:
            got = tuple(uncond.shape) if isinstance(uncond, torch.Tensor) else type(uncond).__name__
            raise ConfigError(
                f"uncond must match {path} (shape {tuple(cond.shape)} apart from the batch size), got {got}"
            )
        return torch.cat([cond, uncond.to(cond.dtype)], dim=0)
    if isinstance(cond, dict):
        if not isinstance(uncond, dict) or set(cond) != set(uncond):
            raise ConfigError(f"uncond must be a dict with the keys of {path} {sorted(cond)}")
        return {k: concat_conditions(cond[k], uncond[k], f"{path}[{k!r}]") for k in cond}
    if isinstance(cond, (list, tuple)):
        if not isinstance(uncond, (list, tuple)) or len(cond) != len(uncond):
            raise ConfigError(f"uncond must be a sequence of {len(cond)} items like {path}")
        return type(cond)(
            concat_conditions(c, u, f"{path}[{i}]") for i, (c, u) in enumerate(zip(cond, uncond))
        )
    raise ConfigError(
        f"{path} must be a tensor or a dict / list / tuple of tensors, got {type(cond).__name__}"
    )


def guided_denoise(
    denoise_fn: DenoiseFn, sample: torch.Tensor, timesteps: torch.Tensor, cond: Any, uncond: Any = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run ``denoise_fn(cat[x, x], cat[t, t], cat[cond, uncond])`` once; split into (cond, uncond).

    ``sample`` [B, ...], ``timesteps`` int64 [B]. With ``uncond=None`` (guidance off) runs
    ``denoise_fn(sample, timesteps, cond)`` and returns ``(out, None)``.
    """
    if uncond is None:
        return split_outputs(denoise_fn(sample, timesteps, cond), sample, guided=False)
    out = denoise_fn(
        torch.cat([sample, sample]), torch.cat([timesteps, timesteps]), concat_conditions(cond, uncond)
    )
    return split_outputs(out, sample, guided=True)


def split_outputs(out: Any, sample: torch.Tensor, guided: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The denoiser's output for ``sample`` [B, ...] (``[2B, ...]`` when ``guided``: cond rows first) as
    (out_cond, out_uncond or None); ConfigError unless it is a tensor of that shape."""
    batch = sample.shape[0]
    expected = (2 * batch if guided else batch, *sample.shape[1:])
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"denoise_fn must return a tensor shaped like its input x_t {expected}, got {got}")
    return (out[:batch], out[batch:]) if guided else (out, None)
