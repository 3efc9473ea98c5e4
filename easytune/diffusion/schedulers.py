"""DDIM and DDPM schedulers with diffusers' names, tables and arithmetic, plus per-sample timesteps.

Tables (``betas``, ``alphas``, ``alphas_cumprod``) are float32 and bit-identical to diffusers; the
step arithmetic runs in the sample's dtype. DDIM's step is ``easytune.ops.guided_step`` (the one copy
of the formula, shared with the trainer). Differences from diffusers, all raising ``ConfigError``
rather than silently changing results: ``clip_sample`` defaults to False (latent models do not clip)
and DDIM cannot clip (the fused step has no clipping); ``thresholding``, ``rescale_betas_zero_snr``
and learned variances are not supported.

Timesteps are int64; every method taking a timestep accepts an int, a 0-d tensor or a [B] tensor
(one timestep per sample).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from easytune import ops
from easytune.diffusion.schedules import make_betas
from easytune.errors import ConfigError
from easytune.ops.guided_step import DIFFUSION_PREDICTION_TYPES

TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
DDPM_VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large")


@dataclass
class SchedulerOutput:
    """``prev_sample``: x_{t-1}; ``pred_original_sample``: the one-step prediction x0_hat."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


class SchedulerConfig(Mapping):
    """The scheduler's constructor arguments, read-only, readable as attributes (``config.steps_offset``)."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = dict(values)

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"scheduler config has no field {name!r}") from None

    def __repr__(self) -> str:
        return f"SchedulerConfig({self._values!r})"


def randn_like_diffusers(
    shape: torch.Size, generator: torch.Generator | None, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Standard normal noise drawn as diffusers does: on the generator's device, then moved to ``device``."""
    rand_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=rand_device, dtype=dtype).to(device)


def constructor_kwargs(
    cls: type, config: Any, overrides: Mapping[str, Any], ignored: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """The keyword arguments of ``cls(...)`` from a config mapping, a diffusers scheduler (its ``.config``)
    or an easytune one, with ``overrides`` on top: ``_``-prefixed keys (diffusers metadata) and ``ignored``
    ones are dropped, any other key that ``cls.__init__`` does not take raises ``ConfigError``."""
    if not isinstance(config, Mapping):
        inner = getattr(config, "config", None)
        if not isinstance(inner, Mapping):
            raise ConfigError(
                f"{cls.__name__}.from_config expects a mapping or a scheduler with a .config "
                f"mapping, got {type(config).__name__}"
            )
        config = inner
    params = set(inspect.signature(cls.__init__).parameters) - {"self"}
    kwargs = {}
    for key, value in {**config, **overrides}.items():
        if key.startswith("_") or key in ignored:
            continue
        if key not in params:
            raise ConfigError(
                f"{cls.__name__}.from_config: unknown config key {key!r} "
                f"(expected a subset of {sorted(params)})"
            )
        kwargs[key] = value
    return kwargs


class _DiscreteScheduler:
    """Shared by DDIM and DDPM: tables, timestep spacing, forward noising, prediction-type conversion."""

    order = 1
    _IGNORED_KEYS: frozenset[str] = frozenset()

    def __init__(
        self,
        *,
        num_train_timesteps: int,
        beta_start: float,
        beta_end: float,
        beta_schedule: str,
        trained_betas: Any,
        clip_sample: bool,
        prediction_type: str,
        thresholding: bool,
        timestep_spacing: str,
        steps_offset: int,
        rescale_betas_zero_snr: bool,
        **config: Any,
    ) -> None:
        name = type(self).__name__
        if prediction_type not in DIFFUSION_PREDICTION_TYPES:
            flow = (
                " (a flow prediction type: use FlowMatchEulerDiscreteScheduler)"
                if "flow" in prediction_type
                else ""
            )
            raise ConfigError(
                f"{name}: prediction_type must be one of {DIFFUSION_PREDICTION_TYPES}, got "
                f"{prediction_type!r}{flow}"
            )
        if timestep_spacing not in TIMESTEP_SPACINGS:
            raise ConfigError(
                f"{name}: timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {timestep_spacing!r}"
            )
        if thresholding:
            raise ConfigError(
                f"{name}: thresholding=True is not supported (dynamic thresholding is for pixel-space "
                "images); pass thresholding=False"
            )
        if rescale_betas_zero_snr:
            raise ConfigError(f"{name}: rescale_betas_zero_snr=True is not supported; pass False")
        if steps_offset < 0:
            raise ConfigError(f"{name}: steps_offset must be >= 0, got {steps_offset}")
        self.betas = make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1, dtype=torch.int64)
        self.config = SchedulerConfig(
            dict(
                num_train_timesteps=num_train_timesteps,
                beta_start=beta_start,
                beta_end=beta_end,
                beta_schedule=beta_schedule,
                trained_betas=trained_betas,
                clip_sample=clip_sample,
                prediction_type=prediction_type,
                thresholding=thresholding,
                timestep_spacing=timestep_spacing,
                steps_offset=steps_offset,
                rescale_betas_zero_snr=rescale_betas_zero_snr,
                **config,
            )
        )
        self._tables: dict[torch.device, torch.Tensor] = {}

    # ----------------------------------------------------------------------------------------- config
    @classmethod
    def from_config(cls, config: Any, **overrides: Any):
        """Build from a config mapping, a diffusers scheduler (its ``.config``) or another easytune scheduler.

        Keys starting with ``_`` (diffusers metadata) and the sibling scheduler's own keys (``variance_type``
        for DDIM, ``set_alpha_to_one`` for DDPM) are ignored, as diffusers does; any other unknown key raises.
        ``overrides`` replace config values. diffusers is never imported.
        """
        return cls(**constructor_kwargs(cls, config, overrides, cls._IGNORED_KEYS))

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    # -------------------------------------------------------------------------------------- timesteps
    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Choose the ``num_inference_steps`` sampling timesteps (descending) per ``timestep_spacing``."""
        n_train = self.config.num_train_timesteps
        if not 1 <= num_inference_steps <= n_train:
            raise ConfigError(
                f"num_inference_steps must be in [1, num_train_timesteps={n_train}], "
                f"got {num_inference_steps}"
            )
        spacing = self.config.timestep_spacing
        if spacing == "linspace":
            steps = np.linspace(0, n_train - 1, num_inference_steps).round()[::-1].copy().astype(np.int64)
        elif spacing == "leading":
            ratio = n_train // num_inference_steps
            steps = (np.arange(0, num_inference_steps) * ratio).round()[::-1].copy().astype(np.int64)
            steps += self.config.steps_offset
        else:  # trailing
            ratio = n_train / num_inference_steps
            steps = np.round(np.arange(n_train, 0, -ratio)).astype(np.int64) - 1
        if steps.max() >= n_train:
            raise ConfigError(
                f"steps_offset={self.config.steps_offset} pushes the first timestep to {steps.max()}, "
                f"beyond num_train_timesteps={n_train}"
            )
        self.num_inference_steps = num_inference_steps
        self.timesteps = torch.from_numpy(steps).to(device)

    def _check_timesteps(self, timesteps: int | torch.Tensor) -> torch.Tensor:
        """int / 0-d / [B] -> int64 tensor (same shape), range-checked."""
        t = torch.as_tensor(timesteps)
        if t.dtype.is_floating_point or t.dtype == torch.bool or t.dim() > 1:
            raise ConfigError(
                f"timestep must be an int or an integer tensor of shape [] or [B], "
                f"got dtype {t.dtype} shape {tuple(t.shape)}"
            )
        t = t.long()
        n_train = self.config.num_train_timesteps
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= n_train):
            raise ConfigError(
                f"timestep must be in [0, {n_train - 1}], got values in [{int(t.min())}, {int(t.max())}]"
            )
        return t

    def _table(self, device: torch.device) -> torch.Tensor:
        if device not in self._tables:
            self._tables[device] = self.alphas_cumprod.to(device)
        return self._tables[device]

    def _alpha_at(self, timesteps: torch.Tensor) -> torch.Tensor:
        return self._table(timesteps.device)[timesteps]

    def alpha_pair(self, timesteps: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha_prod_t, alpha_prod_t_prev), float32, shaped like ``timesteps`` ([B]: per-sample steps)."""
        raise NotImplementedError

    def step_levels(self, timesteps: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What ``ops.guided_step`` takes per sample: ``alpha_pair`` (a flow scheduler gives its sigmas)."""
        return self.alpha_pair(timesteps)

    def alphas_cumprod_of(self, timesteps: int | torch.Tensor) -> torch.Tensor:
        """alpha_bar of each timestep (float64; what SNR step weights read)."""
        t = self._check_timesteps(timesteps)
        return self.alphas_cumprod.double()[t.cpu()]

    def training_timesteps(self, indices: torch.Tensor) -> torch.Tensor:
        """The training timestep at each index in [0, num_train_timesteps): the index itself."""
        return indices

    # -------------------------------------------------------------------------------- model outputs
    def scale_model_input(
        self, sample: torch.Tensor, timestep: int | torch.Tensor | None = None
    ) -> torch.Tensor:
        """Identity (DDIM and DDPM need no input scaling); kept for interchangeability with diffusers."""
        return sample

    def predict_x0_eps(
        self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Model output (in ``prediction_type``) at ``timestep`` -> ``(x0, eps)``, each like ``sample``."""
        t = self._check_timesteps(timestep).to(sample.device)
        return ops.to_x0_eps(model_output, sample, self._alpha_at(t), self.config.prediction_type)

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: int | torch.Tensor
    ) -> torch.Tensor:
        """Forward diffusion q(x_t | x_0): ``sqrt(a_t) * x0 + sqrt(1 - a_t) * noise``; timesteps [] or [B]."""
        sqrt_a, sqrt_1ma = self._forward_coefficients(original_samples, timesteps)
        return sqrt_a * original_samples + sqrt_1ma * noise

    def get_velocity(
        self, sample: torch.Tensor, noise: torch.Tensor, timesteps: int | torch.Tensor
    ) -> torch.Tensor:
        """The v-prediction target ``sqrt(a_t) * noise - sqrt(1 - a_t) * x0`` (``sample`` is x0)."""
        sqrt_a, sqrt_1ma = self._forward_coefficients(sample, timesteps)
        return sqrt_a * noise - sqrt_1ma * sample

    def training_target(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: int | torch.Tensor
    ) -> torch.Tensor:
        """What a denoiser with this ``prediction_type`` should output for ``add_noise(x0, noise, t)``."""
        kind = self.config.prediction_type
        if kind == "epsilon":
            return noise
        if kind == "sample":
            return original_samples
        return self.get_velocity(original_samples, noise, timesteps)

    def _forward_coefficients(self, like: torch.Tensor, timesteps: int | torch.Tensor):
        t = self._check_timesteps(timesteps).to(like.device)
        a = self._table(like.device).to(like.dtype)[t].flatten()
        shape = (a.shape[0],) + (1,) * (like.dim() - 1) if t.dim() else ()
        return (a**0.5).reshape(shape), ((1 - a) ** 0.5).reshape(shape)


class DDIMScheduler(_DiscreteScheduler):
    """Deterministic (eta = 0) or stochastic DDIM sampling, numerically equal to ``diffusers.DDIMScheduler``.

    The previous timestep is ``t - num_train_timesteps // num_inference_steps`` whatever the spacing (as in
    diffusers); below 0 its alpha is ``final_alpha_cumprod`` (1 if ``set_alpha_to_one``, else
    alphas_cumprod[0]).
    MLD: ``DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    set_alpha_to_one=False, steps_offset=1)`` with ``set_timesteps(50)`` -> timesteps 981, 961, ..., 1.
    """

    _IGNORED_KEYS = frozenset({"variance_type"})

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Any = None,
        clip_sample: bool = False,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
    ) -> None:
        if clip_sample:
            raise ConfigError(
                "DDIMScheduler: clip_sample=True is not supported: the DDIM step is "
                "easytune.ops.guided_step, which does not clip x0_hat (clipping would also cut the "
                "reward gradient); pass clip_sample=False"
            )
        super().__init__(
            num_train_timesteps=num_train_timesteps,
            beta_start=beta_start,
            beta_end=beta_end,
            beta_schedule=beta_schedule,
            trained_betas=trained_betas,
            clip_sample=clip_sample,
            prediction_type=prediction_type,
            thresholding=thresholding,
            timestep_spacing=timestep_spacing,
            steps_offset=steps_offset,
            rescale_betas_zero_snr=rescale_betas_zero_snr,
            set_alpha_to_one=set_alpha_to_one,
            dynamic_thresholding_ratio=dynamic_thresholding_ratio,
            clip_sample_range=clip_sample_range,
            sample_max_value=sample_max_value,
        )
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]

    def _step_ratio(self) -> int:
        if self.num_inference_steps is None:
            raise ConfigError("DDIMScheduler: call set_timesteps(num_inference_steps) before stepping")
        return self.config.num_train_timesteps // self.num_inference_steps

    def previous_timestep(self, timestep: int | torch.Tensor) -> torch.Tensor:
        """``t - num_train_timesteps // num_inference_steps`` (negative at the last step)."""
        return self._check_timesteps(timestep) - self._step_ratio()

    def alpha_pair(self, timesteps: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self._check_timesteps(timesteps)
        prev = t - self._step_ratio()
        table = self._table(t.device)
        final = self.final_alpha_cumprod.to(device=t.device, dtype=table.dtype)
        return table[t], torch.where(prev >= 0, table[prev.clamp(min=0)], final)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: torch.Generator | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ):
        """One DDIM step x_t -> x_{t-1}. ``use_clipped_model_output`` has no effect (nothing is clipped).

        With ``eta > 0`` the noise is ``variance_noise`` or drawn from ``generator`` (not both).
        Returns ``SchedulerOutput`` (or ``(prev_sample, pred_original_sample)`` if not ``return_dict``).
        """
        if eta < 0:
            raise ConfigError(f"DDIMScheduler.step: eta must be >= 0, got {eta}")
        if variance_noise is not None and generator is not None:
            raise ConfigError("DDIMScheduler.step: pass either generator or variance_noise, not both")
        t = self._check_timesteps(timestep).to(sample.device)
        if t.dim() == 1 and t.shape[0] != sample.shape[0]:
            raise ConfigError(f"timestep has {t.shape[0]} entries for a batch of {sample.shape[0]} samples")
        alpha_t, alpha_prev = (a.expand(sample.shape[0]).contiguous() for a in self.alpha_pair(t))  # [B]
        noise = None
        if eta > 0:
            noise = (
                variance_noise
                if variance_noise is not None
                else randn_like_diffusers(
                    model_output.shape, generator, model_output.device, model_output.dtype
                )
            )
        _, x0, prev = ops.guided_step(
            model_output,
            None,
            sample,
            alpha_t,
            alpha_prev,
            prediction_type=self.config.prediction_type,
            eta=eta,
            noise=noise,
        )
        return SchedulerOutput(prev, x0) if return_dict else (prev, x0)


class DDPMScheduler(_DiscreteScheduler):
    """Ancestral DDPM sampling, numerically equal to ``diffusers.DDPMScheduler`` for the supported options
    (variance types ``fixed_small``, ``fixed_small_log``, ``fixed_large``; ``clip_sample`` supported)."""

    _IGNORED_KEYS = frozenset({"set_alpha_to_one"})

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Any = None,
        variance_type: str = "fixed_small",
        clip_sample: bool = False,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ) -> None:
        if variance_type not in DDPM_VARIANCE_TYPES:
            raise ConfigError(
                f"DDPMScheduler: variance_type must be one of {DDPM_VARIANCE_TYPES}, got {variance_type!r}"
            )
        super().__init__(
            num_train_timesteps=num_train_timesteps,
            beta_start=beta_start,
            beta_end=beta_end,
            beta_schedule=beta_schedule,
            trained_betas=trained_betas,
            clip_sample=clip_sample,
            prediction_type=prediction_type,
            thresholding=thresholding,
            timestep_spacing=timestep_spacing,
            steps_offset=steps_offset,
            rescale_betas_zero_snr=rescale_betas_zero_snr,
            variance_type=variance_type,
            dynamic_thresholding_ratio=dynamic_thresholding_ratio,
            clip_sample_range=clip_sample_range,
            sample_max_value=sample_max_value,
        )
        self._prev_lookup: torch.Tensor | None = None

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        super().set_timesteps(num_inference_steps, device)
        lookup = torch.full((self.config.num_train_timesteps,), -2, dtype=torch.int64)
        steps = self.timesteps.cpu()
        lookup[steps] = torch.cat([steps[1:], torch.tensor([-1])])
        self._prev_lookup = lookup

    def previous_timestep(self, timestep: int | torch.Tensor) -> torch.Tensor:
        """The next entry of ``timesteps`` (-1 after the last); ``t - 1`` before ``set_timesteps``."""
        t = self._check_timesteps(timestep)
        if self._prev_lookup is None:
            return t - 1
        prev = self._prev_lookup.to(t.device)[t]
        if bool((prev == -2).any()):
            raise ConfigError(
                f"DDPMScheduler: timestep {t.tolist()} is not one of the timesteps chosen by "
                f"set_timesteps({self.num_inference_steps})"
            )
        return prev

    def alpha_pair(self, timesteps: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self._check_timesteps(timesteps)
        prev = self.previous_timestep(t)
        table = self._table(t.device)
        return table[t], torch.where(prev >= 0, table[prev.clamp(min=0)], torch.ones((), device=t.device))

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ):
        """One ancestral step x_t -> x_{t-1} (noise from ``generator`` wherever t > 0)."""
        t = self._check_timesteps(timestep).to(sample.device)
        alpha_t, alpha_prev = (a.to(sample.dtype) for a in self.alpha_pair(t))
        shape = (-1,) + (1,) * (sample.dim() - 1) if t.dim() else ()
        alpha_t, alpha_prev = alpha_t.reshape(shape), alpha_prev.reshape(shape)
        x0, _ = ops.to_x0_eps(model_output, sample, alpha_t, self.config.prediction_type)
        if self.config.clip_sample:
            x0 = x0.clamp(-self.config.clip_sample_range, self.config.clip_sample_range)
        beta_t, beta_prev = 1 - alpha_t, 1 - alpha_prev
        current_alpha = alpha_t / alpha_prev
        current_beta = 1 - current_alpha
        prev = (alpha_prev**0.5 * current_beta / beta_t) * x0 + (
            current_alpha**0.5 * beta_prev / beta_t
        ) * sample
        positive = t > 0
        if bool(positive.any()):
            noise = randn_like_diffusers(
                model_output.shape, generator, model_output.device, model_output.dtype
            )
            variance = (beta_prev / beta_t * current_beta).clamp(min=1e-20)
            kind = self.config.variance_type
            if kind == "fixed_small":
                std = variance**0.5
            elif kind == "fixed_small_log":
                std = torch.exp(0.5 * torch.log(variance))
            else:  # fixed_large
                std = current_beta**0.5
            std = torch.where(positive.reshape(shape), std, torch.zeros_like(std))
            prev = prev + std * noise
        return SchedulerOutput(prev, x0) if return_dict else (prev, x0)
