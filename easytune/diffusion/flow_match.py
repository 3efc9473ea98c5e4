"""Flow matching: ``FlowMatchEulerDiscreteScheduler`` with diffusers' names, tables and step arithmetic.

The flow interpolates data and noise linearly, ``x_t = (1 - sigma) x0 + sigma eps``, with sigma from 1
(noise) to 0 (data); the model is called at ``timestep = sigma * num_train_timesteps`` (a float) and
predicts the velocity ``v = eps - x0`` (``prediction_type="flow_prediction"``, diffusers' only kind) or x0
(``"flow_sample"``, an easytune extension for x0-predicting flow models). One Euler step is
``x_next = x + (sigma_next - sigma) v``: ``easytune.ops.guided_step`` with a flow prediction type, the one
copy of the formula, shared with the trainer.

Tables and ``set_timesteps`` follow ``diffusers.FlowMatchEulerDiscreteScheduler`` (static ``shift``,
dynamic shifting with ``mu``, ``shift_terminal``, custom ``sigmas``) and are bit-identical to it; so is
``step`` (float32 arithmetic for float32 and lower-precision samples, like diffusers' upcast). Differences,
all raising ``ConfigError`` rather than changing results: Karras / exponential / beta sigmas,
``invert_sigmas`` and ``stochastic_sampling`` are not supported; a float64 sample is stepped in float64
(diffusers rounds it to float32 first). ``step`` is stateless: the step is found from the timestep's value
(one of ``timesteps``), never from a counter, so steps can be taken in any order and per sample.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from easytune import ops
from easytune.diffusion.schedulers import SchedulerConfig, SchedulerOutput, constructor_kwargs
from easytune.errors import ConfigError
from easytune.ops.guided_step import FLOW_PREDICTION_TYPES

_UNSUPPORTED = {
    "invert_sigmas": "inverted sigma schedules (Mochi) are not supported",
    "use_karras_sigmas": "Karras sigmas are not supported",
    "use_exponential_sigmas": "exponential sigmas are not supported",
    "use_beta_sigmas": "beta sigmas are not supported",
    "stochastic_sampling": "stochastic sampling is not supported (the step is the deterministic Euler step)",
}


class FlowMatchEulerDiscreteScheduler:
    """Euler sampler of a flow-matching model, numerically equal to diffusers' scheduler of the same name.

    ``FlowMatchEulerDiscreteScheduler(shift=3.0)`` then ``set_timesteps(50)``: ``timesteps`` float32 [50]
    (descending, ``sigmas[:-1] * num_train_timesteps``), ``sigmas`` float32 [51] ending with 0.
    """

    order = 1
    init_noise_sigma = 1.0

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        base_shift: float | None = 0.5,
        max_shift: float | None = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        invert_sigmas: bool = False,
        shift_terminal: float | None = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        time_shift_type: str = "exponential",
        stochastic_sampling: bool = False,
        prediction_type: str = "flow_prediction",
    ) -> None:
        name = type(self).__name__
        options = dict(locals())
        for key, why in _UNSUPPORTED.items():
            if options[key]:
                raise ConfigError(f"{name}: {key}=True: {why}; pass False")
        if prediction_type not in FLOW_PREDICTION_TYPES:
            raise ConfigError(
                f"{name}: prediction_type must be one of {FLOW_PREDICTION_TYPES}, got {prediction_type!r}"
            )
        if not isinstance(num_train_timesteps, int) or num_train_timesteps < 1:
            raise ConfigError(f"{name}: num_train_timesteps must be an int >= 1, got {num_train_timesteps!r}")
        if not (isinstance(shift, (int, float)) and math.isfinite(shift) and shift > 0):
            raise ConfigError(f"{name}: shift must be a finite number > 0, got {shift!r}")
        if time_shift_type not in ("exponential", "linear"):
            raise ConfigError(
                f"{name}: time_shift_type must be 'exponential' or 'linear', got {time_shift_type!r}"
            )
        if shift_terminal is not None and not 0 <= shift_terminal < 1:
            raise ConfigError(f"{name}: shift_terminal must be in [0, 1) or None, got {shift_terminal!r}")
        values = {k: v for k, v in options.items() if k not in ("self", "name")}
        self.config = SchedulerConfig({"_class_name": name, **values})
        # diffusers' training table: timesteps N..1 in float32, sigmas = t / N (statically shifted)
        timesteps = np.linspace(1, num_train_timesteps, num_train_timesteps, dtype=np.float32)[::-1].copy()
        sigmas = torch.from_numpy(timesteps) / num_train_timesteps
        if not use_dynamic_shifting:
            sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
        self.shift = float(shift)
        self.train_sigmas = sigmas
        self.train_timesteps = sigmas * num_train_timesteps
        self.sigmas = sigmas
        self.timesteps = self.train_timesteps
        self.sigma_min = float(sigmas[-1])
        self.sigma_max = float(sigmas[0])
        self.num_inference_steps: int | None = None

    @classmethod
    def from_config(cls, config: Any, **overrides: Any) -> FlowMatchEulerDiscreteScheduler:
        """Build from a config mapping (a diffusers ``scheduler_config.json``), a diffusers scheduler or
        another easytune one. ``_``-prefixed keys (diffusers metadata) are ignored, any other unknown key
        raises; ``overrides`` replace config values. diffusers is never imported."""
        return cls(**constructor_kwargs(cls, config, overrides))

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    # -------------------------------------------------------------------------------------- timesteps
    def time_shift(self, mu: float, sigma: float, t: np.ndarray | torch.Tensor):
        """Resolution-dependent shift of ``t`` (diffusers' exponential or linear form)."""
        if self.config.time_shift_type == "exponential":
            return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** sigma)
        return mu / (mu + (1 / t - 1) ** sigma)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        sigmas: list[float] | None = None,
        mu: float | None = None,
    ) -> None:
        """Choose the sampling sigmas: ``num_inference_steps`` evenly spaced from ``sigma_max`` to
        ``sigma_min`` (or the given ``sigmas``), shifted (``shift``, or ``mu`` with dynamic shifting),
        stretched to ``shift_terminal``; then ``timesteps = sigmas * N`` and a final sigma 0 is appended."""
        name = type(self).__name__
        if self.config.use_dynamic_shifting and mu is None:
            raise ConfigError(f"{name}.set_timesteps: use_dynamic_shifting=True needs mu")
        if sigmas is None:
            if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
                raise ConfigError(
                    f"{name}.set_timesteps: num_inference_steps must be an int >= 1, "
                    f"got {num_inference_steps!r}"
                )
            n = self.config.num_train_timesteps
            steps = np.linspace(self.sigma_max * n, self.sigma_min * n, num_inference_steps)
            values = steps / n
        else:
            if num_inference_steps is not None and len(sigmas) != num_inference_steps:
                raise ConfigError(
                    f"{name}.set_timesteps: {len(sigmas)} sigmas for "
                    f"num_inference_steps={num_inference_steps}"
                )
            values = np.array(sigmas).astype(np.float32)
            if values.ndim != 1 or len(values) == 0 or not np.all((values > 0) & (values <= 1)):
                raise ConfigError(
                    f"{name}.set_timesteps: sigmas must be a non-empty list of values in (0, 1]"
                )
        if self.config.use_dynamic_shifting:
            values = self.time_shift(mu, 1.0, values)
        else:
            values = self.shift * values / (1 + (self.shift - 1) * values)
        if self.config.shift_terminal:
            one_minus = 1 - values
            values = 1 - one_minus / (one_minus[-1] / (1 - self.config.shift_terminal))
        values = torch.from_numpy(np.asarray(values)).to(dtype=torch.float32, device=device)
        self.num_inference_steps = len(values)
        self.timesteps = values * self.config.num_train_timesteps
        self.sigmas = torch.cat([values, torch.zeros(1, device=values.device)])

    def index_for_timestep(self, timestep: float | torch.Tensor) -> torch.Tensor:
        """Index into ``timesteps`` of each value of ``timestep`` ([] or [B]; each must be one of them)."""
        if self.num_inference_steps is None:
            raise ConfigError(
                f"{type(self).__name__}: call set_timesteps(num_inference_steps) before stepping"
            )
        t = torch.as_tensor(timestep)
        if t.dim() > 1:
            raise ConfigError(f"timestep must be a number or a [B] tensor, got shape {tuple(t.shape)}")
        table = self.timesteps.to(t.device)
        hits = t.reshape(-1, 1).to(table.dtype) == table[None]
        if not bool(hits.any(1).all()):
            raise ConfigError(
                f"{type(self).__name__}: timestep {t.tolist()} is not one of the timesteps chosen by "
                f"set_timesteps({self.num_inference_steps}) ({self.timesteps[:3].tolist()} ...)"
            )
        return hits.int().argmax(1).reshape(t.shape)

    def step_levels(self, timesteps: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigma_t, sigma_next), float32, shaped like ``timesteps``: what ``ops.guided_step`` takes for the
        flow prediction types in the ``alpha_prod_t`` / ``alpha_prod_t_prev`` slots."""
        i = self.index_for_timestep(timesteps)
        sigmas = self.sigmas.to(i.device)
        return sigmas[i], sigmas[i + 1]

    def alphas_cumprod_of(self, timesteps: float | torch.Tensor) -> torch.Tensor:
        """The alpha_bar with this step's signal-to-noise ratio, ``(1 - s)^2 / ((1 - s)^2 + s^2)`` (what SNR
        step weights read; the diffusion schedulers return their table's alpha_bar)."""
        s = self.step_levels(timesteps)[0].double()
        return (1 - s) ** 2 / ((1 - s) ** 2 + s**2)

    # -------------------------------------------------------------------------------- model outputs
    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        """Identity (kept for interchangeability with the other schedulers)."""
        return sample

    def _sigma_of(self, timesteps: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``timesteps / N`` as [B, 1, ...] (or 0-d) in ``like``'s dtype: any training timestep works."""
        t = torch.as_tensor(timesteps, device=like.device)
        if t.dim() > 1 or (t.dim() == 1 and t.shape[0] != like.shape[0]):
            raise ConfigError(f"timesteps must be a number or [{like.shape[0]}], got shape {tuple(t.shape)}")
        n = self.config.num_train_timesteps
        if t.numel() and (float(t.min()) < 0 or float(t.max()) > n):
            raise ConfigError(
                f"timesteps must be in [0, {n}], got values in [{float(t.min())}, {float(t.max())}]"
            )
        s = (t.to(torch.promote_types(like.dtype, torch.float32)) / n).to(like.dtype)
        return s.reshape(-1, *([1] * (like.dim() - 1))) if t.dim() else s

    def training_timesteps(self, indices: torch.Tensor) -> torch.Tensor:
        """The training timesteps (float32, from the shifted table) at integer ``indices`` in [0, N)."""
        return self.train_timesteps.to(indices.device)[indices]

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: Any) -> torch.Tensor:
        """The flow's forward process ``(1 - s) x0 + s noise`` with ``s = timesteps / N`` ([] or [B])."""
        s = self._sigma_of(timesteps, original_samples)
        return (1 - s) * original_samples + s * noise

    def scale_noise(self, sample: torch.Tensor, timestep: Any, noise: torch.Tensor) -> torch.Tensor:
        """diffusers' name for ``add_noise`` (argument order of diffusers)."""
        return self.add_noise(sample, noise, timestep)

    def training_target(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: Any
    ) -> torch.Tensor:
        """What the model should output for ``add_noise(x0, noise, t)``: ``noise - x0`` (velocity) or x0."""
        if self.config.prediction_type == "flow_sample":
            return original_samples
        return noise - original_samples

    def predict_x0_eps(
        self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Model output at ``timestep`` -> ``(x0, eps)``, each like ``sample``."""
        s = self._sigma_of(timestep, sample)
        return ops.to_x0_eps(model_output, sample, s.flatten() if s.dim() else s, self.config.prediction_type)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ):
        """One Euler step to the next sigma; ``timestep`` one of ``timesteps`` ([] or [B]). Returns
        ``SchedulerOutput(prev_sample, pred_original_sample)`` (or the tuple), ``prev_sample`` typed like
        ``model_output`` (as diffusers). ``generator`` is accepted for signature compatibility and unused."""
        if isinstance(timestep, int) or (
            isinstance(timestep, torch.Tensor) and not timestep.is_floating_point()
        ):
            raise ConfigError(
                "FlowMatchEulerDiscreteScheduler.step: pass one of scheduler.timesteps (a float), not an "
                "integer index"
            )
        sigma, sigma_next = self.step_levels(torch.as_tensor(timestep, device=sample.device))
        work = torch.promote_types(sample.dtype, torch.float32)  # diffusers upcasts half-precision samples
        batch = sample.shape[0]
        _, x0, prev = ops.guided_step(
            model_output.to(work),
            None,
            sample.to(work),
            sigma.expand(batch).contiguous(),
            sigma_next.expand(batch).contiguous(),
            prediction_type=self.config.prediction_type,
        )
        prev, x0 = prev.to(model_output.dtype), x0.to(model_output.dtype)
        return SchedulerOutput(prev, x0) if return_dict else (prev, x0)
