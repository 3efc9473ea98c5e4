"""Fused classifier-free guidance + DDIM step: Triton kernels, launchers, torch.library ops,
``torch.autograd.Function`` and the functional API ``guided_step``.

Tensors ``cond``, ``uncond`` (optional), ``sample``, ``noise`` (optional): same shape [B, ...];
``alpha_prod_t`` / ``alpha_prod_t_prev``: [B] (any float dtype). One program handles a block of one
sample, so the per-sample coefficients are computed once per program, in fp32. Every output is
linear in (guided, sample):

    x0_hat = kx0_g * guided + kx0_x * sample
    eps    = ke_g  * guided + ke_x  * sample
    prev   = sqrt(a_prev) * x0_hat + sqrt(1 - a_prev - std^2) * eps + std * noise

so the forward reads cond/uncond/sample(/noise) once and writes guided, x0_hat, prev once, and the
backward reads the gradients of the outputs that are used and writes d cond, d uncond, d sample.
For the flow prediction types the two per-sample numbers are sigma_t and sigma_next and
``prev = (1 - s_next) * x0_hat + s_next * eps`` (the Euler step; no noise term).
Formulas: ``easytune.ops.guided_step`` (the reference, diffusers' DDIM and flow Euler steps).
"""

import torch
import triton
import triton.language as tl

from easytune_kernels._common import autotune_configs, distinct

PREDICTION_CODES = {"epsilon": 0, "sample": 1, "v_prediction": 2, "flow_prediction": 3, "flow_sample": 4}


def _configs() -> list[triton.Config]:
    return autotune_configs(
        [triton.Config({"BLOCK": b}, num_warps=w) for b, w in ((1024, 4), (2048, 8), (4096, 8))],
        triton.Config({"BLOCK": 4096}, num_warps=4),
    )


@triton.jit
def _coefficients(A_T, A_PREV, b, eta, PRED: tl.constexpr):
    """Per-sample fp32 coefficients (kx0_g, kx0_x, kp_g, kp_x, std) of x0_hat and prev."""
    a = tl.load(A_T + b).to(tl.float32)
    a_prev = tl.load(A_PREV + b).to(tl.float32)
    if PRED == 3:  # flow velocity (a = sigma, a_prev = sigma_next): x0 = x - s g, prev = x + (s' - s) g
        kx0_g = -a
        kx0_x = 1.0
        kp_g = a_prev - a
        kp_x = 1.0
        std = 0.0
    elif PRED == 4:  # flow x0: x0 = g, eps = (x - (1 - s) g) / s, prev = (1 - s') x0 + s' eps
        kx0_g = 1.0
        kx0_x = 0.0
        kp_g = (1.0 - a_prev) - a_prev * (1.0 - a) / a
        kp_x = a_prev / a
        std = 0.0
    else:
        sa = tl.sqrt(a)
        sb = tl.sqrt(1.0 - a)
        if PRED == 0:  # epsilon: x0 = (x - sb * g) / sa, eps = g
            kx0_g = -sb / sa
            kx0_x = 1.0 / sa
            ke_g = 1.0
            ke_x = 0.0
        elif PRED == 1:  # sample: x0 = g, eps = (x - sa * g) / sb
            kx0_g = 1.0
            kx0_x = 0.0
            ke_g = -sa / sb
            ke_x = 1.0 / sb
        else:  # v_prediction: x0 = sa * x - sb * g, eps = sa * g + sb * x
            kx0_g = -sb
            kx0_x = sa
            ke_g = sa
            ke_x = sb
        std = eta * tl.sqrt((1.0 - a_prev) / (1.0 - a) * (1.0 - a / a_prev))
        c_dir = tl.sqrt(1.0 - a_prev - std * std)
        s_prev = tl.sqrt(a_prev)
        kp_g = s_prev * kx0_g + c_dir * ke_g
        kp_x = s_prev * kx0_x + c_dir * ke_x
    return kx0_g, kx0_x, kp_g, kp_x, std


@triton.autotune(configs=_configs(), key=["N"])
@triton.jit
def _fwd_kernel(
    C,
    U,
    X,
    NOISE,
    A_T,
    A_PREV,
    G,
    X0,
    PREV,
    N,
    w,
    eta,
    HAS_UNCOND: tl.constexpr,
    HAS_NOISE: tl.constexpr,
    PRED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    b = tl.program_id(1)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    in_range = offs < N
    idx = b.to(tl.int64) * N + offs
    kx0_g, kx0_x, kp_g, kp_x, std = _coefficients(A_T, A_PREV, b, eta, PRED)
    g = tl.load(C + idx, mask=in_range, other=0.0).to(tl.float32)
    if HAS_UNCOND:
        u = tl.load(U + idx, mask=in_range, other=0.0).to(tl.float32)
        g = u + w * (g - u)
    x = tl.load(X + idx, mask=in_range, other=0.0).to(tl.float32)
    prev = kp_g * g + kp_x * x
    if HAS_NOISE:
        prev += std * tl.load(NOISE + idx, mask=in_range, other=0.0).to(tl.float32)
    tl.store(G + idx, g.to(G.dtype.element_ty), mask=in_range)
    tl.store(X0 + idx, (kx0_g * g + kx0_x * x).to(X0.dtype.element_ty), mask=in_range)
    tl.store(PREV + idx, prev.to(PREV.dtype.element_ty), mask=in_range)


@triton.autotune(configs=_configs(), key=["N"])
@triton.jit
def _bwd_kernel(
    DG,
    DX0,
    DPREV,
    A_T,
    A_PREV,
    DC,
    DU,
    DX,
    N,
    w,
    eta,
    HAS_DG: tl.constexpr,
    HAS_DX0: tl.constexpr,
    HAS_DPREV: tl.constexpr,
    HAS_UNCOND: tl.constexpr,
    PRED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    b = tl.program_id(1)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    in_range = offs < N
    idx = b.to(tl.int64) * N + offs
    kx0_g, kx0_x, kp_g, kp_x, std = _coefficients(A_T, A_PREV, b, eta, PRED)
    dg = tl.zeros([BLOCK], tl.float32)
    dx = tl.zeros([BLOCK], tl.float32)
    if HAS_DG:
        dg += tl.load(DG + idx, mask=in_range, other=0.0).to(tl.float32)
    if HAS_DX0:
        d = tl.load(DX0 + idx, mask=in_range, other=0.0).to(tl.float32)
        dg += kx0_g * d
        dx += kx0_x * d
    if HAS_DPREV:
        d = tl.load(DPREV + idx, mask=in_range, other=0.0).to(tl.float32)
        dg += kp_g * d
        dx += kp_x * d
    if HAS_UNCOND:
        tl.store(DC + idx, (w * dg).to(DC.dtype.element_ty), mask=in_range)
        tl.store(DU + idx, ((1.0 - w) * dg).to(DU.dtype.element_ty), mask=in_range)
    else:
        tl.store(DC + idx, dg.to(DC.dtype.element_ty), mask=in_range)
    tl.store(DX + idx, dx.to(DX.dtype.element_ty), mask=in_range)


def _flat(t: torch.Tensor | None, batch: int) -> torch.Tensor | None:
    return None if t is None else t.contiguous().reshape(batch, -1)


def _alphas(alpha: torch.Tensor | float, batch: int, device: torch.device) -> torch.Tensor:
    """A scalar or [B] alpha as a contiguous [B] tensor on ``device``."""
    alpha = torch.as_tensor(alpha, device=device)
    return alpha.expand(batch).contiguous() if alpha.dim() == 0 else alpha.contiguous()


@torch.library.custom_op("easytune_kernels::guided_step_fwd", mutates_args=())
def guided_step_fwd(
    cond: torch.Tensor,
    uncond: torch.Tensor | None,
    sample: torch.Tensor,
    alpha_prod_t: torch.Tensor,
    alpha_prod_t_prev: torch.Tensor,
    guidance_scale: float,
    prediction_type: str,
    eta: float,
    noise: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launches the forward kernel; returns ``(guided, x0_hat, prev_sample)`` shaped like ``sample``.
    ``alpha_prod_t`` / ``alpha_prod_t_prev``: contiguous [B] on the device of ``sample``."""
    B = sample.shape[0]
    outs = tuple(torch.empty(sample.shape, dtype=sample.dtype, device=sample.device) for _ in range(3))
    n = sample.numel() // B if B else 0
    if n == 0:
        return outs
    use_noise = noise is not None and eta > 0
    c, u, x, z = _flat(cond, B), _flat(uncond, B), _flat(sample, B), _flat(noise if use_noise else None, B)
    _fwd_kernel[lambda meta: (triton.cdiv(n, meta["BLOCK"]), B)](
        c,
        u if u is not None else c,
        x,
        z if z is not None else x,
        alpha_prod_t,
        alpha_prod_t_prev,
        *outs,
        n,
        float(guidance_scale),
        float(eta),
        HAS_UNCOND=u is not None,
        HAS_NOISE=use_noise,
        PRED=PREDICTION_CODES[prediction_type],
    )
    return outs


@guided_step_fwd.register_fake
def _(cond, uncond, sample, alpha_prod_t, alpha_prod_t_prev, guidance_scale, prediction_type, eta, noise):
    return tuple(sample.new_empty(sample.shape) for _ in range(3))


@torch.library.custom_op("easytune_kernels::guided_step_bwd", mutates_args=())
def guided_step_bwd(
    grad_guided: torch.Tensor | None,
    grad_x0: torch.Tensor | None,
    grad_prev: torch.Tensor | None,
    sample: torch.Tensor,
    alpha_prod_t: torch.Tensor,
    alpha_prod_t_prev: torch.Tensor,
    guidance_scale: float,
    prediction_type: str,
    eta: float,
    has_uncond: bool,
) -> list[torch.Tensor]:
    """Launches the backward kernel; returns ``[d cond, d uncond, d sample]`` (``[d cond, d sample]``
    without ``uncond``), typed like ``sample``. A None output gradient counts as zero."""
    B = sample.shape[0]
    grads = [
        torch.empty(sample.shape, dtype=sample.dtype, device=sample.device)
        for _ in range(3 if has_uncond else 2)
    ]
    n = sample.numel() // B if B else 0
    if n == 0:
        return grads
    dg, dx0, dp = _flat(grad_guided, B), _flat(grad_x0, B), _flat(grad_prev, B)
    anchor = next(t for t in (dg, dx0, dp, sample) if t is not None)
    _bwd_kernel[lambda meta: (triton.cdiv(n, meta["BLOCK"]), B)](
        anchor if dg is None else dg,
        anchor if dx0 is None else dx0,
        anchor if dp is None else dp,
        alpha_prod_t,
        alpha_prod_t_prev,
        grads[0],
        grads[1],
        grads[-1],
        n,
        float(guidance_scale),
        float(eta),
        HAS_DG=dg is not None,
        HAS_DX0=dx0 is not None,
        HAS_DPREV=dp is not None,
        HAS_UNCOND=has_uncond,
        PRED=PREDICTION_CODES[prediction_type],
    )
    return grads


@guided_step_bwd.register_fake
def _(
    grad_guided,
    grad_x0,
    grad_prev,
    sample,
    alpha_prod_t,
    alpha_prod_t_prev,
    guidance_scale,
    prediction_type,
    eta,
    has_uncond,
):
    return [sample.new_empty(sample.shape) for _ in range(3 if has_uncond else 2)]


def _noise_std(alpha_prod_t: torch.Tensor, alpha_prod_t_prev: torch.Tensor, eta: float, like: torch.Tensor):
    """DDIM's per-sample noise scale, [B, 1, ..., 1] (only needed when the noise itself needs a gradient)."""
    a, a_prev = alpha_prod_t.float(), alpha_prod_t_prev.float()
    std = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).sqrt()
    return std.reshape(-1, *([1] * (like.dim() - 1)))


class GuidedStepFunction(torch.autograd.Function):
    """Autograd wrapper: gradients for cond, uncond, sample and noise (not for the alphas)."""

    @staticmethod
    def forward(
        ctx,
        cond,
        uncond,
        sample,
        alpha_prod_t,
        alpha_prod_t_prev,
        guidance_scale,
        prediction_type,
        eta,
        noise,
    ):
        outs = torch.ops.easytune_kernels.guided_step_fwd(
            cond, uncond, sample, alpha_prod_t, alpha_prod_t_prev, guidance_scale, prediction_type, eta, noise
        )
        ctx.save_for_backward(sample, alpha_prod_t, alpha_prod_t_prev)
        ctx.args = (guidance_scale, prediction_type, eta)
        ctx.has_uncond = uncond is not None
        ctx.set_materialize_grads(False)
        return outs

    @staticmethod
    def backward(ctx, grad_guided, grad_x0, grad_prev):
        sample, alpha_prod_t, alpha_prod_t_prev = ctx.saved_tensors
        guidance_scale, prediction_type, eta = ctx.args
        if grad_guided is None and grad_x0 is None and grad_prev is None:
            return (None,) * 9
        grads = torch.ops.easytune_kernels.guided_step_bwd(
            grad_guided,
            grad_x0,
            grad_prev,
            sample,
            alpha_prod_t,
            alpha_prod_t_prev,
            guidance_scale,
            prediction_type,
            eta,
            ctx.has_uncond,
        )
        d_cond, d_sample = grads[0], grads[-1]
        d_uncond = grads[1] if ctx.has_uncond else None
        d_noise = None
        if ctx.needs_input_grad[8] and grad_prev is not None and eta > 0:
            d_noise = (_noise_std(alpha_prod_t, alpha_prod_t_prev, eta, sample) * grad_prev).to(sample.dtype)
        return d_cond, d_uncond, d_sample, None, None, None, None, None, d_noise


def guided_step(
    cond: torch.Tensor,
    uncond: torch.Tensor | None,
    sample: torch.Tensor,
    alpha_prod_t: torch.Tensor,
    alpha_prod_t_prev: torch.Tensor,
    guidance_scale: float = 1.0,
    prediction_type: str = "epsilon",
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Guidance + DDIM step with the Triton kernels; returns ``(guided, x0_hat, prev_sample)``.

    ``alpha_prod_t`` / ``alpha_prod_t_prev``: [B] or scalars, tensors or numbers. Inputs are assumed
    valid (``easytune.ops.guided_step`` checks them and picks this backend).
    """
    B = sample.shape[0]
    a_t, a_prev = _alphas(alpha_prod_t, B, sample.device), _alphas(alpha_prod_t_prev, B, sample.device)
    cond, uncond, sample, a_t, a_prev, noise = distinct(cond, uncond, sample, a_t, a_prev, noise)
    return GuidedStepFunction.apply(
        cond, uncond, sample, a_t, a_prev, float(guidance_scale), prediction_type, float(eta), noise
    )
