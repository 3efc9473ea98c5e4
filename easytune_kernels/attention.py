"""Fused masked attention (flash-attention 2 style): Triton kernels, launchers, torch.library ops,
``torch.autograd.Function`` and the functional API ``attention``.

Shapes: ``q`` [B, H, Tq, D], ``k`` / ``v`` [B, H, Tk, D] (any strides with a unit-stride last dim),
``q_lengths`` / ``kv_lengths`` int [B] (None = all valid): frame j of sample b is valid iff
j < lengths[b]. D is a power of two in [16, 128]; fp32 / fp16 / bf16, accumulation in fp32.

Forward: one program per (query block, b, h); an online softmax over the key blocks that hold valid
keys (the loop stops at kv_lengths[b], padded keys are never read) keeps only the per-row
log-sum-exp ``lse`` [B, H, Tq] (fp32, natural log). Padded query rows and rows with no valid key get
output 0 and ``lse = +inf``, which makes every recomputed probability 0 in the backward, hence zero
gradients and no NaN. Backward: ``delta = rowsum(dO * O)``, then one kernel for dK/dV (a program per key
block, looping over query blocks) and one for dQ (a program per query block): no atomics, no T x T
matrix in memory.

Dropout (``dropout_p > 0``) drops attention probabilities with a counter-based RNG (Philox,
``tl.rand``) keyed by a 64-bit seed drawn from torch's default CPU generator and by the element's
index (b, h, i, j), so the backward regenerates the same mask instead of storing it; kept
probabilities are scaled by 1 / (1 - dropout_p), like ``torch.nn.functional.dropout``.
"""

import math

import torch
import triton
import triton.language as tl

from easytune_kernels._common import INTERPRET, autotune_configs, distinct, dot_precision, mm, stride_one_last

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


def _configs() -> list[triton.Config]:
    # Motion sequences are short (40..200 frames, at most ~512): small tiles keep the grid full at
    # B*H of a few hundred and waste little on the last, partial block.
    return autotune_configs(
        [
            triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
            for m, n, w, s in (
                (32, 32, 2, 2),
                (64, 32, 4, 2),
                (32, 64, 4, 2),
                (64, 64, 4, 2),
                (64, 64, 4, 3),
                (128, 64, 8, 2),
            )
        ],
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=1),
    )


def _prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Autotune pruning (Triton passes the positional arguments as ``named_args``, the keyword ones as
    ``kwargs``): drop tiles longer than the padded sequences (pure waste) and fp32 128-row tiles at D=128."""
    args = {**named_args, **kwargs}
    tq, tk = args["TQ_BUCKET"], args["TK_BUCKET"]
    big = args["HEAD_DIM"] == 128 and args["Q"].dtype == torch.float32
    kept = [
        c
        for c in configs
        if c.kwargs["BLOCK_M"] <= max(tq, 32)
        and c.kwargs["BLOCK_N"] <= max(tk, 32)
        and not (big and c.kwargs["BLOCK_M"] == 128)
    ]
    return kept or configs[:1]


@triton.jit
def _kept(seed, bh, rows, cols, TQ, TK, dropout_p):
    """Dropout mask of the attention probabilities (rows, cols broadcast to the block's shape)."""
    return tl.rand(seed, (bh.to(tl.int64) * TQ + rows) * TK + cols) >= dropout_p


_AUTOTUNE = dict(
    configs=_configs(),
    key=["TQ_BUCKET", "TK_BUCKET", "HEAD_DIM"],
    prune_configs_by=None if INTERPRET else {"early_config_prune": _prune},
)


@triton.autotune(**_AUTOTUNE)
@triton.jit(do_not_specialize=["seed"])
def _fwd_kernel(
    Q,
    K,
    V,
    O,
    LSE,
    QLEN,
    KVLEN,
    qk_scale,
    dropout_p,
    seed,
    s_qb,
    s_qh,
    s_qt,
    s_kb,
    s_kh,
    s_kt,
    s_vb,
    s_vh,
    s_vt,
    s_ob,
    s_oh,
    s_ot,
    H,
    TQ,
    TK,
    TQ_BUCKET,
    TK_BUCKET,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    FP32_OPERANDS: tl.constexpr,
    PRECISION: tl.constexpr,
    DROPOUT: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    q_len = tl.load(QLEN + b).to(tl.int32)
    kv_len = tl.load(KVLEN + b).to(tl.int32)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < q_len
    q = tl.load(
        Q + b.to(tl.int64) * s_qb + h * s_qh + offs_m[:, None] * s_qt + offs_d[None, :],
        mask=row_ok[:, None],
        other=0.0,
    )
    k_base = K + b.to(tl.int64) * s_kb + h * s_kh
    v_base = V + b.to(tl.int64) * s_vb + h * s_vh
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    hi = tl.where(pid_m * BLOCK_M < q_len, kv_len, 0)  # a block of padded queries reads no key
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + offs_n
        col_ok = cols < kv_len
        kt = tl.load(k_base + cols[None, :] * s_kt + offs_d[:, None], mask=col_ok[None, :], other=0.0)
        s = mm(q, kt, FP32_OPERANDS, PRECISION) * qk_scale
        s = tl.where(col_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if DROPOUT:
            p = tl.where(_kept(seed, bh, offs_m[:, None], cols[None, :], TQ, TK, dropout_p), p, 0.0)
        v = tl.load(v_base + cols[:, None] * s_vt + offs_d[None, :], mask=col_ok[:, None], other=0.0)
        acc = acc * alpha[:, None] + mm(p.to(v.dtype), v, FP32_OPERANDS, PRECISION)
        m_i = m_new
    ok = row_ok & (l_i > 0)
    if DROPOUT:
        acc = acc / (1.0 - dropout_p)
    out = tl.where(ok[:, None], acc / tl.where(ok, l_i, 1.0)[:, None], 0.0)
    lse = tl.where(ok, (m_i + tl.math.log2(tl.where(ok, l_i, 1.0))) * LN2, float("inf"))
    in_range = offs_m < TQ
    tl.store(
        O + b.to(tl.int64) * s_ob + h * s_oh + offs_m[:, None] * s_ot + offs_d[None, :],
        out.to(O.dtype.element_ty),
        mask=in_range[:, None],
    )
    tl.store(LSE + bh.to(tl.int64) * TQ + offs_m, lse, mask=in_range)


@triton.jit
def _delta_kernel(
    O, DO, DELTA, s_ob, s_oh, s_ot, s_db, s_dh, s_dt, H, TQ, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    in_range = offs_m < TQ
    o = tl.load(
        O + b.to(tl.int64) * s_ob + h * s_oh + offs_m[:, None] * s_ot + offs_d[None, :],
        mask=in_range[:, None],
        other=0.0,
    ).to(tl.float32)
    do = tl.load(
        DO + b.to(tl.int64) * s_db + h * s_dh + offs_m[:, None] * s_dt + offs_d[None, :],
        mask=in_range[:, None],
        other=0.0,
    ).to(tl.float32)
    tl.store(DELTA + bh.to(tl.int64) * TQ + offs_m, tl.sum(o * do, 1), mask=in_range)


@triton.autotune(**_AUTOTUNE)
@triton.jit(do_not_specialize=["seed"])
def _dkdv_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DK,
    DV,
    QLEN,
    KVLEN,
    qk_scale,
    sm_scale,
    dropout_p,
    seed,
    s_qb,
    s_qh,
    s_qt,
    s_kb,
    s_kh,
    s_kt,
    s_vb,
    s_vh,
    s_vt,
    s_db,
    s_dh,
    s_dt,
    s_dkb,
    s_dkh,
    s_dkt,
    s_dvb,
    s_dvh,
    s_dvt,
    H,
    TQ,
    TK,
    TQ_BUCKET,
    TK_BUCKET,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    FP32_OPERANDS: tl.constexpr,
    PRECISION: tl.constexpr,
    DROPOUT: tl.constexpr,
):
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    q_len = tl.load(QLEN + b).to(tl.int32)
    kv_len = tl.load(KVLEN + b).to(tl.int32)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    col_ok = offs_n < kv_len
    k = tl.load(
        K + b.to(tl.int64) * s_kb + h * s_kh + offs_n[:, None] * s_kt + offs_d[None, :],
        mask=col_ok[:, None],
        other=0.0,
    )
    v = tl.load(
        V + b.to(tl.int64) * s_vb + h * s_vh + offs_n[:, None] * s_vt + offs_d[None, :],
        mask=col_ok[:, None],
        other=0.0,
    )
    q_base = Q + b.to(tl.int64) * s_qb + h * s_qh
    do_base = DO + b.to(tl.int64) * s_db + h * s_dh
    row_base = bh.to(tl.int64) * TQ
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    hi = tl.where(pid_n * BLOCK_N < kv_len, q_len, 0)  # a block of padded keys gets zero gradient
    for start_m in range(0, hi, BLOCK_M):
        rows = start_m + offs_m
        row_ok = rows < q_len
        qt = tl.load(q_base + rows[None, :] * s_qt + offs_d[:, None], mask=row_ok[None, :], other=0.0)
        do = tl.load(do_base + rows[:, None] * s_dt + offs_d[None, :], mask=row_ok[:, None], other=0.0)
        # lse = +inf on padded rows (loaded or stored) -> p = 0 there
        lse = tl.load(LSE + row_base + rows, mask=row_ok, other=float("inf")) * LOG2E
        delta = tl.load(DELTA + row_base + rows, mask=row_ok, other=0.0)
        pt = tl.math.exp2(mm(k, qt, FP32_OPERANDS, PRECISION) * qk_scale - lse[None, :])
        pt = tl.where(col_ok[:, None], pt, 0.0)
        dpt = mm(v, tl.trans(do), FP32_OPERANDS, PRECISION)
        if DROPOUT:
            kept = _kept(seed, bh, rows[None, :], offs_n[:, None], TQ, TK, dropout_p)
            dv += mm((tl.where(kept, pt, 0.0) / (1.0 - dropout_p)).to(do.dtype), do, FP32_OPERANDS, PRECISION)
            dpt = tl.where(kept, dpt / (1.0 - dropout_p), 0.0)
        else:
            dv += mm(pt.to(do.dtype), do, FP32_OPERANDS, PRECISION)
        dst = pt * (dpt - delta[None, :])
        dk += mm(dst.to(qt.dtype), tl.trans(qt), FP32_OPERANDS, PRECISION)
    in_range = offs_n < TK
    tl.store(
        DK + b.to(tl.int64) * s_dkb + h * s_dkh + offs_n[:, None] * s_dkt + offs_d[None, :],
        (dk * sm_scale).to(DK.dtype.element_ty),
        mask=in_range[:, None],
    )
    tl.store(
        DV + b.to(tl.int64) * s_dvb + h * s_dvh + offs_n[:, None] * s_dvt + offs_d[None, :],
        dv.to(DV.dtype.element_ty),
        mask=in_range[:, None],
    )


@triton.autotune(**_AUTOTUNE)
@triton.jit(do_not_specialize=["seed"])
def _dq_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DQ,
    QLEN,
    KVLEN,
    qk_scale,
    sm_scale,
    dropout_p,
    seed,
    s_qb,
    s_qh,
    s_qt,
    s_kb,
    s_kh,
    s_kt,
    s_vb,
    s_vh,
    s_vt,
    s_db,
    s_dh,
    s_dt,
    s_dqb,
    s_dqh,
    s_dqt,
    H,
    TQ,
    TK,
    TQ_BUCKET,
    TK_BUCKET,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    FP32_OPERANDS: tl.constexpr,
    PRECISION: tl.constexpr,
    DROPOUT: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    q_len = tl.load(QLEN + b).to(tl.int32)
    kv_len = tl.load(KVLEN + b).to(tl.int32)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < q_len
    q = tl.load(
        Q + b.to(tl.int64) * s_qb + h * s_qh + offs_m[:, None] * s_qt + offs_d[None, :],
        mask=row_ok[:, None],
        other=0.0,
    )
    do = tl.load(
        DO + b.to(tl.int64) * s_db + h * s_dh + offs_m[:, None] * s_dt + offs_d[None, :],
        mask=row_ok[:, None],
        other=0.0,
    )
    row_base = bh.to(tl.int64) * TQ
    lse = tl.load(LSE + row_base + offs_m, mask=row_ok, other=float("inf")) * LOG2E
    delta = tl.load(DELTA + row_base + offs_m, mask=row_ok, other=0.0)
    k_base = K + b.to(tl.int64) * s_kb + h * s_kh
    v_base = V + b.to(tl.int64) * s_vb + h * s_vh
    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    hi = tl.where(pid_m * BLOCK_M < q_len, kv_len, 0)
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + offs_n
        col_ok = cols < kv_len
        kt = tl.load(k_base + cols[None, :] * s_kt + offs_d[:, None], mask=col_ok[None, :], other=0.0)
        vt = tl.load(v_base + cols[None, :] * s_vt + offs_d[:, None], mask=col_ok[None, :], other=0.0)
        p = tl.math.exp2(mm(q, kt, FP32_OPERANDS, PRECISION) * qk_scale - lse[:, None])
        p = tl.where(col_ok[None, :], p, 0.0)
        dp = mm(do, vt, FP32_OPERANDS, PRECISION)
        if DROPOUT:
            dp = tl.where(
                _kept(seed, bh, offs_m[:, None], cols[None, :], TQ, TK, dropout_p),
                dp / (1.0 - dropout_p),
                0.0,
            )
        ds = p * (dp - delta[:, None])
        dq += mm(ds.to(kt.dtype), tl.trans(kt), FP32_OPERANDS, PRECISION)
    tl.store(
        DQ + b.to(tl.int64) * s_dqb + h * s_dqh + offs_m[:, None] * s_dqt + offs_d[None, :],
        (dq * sm_scale).to(DQ.dtype.element_ty),
        mask=(offs_m < TQ)[:, None],
    )


def _lengths(lengths: torch.Tensor | None, batch: int, size: int, device: torch.device) -> torch.Tensor:
    if lengths is None:
        return torch.full((batch,), size, dtype=torch.int32, device=device)
    return lengths.to(device=device, dtype=torch.int32)


def _strides(name: str, t: torch.Tensor) -> dict[str, int]:
    """The kernels' ``s_<name>b, s_<name>h, s_<name>t`` arguments (batch, head, time strides of ``t``)."""
    return {f"s_{name}b": t.stride(0), f"s_{name}h": t.stride(1), f"s_{name}t": t.stride(2)}


def _common_kwargs(q: torch.Tensor, k: torch.Tensor, dropout_p: float, seed: torch.Tensor | None) -> dict:
    return dict(
        dropout_p=dropout_p,
        seed=0 if seed is None else int(seed.item()),
        TQ=q.shape[2],
        TK=k.shape[2],
        TQ_BUCKET=triton.next_power_of_2(q.shape[2]),
        TK_BUCKET=triton.next_power_of_2(k.shape[2]),
        HEAD_DIM=q.shape[3],
        FP32_OPERANDS=INTERPRET,
        PRECISION=dot_precision(q.dtype),
        DROPOUT=dropout_p > 0,
    )


@torch.library.custom_op("easytune_kernels::attention_fwd", mutates_args=())
def attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_lengths: torch.Tensor | None,
    kv_lengths: torch.Tensor | None,
    scale: float,
    dropout_p: float,
    seed: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launches the forward kernel; returns ``(out [B, H, Tq, D], lse fp32 [B, H, Tq])``.
    ``seed``: int64 [1] (any device) when ``dropout_p > 0``, else None."""
    B, H, TQ, D = q.shape
    out = torch.empty((B, H, TQ, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H, TQ), dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse.fill_(float("inf"))
    q, k, v = stride_one_last(q), stride_one_last(k), stride_one_last(v)
    ql, kl = _lengths(q_lengths, B, TQ, q.device), _lengths(kv_lengths, B, k.shape[2], q.device)
    _fwd_kernel[lambda meta: (triton.cdiv(TQ, meta["BLOCK_M"]), B * H)](
        q,
        k,
        v,
        out,
        lse,
        ql,
        kl,
        scale * LOG2E.value,
        **_strides("q", q),
        **_strides("k", k),
        **_strides("v", v),
        **_strides("o", out),
        H=H,
        **_common_kwargs(q, k, dropout_p, seed),
    )
    return out, lse


@attention_fwd.register_fake
def _(q, k, v, q_lengths, kv_lengths, scale, dropout_p, seed):
    B, H, TQ, D = q.shape
    return q.new_empty((B, H, TQ, D)), q.new_empty((B, H, TQ), dtype=torch.float32)


@torch.library.custom_op("easytune_kernels::attention_bwd", mutates_args=())
def attention_bwd(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    q_lengths: torch.Tensor | None,
    kv_lengths: torch.Tensor | None,
    scale: float,
    dropout_p: float,
    seed: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launches the backward kernels; returns ``(dq, dk, dv)`` shaped and typed like ``q, k, v``."""
    B, H, TQ, D = q.shape
    TK = k.shape[2]
    dq = torch.empty((B, H, TQ, D), dtype=q.dtype, device=q.device)
    dk = torch.empty((B, H, TK, D), dtype=k.dtype, device=q.device)
    dv = torch.empty((B, H, TK, D), dtype=v.dtype, device=q.device)
    if q.numel() == 0 or k.numel() == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    grad_out, q, k, v, out = (stride_one_last(t) for t in (grad_out, q, k, v, out))
    ql, kl = _lengths(q_lengths, B, TQ, q.device), _lengths(kv_lengths, B, TK, q.device)
    delta = torch.empty((B, H, TQ), dtype=torch.float32, device=q.device)
    _delta_kernel[(triton.cdiv(TQ, 64), B * H)](
        out,
        grad_out,
        delta,
        **_strides("o", out),
        **_strides("d", grad_out),
        H=H,
        TQ=TQ,
        HEAD_DIM=D,
        BLOCK_M=64,
    )
    common = dict(
        **_strides("q", q),
        **_strides("k", k),
        **_strides("v", v),
        **_strides("d", grad_out),
        H=H,
        **_common_kwargs(q, k, dropout_p, seed),
    )
    _dkdv_kernel[lambda meta: (triton.cdiv(TK, meta["BLOCK_N"]), B * H)](
        q,
        k,
        v,
        grad_out,
        lse,
        delta,
        dk,
        dv,
        ql,
        kl,
        scale * LOG2E.value,
        scale,
        **_strides("dk", dk),
        **_strides("dv", dv),
        **common,
    )
    _dq_kernel[lambda meta: (triton.cdiv(TQ, meta["BLOCK_M"]), B * H)](
        q,
        k,
        v,
        grad_out,
        lse,
        delta,
        dq,
        ql,
        kl,
        scale * LOG2E.value,
        scale,
        **_strides("dq", dq),
        **common,
    )
    return dq, dk, dv


@attention_bwd.register_fake
def _(grad_out, q, k, v, out, lse, q_lengths, kv_lengths, scale, dropout_p, seed):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


class AttentionFunction(torch.autograd.Function):
    """Autograd wrapper over the two library ops (saves q, k, v, out, lse and the dropout seed;
    recomputes P in the backward)."""

    @staticmethod
    def forward(ctx, q, k, v, q_lengths, kv_lengths, scale, dropout_p):
        seed = torch.randint(0, 2**62, (1,), dtype=torch.int64) if dropout_p > 0 else None
        out, lse = torch.ops.easytune_kernels.attention_fwd(
            q, k, v, q_lengths, kv_lengths, scale, dropout_p, seed
        )
        ctx.save_for_backward(q, k, v, out, lse, q_lengths, kv_lengths, seed)
        ctx.scale, ctx.dropout_p = scale, dropout_p
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse, q_lengths, kv_lengths, seed = ctx.saved_tensors
        dq, dk, dv = torch.ops.easytune_kernels.attention_bwd(
            grad_out, q, k, v, out, lse, q_lengths, kv_lengths, ctx.scale, ctx.dropout_p, seed
        )
        return dq, dk, dv, None, None, None, None


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_lengths: torch.Tensor | None = None,
    kv_lengths: torch.Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Masked attention with the Triton kernels; [B, H, Tq, D] (see the module docstring).

    ``dropout_p`` in [0, 1) (draws the seed from torch's default CPU generator). Inputs are assumed
    valid (``easytune.ops.attention`` checks them and picks this backend).
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return AttentionFunction.apply(*distinct(q, k, v, q_lengths, kv_lengths), scale, float(dropout_p))
