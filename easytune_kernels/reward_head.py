"""Fused reward head (L2 normalisation + cosine of two latents): Triton kernels, launchers,
torch.library ops, ``torch.autograd.Function`` and the functional API ``reward_head``.

``motion``, ``text``: [B, D] (unit-stride rows), fp32 / fp16 / bf16, reduced in fp32. With
``N_m = max(|m|, eps)`` (``torch.nn.functional.normalize``'s convention):

    cos  = <m, t> / (N_m * N_t)                                          [B], dtype of the inputs
    d m  = g * (t / (N_m * N_t) - cos * m / N_m^2 * [|m| >= eps])        (and symmetrically d t)

The forward also returns fp32 ``stats`` [3, B] = (|m|, |t|, cos), so the backward reads each input once
and never uses the rounded cosine.
"""

import torch
import triton
import triton.language as tl

from easytune_kernels._common import distinct, stride_one_last


def _blocks(batch: int, dim: int) -> dict[str, int]:
    """Launch meta-parameters: up to 4096 elements of each input per chunk (rows x columns)."""
    block_d = min(triton.next_power_of_2(max(dim, 1)), 4096)
    block_b = max(1, min(4096 // block_d, triton.next_power_of_2(batch)))
    return dict(BLOCK_B=block_b, BLOCK_D=block_d, num_warps=8 if block_b * block_d >= 4096 else 4)


@triton.jit
def _fwd_kernel(M, T, COS, STATS, B, D, s_m, s_t, eps, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    mm = tl.zeros([BLOCK_B], tl.float32)
    tt = tl.zeros([BLOCK_B], tl.float32)
    mt = tl.zeros([BLOCK_B], tl.float32)
    for start in range(0, D, BLOCK_D):
        cols = start + tl.arange(0, BLOCK_D)
        ok = row_ok[:, None] & (cols < D)[None, :]
        m = tl.load(M + rows[:, None].to(tl.int64) * s_m + cols[None, :], mask=ok, other=0.0).to(tl.float32)
        t = tl.load(T + rows[:, None].to(tl.int64) * s_t + cols[None, :], mask=ok, other=0.0).to(tl.float32)
        mm += tl.sum(m * m, 1)
        tt += tl.sum(t * t, 1)
        mt += tl.sum(m * t, 1)
    norm_m = tl.sqrt(mm)
    norm_t = tl.sqrt(tt)
    cos = mt / (tl.maximum(norm_m, eps) * tl.maximum(norm_t, eps))
    tl.store(COS + rows, cos.to(COS.dtype.element_ty), mask=row_ok)
    tl.store(STATS + rows, norm_m, mask=row_ok)
    tl.store(STATS + B + rows, norm_t, mask=row_ok)
    tl.store(STATS + 2 * B + rows, cos, mask=row_ok)


@triton.jit
def _bwd_kernel(
    GRAD, M, T, STATS, DM, DT, B, D, s_m, s_t, s_dm, s_dt, eps, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    g = tl.load(GRAD + rows, mask=row_ok, other=0.0).to(tl.float32)
    norm_m = tl.load(STATS + rows, mask=row_ok, other=1.0)
    norm_t = tl.load(STATS + B + rows, mask=row_ok, other=1.0)
    cos = tl.load(STATS + 2 * B + rows, mask=row_ok, other=0.0)
    n_m = tl.maximum(norm_m, eps)
    n_t = tl.maximum(norm_t, eps)
    cross = g / (n_m * n_t)
    self_m = tl.where(norm_m >= eps, g * cos / (n_m * n_m), 0.0)
    self_t = tl.where(norm_t >= eps, g * cos / (n_t * n_t), 0.0)
    for start in range(0, D, BLOCK_D):
        cols = start + tl.arange(0, BLOCK_D)
        ok = row_ok[:, None] & (cols < D)[None, :]
        m = tl.load(M + rows[:, None].to(tl.int64) * s_m + cols[None, :], mask=ok, other=0.0).to(tl.float32)
        t = tl.load(T + rows[:, None].to(tl.int64) * s_t + cols[None, :], mask=ok, other=0.0).to(tl.float32)
        dm = cross[:, None] * t - self_m[:, None] * m
        dt = cross[:, None] * m - self_t[:, None] * t
        tl.store(DM + rows[:, None].to(tl.int64) * s_dm + cols[None, :], dm.to(DM.dtype.element_ty), mask=ok)
        tl.store(DT + rows[:, None].to(tl.int64) * s_dt + cols[None, :], dt.to(DT.dtype.element_ty), mask=ok)


@torch.library.custom_op("easytune_kernels::reward_head_fwd", mutates_args=())
def reward_head_fwd(
    motion: torch.Tensor, text: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launches the forward kernel; returns ``(cos [B], stats fp32 [3, B] = (|motion|, |text|, cos))``."""
    B, D = motion.shape
    cos = torch.empty(B, dtype=motion.dtype, device=motion.device)
    stats = torch.empty((3, B), dtype=torch.float32, device=motion.device)
    if B == 0:
        return cos, stats
    motion, text = stride_one_last(motion), stride_one_last(text)
    meta = _blocks(B, D)
    _fwd_kernel[(triton.cdiv(B, meta["BLOCK_B"]),)](
        motion, text, cos, stats, B, D, motion.stride(0), text.stride(0), float(eps), **meta
    )
    return cos, stats


@reward_head_fwd.register_fake
def _(motion, text, eps):
    B = motion.shape[0]
    return motion.new_empty(B), motion.new_empty((3, B), dtype=torch.float32)


@torch.library.custom_op("easytune_kernels::reward_head_bwd", mutates_args=())
def reward_head_bwd(
    grad: torch.Tensor,
    motion: torch.Tensor,
    text: torch.Tensor,
    stats: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launches the backward kernel; returns ``(d motion, d text)`` shaped and typed like the inputs."""
    B, D = motion.shape
    dm = torch.empty((B, D), dtype=motion.dtype, device=motion.device)
    dt = torch.empty((B, D), dtype=text.dtype, device=text.device)
    if B == 0:
        return dm, dt
    motion, text, grad = stride_one_last(motion), stride_one_last(text), grad.contiguous()
    meta = _blocks(B, D)
    _bwd_kernel[(triton.cdiv(B, meta["BLOCK_B"]),)](
        grad,
        motion,
        text,
        stats,
        dm,
        dt,
        B,
        D,
        motion.stride(0),
        text.stride(0),
        dm.stride(0),
        dt.stride(0),
        float(eps),
        **meta,
    )
    return dm, dt


@reward_head_bwd.register_fake
def _(grad, motion, text, stats, eps):
    return motion.new_empty(motion.shape), text.new_empty(text.shape)


class RewardHeadFunction(torch.autograd.Function):
    """Autograd wrapper over the two library ops."""

    @staticmethod
    def forward(ctx, motion, text, eps):
        cos, stats = torch.ops.easytune_kernels.reward_head_fwd(motion, text, eps)
        ctx.save_for_backward(motion, text, stats)
        ctx.eps = eps
        return cos

    @staticmethod
    def backward(ctx, grad):
        dm, dt = torch.ops.easytune_kernels.reward_head_bwd(grad, *ctx.saved_tensors, ctx.eps)
        return dm, dt, None


def reward_head(motion: torch.Tensor, text: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosine of L2-normalised latents with the Triton kernels, [B, D] x [B, D] -> [B].

    Inputs are assumed valid (``easytune.ops.reward_head`` checks them and picks this backend).
    """
    return RewardHeadFunction.apply(*distinct(motion, text), float(eps))
