"""The ``cuda`` backend: the CUDA C++ kernels of ``csrc/`` (``libeasytune_cuda.so``) as torch ops.

Importing this module defines the torch.library custom ops and registers the backend in
``easytune.ops.dispatch``; it neither loads the library nor touches a device. The library is
found and loaded on first use (``easytune.ops._cuda_lib``), the ops run on the current CUDA stream
of their inputs' device, and every failure raises ``CudaOpError`` naming the op and the CUDA error.

Ops (autograd through the backward kernels; fake implementations for torch.compile):
  ``easytune::cuda_guided_step``   (cond, uncond?, sample, alpha_t [B] f32, alpha_prev [B] f32, noise?,
                                    guidance_scale, prediction code, eta) -> (guided, x0, prev)
  ``easytune::cuda_reward_head``   (motion [B, D], text [B, D], eps) -> cos [B]
  ``easytune::cuda_attention``     (q, k, v [B, H, T, D], q_lengths?, kv_lengths? int64 [B], scale) -> out;
                                    forward only (no-grad sampling; the backward stays on Triton)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor

from easytune.errors import BackendUnavailableError, ConfigError
from easytune.ops import dispatch
from easytune.ops._cuda_lib import (
    DTYPE_CODES,
    HEAD_DIMS,
    PREDICTION_CODES,
    CudaLibrary,
    CudaOpError,
    find_library,
    load_library,
    not_found_message,
)
from easytune.ops.guided_step import check_devices

__all__ = [
    "CudaOpError",
    "attention_reasons",
    "environment_reasons",
    "guided_step_reasons",
    "reward_head_reasons",
    "use_emulator",
]

_EMULATOR: CudaLibrary | None = None
_CPU_KERNELS_REGISTERED = False
_DEVICE_REASONS: dict[tuple[str, int], list[str]] = {}


# ---- why the backend cannot run -------------------------------------------------------------


def environment_reasons(device: torch.device | None = None) -> list[str]:
    """Why the cuda backend cannot run on ``device`` (None: the current CUDA device), whatever the inputs:
    library not found, torch without CUDA, no GPU, GPU architecture not compiled into the library."""
    reasons = []
    path = find_library()
    if path is None:
        reasons.append(not_found_message())
    if torch.version.cuda is None:
        reasons.append(f"torch {torch.__version__} is a CPU-only build (torch.version.cuda is None)")
    elif not torch.cuda.is_available():
        reasons.append("no CUDA GPU is visible (torch.cuda.is_available() is False)")
    elif path is not None:
        index = (
            device.index if device is not None and device.index is not None else torch.cuda.current_device()
        )
        key = (str(path), index)
        if key not in _DEVICE_REASONS:
            _DEVICE_REASONS[key] = _device_reasons(index)
        reasons.extend(_DEVICE_REASONS[key])
    return reasons


def _device_reasons(index: int) -> list[str]:
    try:
        lib = load_library()
    except BackendUnavailableError as err:
        return [str(err)]
    capability = torch.cuda.get_device_capability(index)
    name = torch.cuda.get_device_name(index)
    arch = f"sm_{capability[0]}{capability[1]}"
    if not lib.supports(capability):
        return [
            f"GPU {index} ({name}) is {arch}, but {lib.path.name} has code for {', '.join(lib.archs)} only; "
            f"rebuild with EASYTUNE_CUDA_ARCHS={capability[0]}{capability[1]} `make cuda-build`"
        ]
    try:
        with torch.cuda.device(index):
            lib.probe()
    except CudaOpError as err:
        return [f"GPU {index} ({name}, {arch}) cannot run {lib.path.name}: {err}"]
    return []


# What the kernels of ``csrc/`` run (checked by ``dispatch.capability_reasons``).
STEP_CAPABILITIES = dispatch.Capabilities(devices=("cuda",), dtypes=tuple(DTYPE_CODES))
HEAD_CAPABILITIES = STEP_CAPABILITIES
ATTENTION_CAPABILITIES = dispatch.Capabilities(
    devices=("cuda",), dtypes=tuple(DTYPE_CODES), head_dims=HEAD_DIMS, grad=False, dropout=False
)


def _device(*tensors: Tensor | None) -> torch.device | None:
    return next((t.device for t in tensors if t is not None and t.device.type == "cuda"), None)


def _guided_step_extra(
    model_cond: Tensor,
    model_uncond: Tensor | None = None,
    sample: Tensor | None = None,
    eta: float = 0.0,
    noise: Tensor | None = None,
    alpha_prod_t: Tensor | None = None,
    alpha_prod_t_prev: Tensor | None = None,
    prediction_type: str = "epsilon",
    **_: object,
) -> list[str]:
    reasons = []
    inputs = {
        "model_cond": model_cond,
        "model_uncond": model_uncond,
        "sample": sample,
        "noise": noise if eta > 0 else None,
    }
    reference = sample if sample is not None else model_cond
    wrong = [
        f"{n} {tuple(t.shape)}" for n, t in inputs.items() if t is not None and t.shape != reference.shape
    ]
    if wrong:
        reasons.append(f"shapes differ from sample {tuple(reference.shape)}: {', '.join(wrong)}")
    if reference.dim() == 0:
        reasons.append("sample needs a batch dimension")
    if prediction_type not in PREDICTION_CODES:
        reasons.append(f"prediction_type {prediction_type!r} is not one of {tuple(PREDICTION_CODES)}")
    for name, alpha in (("alpha_prod_t", alpha_prod_t), ("alpha_prod_t_prev", alpha_prod_t_prev)):
        if isinstance(alpha, Tensor) and alpha.requires_grad:
            reasons.append(f"{name} requires grad; the cuda step treats the alphas as constants")
    return environment_reasons(_device(model_cond, model_uncond, sample)) + reasons


def _reward_head_extra(motion: Tensor, text: Tensor, **_: object) -> list[str]:
    reasons = []
    if motion.dim() != 2 or motion.shape != text.shape:
        reasons.append(
            f"expects motion and text of one shape [B, D], got {tuple(motion.shape)}, {tuple(text.shape)}"
        )
    return environment_reasons(_device(motion, text)) + reasons


def _attention_extra(q: Tensor, k: Tensor, v: Tensor, **_: object) -> list[str]:
    return environment_reasons(_device(q, k, v))


def guided_step_reasons(**inputs: object) -> list[str]:
    """Reasons the cuda guided step cannot run these inputs (empty list: it can); noise counts if eta > 0."""
    return dispatch.capability_reasons("guided_step", "cuda", STEP_CAPABILITIES, inputs) + _guided_step_extra(
        **inputs
    )


def reward_head_reasons(motion: Tensor, text: Tensor, **inputs: object) -> list[str]:
    """Reasons the cuda reward head cannot run these inputs (empty list: it can)."""
    inputs = {"motion": motion, "text": text, **inputs}
    return dispatch.capability_reasons("reward_head", "cuda", HEAD_CAPABILITIES, inputs) + _reward_head_extra(
        **inputs
    )


def attention_reasons(q: Tensor, k: Tensor, v: Tensor, **inputs: object) -> list[str]:
    """Reasons the cuda attention cannot run these inputs (empty list: it can)."""
    inputs = {"q": q, "k": k, "v": v, **inputs}
    return dispatch.capability_reasons(
        "attention", "cuda", ATTENTION_CAPABILITIES, inputs
    ) + _attention_extra(**inputs)


# ---- running the kernels: CUDA tensors through the library, CPU tensors through the emulator ------


def _runtime(like: Tensor) -> tuple[CudaLibrary, int | None]:
    if like.device.type == "cuda":
        return load_library(), torch.cuda.current_stream(like.device).cuda_stream
    if _EMULATOR is not None:
        return _EMULATOR, None
    raise BackendUnavailableError(f"easytune cuda ops need CUDA tensors, got {like.device}")


@contextlib.contextmanager
def _device_of(like: Tensor) -> Iterator[None]:
    if like.device.type == "cuda":
        with torch.cuda.device(like.device):
            yield
    else:
        yield


def _guided_step_impl(
    cond: Tensor,
    uncond: Tensor | None,
    sample: Tensor,
    alpha_t: Tensor,
    alpha_prev: Tensor,
    noise: Tensor | None,
    guidance_scale: float,
    prediction: int,
    eta: float,
) -> tuple[Tensor, Tensor, Tensor]:
    lib, stream = _runtime(sample)
    with _device_of(sample):
        return lib.guided_step_fwd(
            cond, uncond, sample, noise, alpha_t, alpha_prev, guidance_scale, prediction, eta, stream
        )


def _guided_step_backward_impl(
    grad_guided: Tensor,
    grad_x0: Tensor,
    grad_prev: Tensor,
    alpha_t: Tensor,
    alpha_prev: Tensor,
    guidance_scale: float,
    prediction: int,
    eta: float,
    has_uncond: bool,
    need_cond: bool,
    need_uncond: bool,
    need_sample: bool,
    need_noise: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    lib, stream = _runtime(grad_prev)
    with _device_of(grad_prev):
        grads = lib.guided_step_bwd(
            grad_guided.contiguous(),
            grad_x0.contiguous(),
            grad_prev.contiguous(),
            alpha_t,
            alpha_prev,
            guidance_scale,
            prediction,
            eta,
            has_uncond,
            (need_cond, need_uncond, need_sample, need_noise),
            stream,
        )
    return tuple(grad_prev.new_empty(0) if g is None else g for g in grads)


def _reward_head_impl(motion: Tensor, text: Tensor, eps: float) -> Tensor:
    lib, stream = _runtime(motion)
    with _device_of(motion):
        return lib.reward_head_fwd(motion, text, eps, stream)


def _reward_head_backward_impl(
    motion: Tensor, text: Tensor, grad: Tensor, eps: float, need_motion: bool, need_text: bool
) -> tuple[Tensor, Tensor]:
    lib, stream = _runtime(motion)
    with _device_of(motion):
        grads = lib.reward_head_bwd(motion, text, grad.contiguous(), eps, (need_motion, need_text), stream)
    return tuple(motion.new_empty(0) if g is None else g for g in grads)


def _attention_impl(
    q: Tensor, k: Tensor, v: Tensor, q_lengths: Tensor | None, kv_lengths: Tensor | None, scale: float
) -> Tensor:
    lib, stream = _runtime(q)
    with _device_of(q):
        return lib.attention_fwd(q, k, v, q_lengths, kv_lengths, scale, stream)


_IMPLS = {
    "guided_step": _guided_step_impl,
    "guided_step_backward": _guided_step_backward_impl,
    "reward_head": _reward_head_impl,
    "reward_head_backward": _reward_head_backward_impl,
    "attention": _attention_impl,
}
_OPS = {
    name: torch.library.custom_op(f"easytune::cuda_{name}", fn, mutates_args=(), device_types="cuda")
    for name, fn in _IMPLS.items()
}


@_OPS["guided_step"].register_fake
def _(cond, uncond, sample, alpha_t, alpha_prev, noise, guidance_scale, prediction, eta):
    return torch.empty_like(sample), torch.empty_like(sample), torch.empty_like(sample)


@_OPS["guided_step_backward"].register_fake
def _(
    grad_guided,
    grad_x0,
    grad_prev,
    alpha_t,
    alpha_prev,
    guidance_scale,
    prediction,
    eta,
    has_uncond,
    need_cond,
    need_uncond,
    need_sample,
    need_noise,
):
    return tuple(
        torch.empty_like(grad_prev) if n else grad_prev.new_empty(0)
        for n in (need_cond, need_uncond, need_sample, need_noise)
    )


@_OPS["reward_head"].register_fake
def _(motion, text, eps):
    return motion.new_empty(motion.shape[0])


@_OPS["reward_head_backward"].register_fake
def _(motion, text, grad, eps, need_motion, need_text):
    return tuple(torch.empty_like(motion) if n else motion.new_empty(0) for n in (need_motion, need_text))


@_OPS["attention"].register_fake
def _(q, k, v, q_lengths, kv_lengths, scale):
    return q.new_empty(q.shape)


def _guided_step_setup(ctx, inputs, output):
    _, uncond, _, alpha_t, alpha_prev, noise, guidance_scale, prediction, eta = inputs
    ctx.save_for_backward(alpha_t, alpha_prev)
    ctx.has_uncond, ctx.has_noise = uncond is not None, noise is not None
    ctx.params = (guidance_scale, prediction, eta)


def _guided_step_backward(ctx, grad_guided, grad_x0, grad_prev):
    need = ctx.needs_input_grad
    need_cond, need_uncond = need[0], need[1] and ctx.has_uncond
    need_sample, need_noise = need[2], need[5] and ctx.has_noise
    grads = _OPS["guided_step_backward"](
        grad_guided,
        grad_x0,
        grad_prev,
        *ctx.saved_tensors,
        *ctx.params,
        ctx.has_uncond,
        need_cond,
        need_uncond,
        need_sample,
        need_noise,
    )
    d_cond, d_uncond, d_sample, d_noise = (
        g if n else None for g, n in zip(grads, (need_cond, need_uncond, need_sample, need_noise))
    )
    return d_cond, d_uncond, d_sample, None, None, d_noise, None, None, None


def _reward_head_setup(ctx, inputs, output):
    motion, text, eps = inputs
    ctx.save_for_backward(motion, text)
    ctx.eps = eps


def _reward_head_backward(ctx, grad):
    need_motion, need_text = ctx.needs_input_grad[:2]
    grads = _OPS["reward_head_backward"](*ctx.saved_tensors, grad, ctx.eps, need_motion, need_text)
    return (grads[0] if need_motion else None), (grads[1] if need_text else None), None


_OPS["guided_step"].register_autograd(_guided_step_backward, setup_context=_guided_step_setup)
_OPS["reward_head"].register_autograd(_reward_head_backward, setup_context=_reward_head_setup)


def use_emulator(lib: CudaLibrary | None) -> None:
    """Run the ``easytune::cuda_*`` ops on CPU tensors through ``lib``, a host-emulated build of ``csrc/``
    (``-DEASYTUNE_EMULATE``, see docs/cuda.md): tests of the kernels and of this glue without a GPU.
    ``None`` switches it off (CPU tensors then raise). The dispatch backend still requires CUDA tensors."""
    global _EMULATOR, _CPU_KERNELS_REGISTERED
    if lib is not None:
        if not lib.emulated:
            raise ConfigError(f"use_emulator needs a host-emulated build, {lib.path} is a CUDA build")
        if not _CPU_KERNELS_REGISTERED:
            for name, op in _OPS.items():
                op.register_kernel("cpu", _IMPLS[name])
            _CPU_KERNELS_REGISTERED = True
    _EMULATOR = lib


# ---- the dispatch backend -------------------------------------------------------------------


def _per_sample_alpha(name: str, alpha: Tensor | float, sample: Tensor) -> Tensor:
    alpha = torch.as_tensor(alpha, device=sample.device)
    if alpha.requires_grad:
        raise BackendUnavailableError(
            f"guided_step: {name} requires grad; the cuda backend treats alphas as "
            f"constants (use backend='math' or 'triton')"
        )
    batch = sample.shape[0]
    alpha = alpha.to(torch.float32)
    if alpha.dim() == 0:
        alpha = alpha.expand(batch)
    if alpha.shape != (batch,):
        raise ValueError(
            f"guided_step: {name} must be a scalar or have shape [{batch}], got {tuple(alpha.shape)}"
        )
    return alpha.contiguous()


def _guided_step_cuda(
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
    if eta > 0 and noise is None:
        raise ValueError("guided_step: eta > 0 needs the noise tensor (same shape as sample)")
    check_devices(model_cond, model_uncond, sample, noise if eta > 0 else None)
    return _OPS["guided_step"](
        model_cond.contiguous(),
        None if model_uncond is None else model_uncond.contiguous(),
        sample.contiguous(),
        _per_sample_alpha("alpha_prod_t", alpha_prod_t, sample),
        _per_sample_alpha("alpha_prod_t_prev", alpha_prod_t_prev, sample),
        noise.contiguous() if eta > 0 else None,
        float(guidance_scale),
        PREDICTION_CODES[prediction_type],
        float(eta),
    )


def _reward_head_cuda(motion, text, eps=1e-8):
    return _OPS["reward_head"](motion.contiguous(), text.contiguous(), float(eps))


def _attention_cuda(q, k, v, q_lengths=None, kv_lengths=None, scale=None, dropout_p=0.0):
    if dropout_p:
        raise BackendUnavailableError(f"attention: the cuda backend has no dropout (dropout_p={dropout_p})")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    lengths = [
        None if n is None else n.to(device=q.device, dtype=torch.int64).contiguous()
        for n in (q_lengths, kv_lengths)
    ]
    return _OPS["attention"](q, k, v, *lengths, scale)


dispatch.register(
    "guided_step", "cuda", _guided_step_cuda, _guided_step_extra, capabilities=STEP_CAPABILITIES
)
dispatch.register(
    "reward_head", "cuda", _reward_head_cuda, _reward_head_extra, capabilities=HEAD_CAPABILITIES
)
dispatch.register("attention", "cuda", _attention_cuda, _attention_extra, capabilities=ATTENTION_CAPABILITIES)
