"""``GuidedStep``: one guided DDIM (or flow Euler) step of a sampling schedule, the one copy the sampler, the
trainer, the analysis and the benchmarks share.

For step ``i`` of the scheduler's timesteps: ``denoise_fn`` once on ``cat[x, x], cat[t, t],
cat[cond, uncond]`` (classifier-free guidance in one batch; ``uncond=None``: no guidance), then
``easytune.ops.guided_step`` (guidance, x0_hat, x_prev). The timesteps are host numbers (ints for DDIM,
floats for a flow scheduler); the per-sample alphas (sigmas for a flow) and timestep rows live on the
device, built once per (device, batch size), so a step reads no device value and copies nothing from the
host: loops built on it make no host sync.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from easytune import ops
from easytune.diffusion.guidance import DenoiseFn, concat_conditions, split_outputs
from easytune.errors import ConfigError


class GuidedStep:
    """The guided step of ``scheduler`` (an easytune ``DDIMScheduler`` or ``FlowMatchEulerDiscreteScheduler``
    with ``set_timesteps`` done).

    ``step = GuidedStep(denoise_fn, scheduler, guidance_scale=7.5)``; per trajectory ``cond_in =
    step.conditions(cond, uncond)`` (the doubled condition, built once), then for ``i in range(len(step))``:
    ``guided, x0_hat, x_prev = step(x, i, cond_in)``. ``model_outputs`` and ``update`` are the two halves
    (the trainer runs the first under its grad / checkpoint rules). Shapes: ``x`` [B, ...], every output
    like ``x``; ``denoise_fn(x [2B or B, ...], t int64 [2B or B], cond) -> [2B or B, ...]`` in the scheduler's
    prediction type.
    """

    def __init__(
        self,
        denoise_fn: DenoiseFn,
        scheduler: Any,
        *,
        guidance_scale: float = 1.0,
        eta: float = 0.0,
        backend: str | None = None,
    ) -> None:
        if not hasattr(scheduler, "step_levels") or getattr(scheduler, "num_inference_steps", None) is None:
            raise ConfigError(
                "GuidedStep: scheduler must be an easytune DDIMScheduler or FlowMatchEulerDiscreteScheduler "
                "with set_timesteps(n) done (convert a diffusers one with "
                "easytune.diffusion.sampling_scheduler)"
            )
        for name, value in (("guidance_scale", guidance_scale), ("eta", eta)):  # NaN never reaches a sample
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or value < 0:
                raise ConfigError(f"GuidedStep: {name} must be a finite number >= 0, got {value!r}")
        self.denoise_fn = denoise_fn
        self.guidance_scale = float(guidance_scale)
        self.eta = float(eta)
        self.backend = backend
        self.prediction_type = scheduler.config.prediction_type
        self.flow = self.prediction_type in ops.FLOW_PREDICTION_TYPES
        if self.flow and self.eta > 0:
            raise ConfigError("GuidedStep: the flow Euler step is deterministic; eta must be 0")
        host_timesteps = scheduler.timesteps.cpu()
        self._timestep_dtype = host_timesteps.dtype
        self.timesteps: list[int] | list[float] = host_timesteps.tolist()
        levels = scheduler.step_levels(host_timesteps)  # (alpha_t, alpha_prev) or (sigma, sigma_next)
        self._alphas_host = torch.stack(levels).float()  # [2, n]
        self._rows: dict[tuple[torch.device, int, bool], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.timesteps)

    def _device_rows(self, device: torch.device, batch: int, guided: bool):
        """(alphas_t [n, B], alphas_prev [n, B], timesteps [n, B or 2B]) on ``device``, built once."""
        key = (device, batch, guided)
        rows = self._rows.get(key)
        if rows is None:
            a = self._alphas_host.to(device)
            a_t, a_prev = (v[:, None].expand(-1, batch).contiguous() for v in a)
            t = torch.tensor(self.timesteps, dtype=self._timestep_dtype, device=device)
            t = t[:, None].expand(-1, 2 * batch if guided else batch).contiguous()
            rows = self._rows[key] = (a_t, a_prev, t)
        return rows

    def conditions(self, cond: Any, uncond: Any = None) -> tuple[Any, bool]:
        """What ``__call__`` / ``model_outputs`` take as ``cond_in``: ``cat[cond, uncond]`` (concatenated once
        per trajectory) with guidance, ``cond`` alone without."""
        if uncond is None:
            return cond, False
        return concat_conditions(cond, uncond), True

    def model_outputs(
        self,
        x: torch.Tensor,
        i: int,
        cond_in: tuple[Any, bool],
        *,
        checkpoint: bool = False,
        denoise_fn: DenoiseFn | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(out_cond, out_uncond or None) of step ``i`` for ``x`` [B, ...] (one denoiser call);
        ``checkpoint``: recompute the call's activations in backward; ``denoise_fn``: another callable of
        the same model (e.g. a compiled copy) for this call."""
        fn = self.denoise_fn if denoise_fn is None else denoise_fn
        cond, guided = cond_in
        batch = x.shape[0]
        t = self._device_rows(x.device, batch, guided)[2][i]
        model_in = torch.cat([x, x]) if guided else x
        if checkpoint:
            out = activation_checkpoint(fn, model_in, t, cond, use_reentrant=False)
        else:
            out = fn(model_in, t, cond)
        return split_outputs(out, x, guided)

    def update(
        self,
        out_cond: torch.Tensor,
        out_uncond: torch.Tensor | None,
        x: torch.Tensor,
        i: int,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``ops.guided_step`` of step ``i``: (guided output, x0_hat, x_prev), each like ``x``. ``noise``
        (like ``x``) is required when ``eta > 0``."""
        a_t, a_prev, _ = self._device_rows(x.device, x.shape[0], out_uncond is not None)
        return ops.guided_step(
            out_cond,
            out_uncond,
            x,
            a_t[i],
            a_prev[i],
            guidance_scale=self.guidance_scale,
            prediction_type=self.prediction_type,
            eta=self.eta,
            noise=noise,
            backend=self.backend,
        )

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, i: int) -> torch.Tensor:
        """Forward process to step ``i``'s timestep, ``sqrt(a_t) x0 + sqrt(1 - a_t) noise`` (a flow:
        ``(1 - s) x0 + s noise``), from the device rows."""
        a = self._device_rows(x0.device, x0.shape[0], False)[0][i].to(x0.dtype)
        a = a.reshape(-1, *([1] * (x0.dim() - 1)))
        if self.flow:
            return (1 - a) * x0 + a * noise
        return a**0.5 * x0 + (1 - a) ** 0.5 * noise

    def __call__(
        self, x: torch.Tensor, i: int, cond_in: tuple[Any, bool], noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Step ``i`` from ``x``: (guided output, x0_hat, x_prev)."""
        out_cond, out_uncond = self.model_outputs(x, i, cond_in)
        return self.update(out_cond, out_uncond, x, i, noise)

    def sample(
        self,
        x_T: torch.Tensor,
        cond: Any,
        uncond: Any = None,
        *,
        noise_fn: Any = None,
    ) -> torch.Tensor:
        """Run every step from ``x_T``; returns x_0. ``noise_fn(x) -> noise like x`` supplies the noise of
        each step when ``eta > 0``. Runs in the caller's grad mode."""
        if self.eta > 0 and noise_fn is None:
            raise ConfigError("GuidedStep.sample: eta > 0 needs noise_fn")
        cond_in = self.conditions(cond, uncond)
        x = x_T
        for i in range(len(self)):
            x = self(x, i, cond_in, noise_fn(x) if self.eta > 0 else None)[2]
        return x
