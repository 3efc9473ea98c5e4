"""Classifier-free guidance + one sampling step, fused: the single-step denoise of every fine-tuning method.

Diffusion models (prediction types ``epsilon | sample | v_prediction``; x_t = sqrt(a) x0 + sqrt(1 - a) eps):
given the conditional and unconditional model outputs, the sample x_t and the cumulative alphas of the
current and previous timestep (per sample), computes

    guided   = uncond + w * (cond - uncond)           (cond alone when uncond is None)
    x0_hat, eps_hat = convert(guided, x_t)
    std      = eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
    x_prev   = sqrt(a_prev) * x0_hat + sqrt(1 - a_prev - std^2) * eps_hat + std * noise

exactly as ``diffusers.DDIMScheduler.step`` (no clipping or thresholding).

Flow-matching models (``flow_prediction``: the network predicts the velocity v = eps - x0;
``flow_sample``: it predicts x0; x_t = (1 - s) x0 + s eps): the two per-sample numbers are the flow's
noise levels sigma_t and sigma_next (passed in the ``alpha_prod_t`` / ``alpha_prod_t_prev`` slots), and

    x0_hat = x_t - s * v,   eps_hat = x_t + (1 - s) * v     (flow_prediction)
    x_prev = x_t + (s_next - s) * v                         (= (1 - s_next) x0_hat + s_next eps_hat)

the Euler step of ``diffusers.FlowMatchEulerDiscreteScheduler.step``; for ``flow_sample``
``x_prev = (1 - s_next) x0_hat + s_next eps_hat``. The flow step is deterministic (``eta`` must be 0).
"""

from __future__ import annotations

import operator

import torch

from easytune.errors import ConfigError
from easytune.ops import _triton, dispatch

DIFFUSION_PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
FLOW_PREDICTION_TYPES = ("flow_prediction", "flow_sample")
PREDICTION_TYPES = DIFFUSION_PREDICTION_TYPES + FLOW_PREDICTION_TYPES
_alpha_key = operator.attrgetter("shape", "requires_grad")
_HITS = dispatch.hits("guided_step")
_compiling, _input_key, _Tensor = dispatch.compiling, dispatch.input_key, torch.Tensor
_data_key = operator.attrgetter("shape", "dtype")
# What the memo key of ``guided_step`` leaves out, because no check and no backend's reasons read it: grad
# mode and the data tensors' requires_grad (every backend is differentiable in them; tested), the alphas'
# device and dtype (converted) and the values of the guidance scale and the alphas (keyed by type: a sweep
# over guidance scales or float alphas does not grow the memo). eta keys by value (its sign is checked).
# Only the device of ``sample`` is keyed: the kernels check that the other data tensors share it
# (``check_devices``), the math backend's torch ops refuse mixed devices themselves (each ~70 ns saved).


def _per_sample(alpha: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B] (or scalar) -> [B, 1, ..., 1] broadcastable against ``like``, in ``like``'s dtype."""
    if type(alpha) is not _Tensor or alpha.dtype != like.dtype or alpha.device != like.device:
        alpha = torch.as_tensor(alpha, device=like.device).to(like.dtype)  # else: two no-op calls saved
    if alpha.dim() == 0:
        return alpha
    return alpha.reshape(alpha.shape[0], *([1] * (like.dim() - 1)))


def to_x0_eps(
    model_output: torch.Tensor, sample: torch.Tensor, alpha_prod_t: torch.Tensor, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Convert a model output to (x0, eps) for ``prediction_type``; ``alpha_prod_t`` is [B] or scalar (the
    cumulative alpha; for the flow types the noise level sigma_t)."""
    return _x0_eps(model_output, sample, _per_sample(alpha_prod_t, sample), prediction_type)


def _x0_eps(
    model_output: torch.Tensor, sample: torch.Tensor, a: torch.Tensor, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``to_x0_eps`` with ``a`` already per-sample (``_per_sample``)."""
    if prediction_type == "flow_prediction":  # a is sigma: x_t = (1 - s) x0 + s eps, v = eps - x0
        return sample - a * model_output, sample + (1 - a) * model_output
    if prediction_type == "flow_sample":
        return model_output, (sample - (1 - a) * model_output) / a
    beta = 1 - a
    if prediction_type == "epsilon":
        eps = model_output
        x0 = (sample - beta**0.5 * eps) / a**0.5
    elif prediction_type == "sample":
        x0 = model_output
        eps = (sample - a**0.5 * x0) / beta**0.5
    elif prediction_type == "v_prediction":
        x0 = a**0.5 * sample - beta**0.5 * model_output
        eps = a**0.5 * model_output + beta**0.5 * sample
    else:
        raise ConfigError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    return x0, eps


def guided_step_ref(
    model_cond: torch.Tensor,
    model_uncond: torch.Tensor | None,
    sample: torch.Tensor,
    alpha_prod_t: torch.Tensor,
    alpha_prod_t_prev: torch.Tensor,
    guidance_scale: float = 1.0,
    prediction_type: str = "epsilon",
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pure-PyTorch reference; returns ``(guided_output, x0_hat, prev_sample)``, each like ``sample``."""
    if model_uncond is None:
        guided = model_cond
    else:
        guided = model_uncond + guidance_scale * (model_cond - model_uncond)
    x0, eps = to_x0_eps(guided, sample, alpha_prod_t, prediction_type)
    a = _per_sample(alpha_prod_t, sample)
    a_prev = _per_sample(alpha_prod_t_prev, sample)
    if prediction_type in FLOW_PREDICTION_TYPES:
        if isinstance(eta, torch.Tensor) or eta != 0:
            raise ConfigError(
                f"guided_step: the flow step ({prediction_type}) is deterministic; eta must be 0"
            )
        return (
            guided,
            x0,
            _flow_prev(guided, x0, eps, sample, alpha_prod_t, alpha_prod_t_prev, prediction_type),
        )
    variance = (1 - a_prev) / (1 - a) * (1 - a / a_prev)
    std = eta * variance**0.5
    prev = a_prev**0.5 * x0 + (1 - a_prev - std**2) ** 0.5 * eps
    if eta > 0:
        if noise is None:
            raise ConfigError("guided_step: eta > 0 needs the noise tensor (same shape as sample)")
        prev = prev + std * noise
    return guided, x0, prev


def _flow_prev(guided, x0, eps, sample, sigma, sigma_next, prediction_type):
    """The flow's Euler step: ``x + (s_next - s) v`` for velocity models, with ``s_next - s`` taken in the
    sigmas' own dtype (diffusers' arithmetic on its float32 tables), ``(1 - s_next) x0 + s_next eps`` for
    x0-predicting ones. ``sigma`` / ``sigma_next`` as passed to ``guided_step`` (not yet per-sample)."""
    if prediction_type == "flow_prediction":
        return sample + _per_sample(sigma_next - sigma, sample) * guided
    s_next = _per_sample(sigma_next, sample)
    return (1 - s_next) * x0 + s_next * eps


def _guided_step_math(
    model_cond,
    model_uncond,
    sample,
    alpha_prod_t,
    alpha_prod_t_prev,
    guidance_scale=1.0,
    prediction_type="epsilon",
    eta=0.0,
    noise=None,
):
    """``guided_step_ref`` with fewer ops when ``eta == 0`` (the deterministic step of every sampler and
    trainer): the variance term is then exactly zero, so the result is bit-identical (tested)."""
    if isinstance(eta, torch.Tensor) or eta != 0:
        return guided_step_ref(
            model_cond,
            model_uncond,
            sample,
            alpha_prod_t,
            alpha_prod_t_prev,
            guidance_scale,
            prediction_type,
            eta,
            noise,
        )
    guided = model_cond
    if model_uncond is not None:
        guided = model_uncond + guidance_scale * (model_cond - model_uncond)
    a = _per_sample(alpha_prod_t, sample)
    a_prev = _per_sample(alpha_prod_t_prev, sample)
    x0, eps = _x0_eps(guided, sample, a, prediction_type)
    if prediction_type in FLOW_PREDICTION_TYPES:
        return (
            guided,
            x0,
            _flow_prev(guided, x0, eps, sample, alpha_prod_t, alpha_prod_t_prev, prediction_type),
        )
    return guided, x0, a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps


def check_devices(model_cond, model_uncond, sample, noise=None) -> None:
    """The kernels' own check of what the memo key of ``guided_step`` leaves out: every data tensor on the
    device of ``sample`` (the math backend needs none: torch refuses mixed devices itself)."""
    device = sample.device
    for name, t in (("model_cond", model_cond), ("model_uncond", model_uncond), ("noise", noise)):
        if t is not None and t.device != device:
            raise ConfigError(
                f"guided_step: {name} is on {t.device} and sample on {device}; the data tensors must share "
                "one device"
            )


def _guided_step_triton(
    model_cond,
    model_uncond,
    sample,
    alpha_prod_t,
    alpha_prod_t_prev,
    guidance_scale=1.0,
    prediction_type="epsilon",
    eta=0.0,
    noise=None,
):
    from easytune_kernels.guided_step import guided_step as triton_guided_step

    check_devices(model_cond, model_uncond, sample, noise if eta > 0 else None)
    return triton_guided_step(
        model_cond,
        model_uncond,
        sample,
        alpha_prod_t,
        alpha_prod_t_prev,
        guidance_scale,
        prediction_type,
        eta,
        noise,
    )


def _reasons_triton(
    model_cond,
    model_uncond=None,
    sample=None,
    eta=0.0,
    noise=None,
    alpha_prod_t=None,
    alpha_prod_t_prev=None,
    guidance_scale=1.0,
    **_,
):
    reasons = [
        f"{name} requires grad (the Triton step treats the alphas as constants)"
        for name, alpha in (("alpha_prod_t", alpha_prod_t), ("alpha_prod_t_prev", alpha_prod_t_prev))
        if isinstance(alpha, torch.Tensor) and alpha.requires_grad
    ]
    for name, value in (("guidance_scale", guidance_scale), ("eta", eta)):
        if isinstance(value, torch.Tensor):
            reasons.append(f"{name} is a tensor (the Triton step takes a Python number)")
    tensors = {
        "model_cond": model_cond,
        "model_uncond": model_uncond,
        "sample": sample,
        "noise": noise if eta > 0 else None,
    }
    return reasons + _triton.reasons("guided_step", tensors)


dispatch.register(
    "guided_step",
    "triton",
    _guided_step_triton,
    _reasons_triton,
    auto_reasons=_triton.auto_reasons,
    capabilities=_triton.CAPABILITIES,
)
dispatch.register("guided_step", "math", _guided_step_math)


def _check_inputs(
    model_cond,
    model_uncond=None,
    sample=None,
    eta=0.0,
    noise=None,
    prediction_type="epsilon",
    alpha_prod_t=None,
    alpha_prod_t_prev=None,
    guidance_scale=1.0,
):
    """Metadata checks (run once per call signature by ``dispatch.resolve``)."""
    alphas = (alpha_prod_t, alpha_prod_t_prev)
    if prediction_type not in PREDICTION_TYPES:
        raise ConfigError(
            f"guided_step: prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}"
        )
    if sample.dim() == 0:
        raise ConfigError("guided_step: sample must have a batch dimension [B, ...], got a scalar")
    if not isinstance(eta, torch.Tensor) and eta < 0:
        raise ConfigError(f"guided_step: eta must be >= 0, got {eta}")
    if eta > 0 and noise is None:
        raise ConfigError("guided_step: eta > 0 needs the noise tensor (same shape as sample)")
    if prediction_type in FLOW_PREDICTION_TYPES and (isinstance(eta, torch.Tensor) or eta != 0):
        raise ConfigError(f"guided_step: the flow step ({prediction_type}) is deterministic; eta must be 0")
    others = {"model_cond": model_cond, "model_uncond": model_uncond, "noise": noise if eta > 0 else None}
    for name, t in others.items():
        if t is not None and t.shape != sample.shape:
            raise ConfigError(
                f"guided_step: {name} must have the shape of sample {tuple(sample.shape)}, "
                f"got {tuple(t.shape)}"
            )
    for name, alpha in zip(("alpha_prod_t", "alpha_prod_t_prev"), alphas):
        shape = tuple(torch.as_tensor(alpha).shape)
        if shape not in ((), (sample.shape[0],)):
            raise ConfigError(
                f"guided_step: {name} must be a scalar or have shape [{sample.shape[0]}], got {shape}"
            )


def guided_step(
    model_cond: torch.Tensor,
    model_uncond: torch.Tensor | None,
    sample: torch.Tensor,
    alpha_prod_t: torch.Tensor,
    alpha_prod_t_prev: torch.Tensor,
    *,
    guidance_scale: float = 1.0,
    prediction_type: str = "epsilon",
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Guidance + DDIM or flow Euler step (see module docstring). Tensors shaped like ``sample`` [B, ...];
    ``alpha_prod_t`` / ``alpha_prod_t_prev`` [B] (or scalars): the cumulative alphas of t and of the previous
    timestep, or for the flow prediction types sigma_t and sigma_next. Returns ``(guided_output, x0_hat,
    prev_sample)``, differentiable with respect to the model outputs, ``sample`` and ``noise``.
    ``backend``: ``auto | triton | cuda | math`` (see ``easytune.ops.dispatch``).
    """
    if _compiling():
        key = hit = None
    else:  # the memo key, from plain attribute reads (see dispatch.resolve and what it omits above)
        key = (
            backend,
            model_cond.shape,
            model_cond.dtype,
            None if model_uncond is None else _data_key(model_uncond),
            sample.shape,
            sample.dtype,
            sample.device,
            _alpha_key(alpha_prod_t) if type(alpha_prod_t) is _Tensor else type(alpha_prod_t),
            _alpha_key(alpha_prod_t_prev) if type(alpha_prod_t_prev) is _Tensor else type(alpha_prod_t_prev),
            type(guidance_scale),
            prediction_type,
            eta if type(eta) is float else _input_key(eta),
            None if noise is None else _data_key(noise),
        )
        hit = _HITS.get(key)
    if hit is None:  # the first call of this signature, or traced by torch.compile
        fn = dispatch.resolve(
            "guided_step",
            backend,
            _check_inputs,
            key=key,
            model_cond=model_cond,
            model_uncond=model_uncond,
            sample=sample,
            eta=eta,
            noise=noise,
            prediction_type=prediction_type,
            alpha_prod_t=alpha_prod_t,
            alpha_prod_t_prev=alpha_prod_t_prev,
            guidance_scale=guidance_scale,
        ).fn
    else:
        hit.calls += 1
        fn = hit.fn
    # positional: every backend takes ``guided_step_ref``'s signature (cheaper than keywords)
    return fn(
        model_cond,
        model_uncond,
        sample,
        alpha_prod_t,
        alpha_prod_t_prev,
        guidance_scale,
        prediction_type,
        eta,
        noise,
    )
