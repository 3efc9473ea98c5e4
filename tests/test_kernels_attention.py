"""Triton attention (``backend="triton"``) against the float64 reference, under TRITON_INTERPRET=1 on
CPU (conftest sets it) and compiled on a GPU (``gpu`` tests). Rule: kernel error vs fp64 at most 2x
(forward) / 3x (backward) PyTorch's error in the same dtype, plus one machine epsilon."""

from __future__ import annotations

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from easytune import ops
from easytune.ops._triton import interpreting
from easytune.ops.testing import assert_within_rule

BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32

# (B, H, Tq, Tk, D, dtype, q_lengths, kv_lengths): odd lengths, padded rows, samples with no valid
# key or no valid query, cross-attention, every head dim and dtype.
CASES = [
    (3, 2, 1, 1, 32, FP32, [1, 0, 1], [1, 1, 0]),
    (3, 2, 7, 7, 64, BF16, [7, 3, 0], [7, 5, 0]),
    (2, 2, 49, 49, 32, FP16, [49, 20], [49, 33]),
    (2, 1, 97, 131, 64, FP32, [97, 50], [131, 7]),
    (2, 1, 131, 97, 128, BF16, [131, 1], [97, 96]),
    (2, 2, 200, 200, 64, BF16, [200, 143], [200, 143]),
    (2, 1, 200, 40, 16, FP16, [117, 200], [40, 1]),
    (2, 2, 49, 49, 64, FP32, None, None),
]

# CPU tensors through the Triton interpreter (conftest sets TRITON_INTERPRET=1 unless told otherwise);
# the compiled kernels are tested on a GPU by test_kernels_gpu.py.
pytestmark = [
    pytest.mark.skipif(not interpreting(), reason="needs TRITON_INTERPRET=1 (CPU tensors)"),
    pytest.mark.triton,
]


def _ids(case):
    B, H, Tq, Tk, D, dtype, *_ = case
    return f"B{B}H{H}-{Tq}x{Tk}-D{D}-{str(dtype).removeprefix('torch.')}"


def _cancelled(q, k, v, grad_out, dropout_p=0.0):
    """Size of the fp32 cancellation dS = P * (dP - rowsum(dO * O)) as it reaches dQ and dK:
    |dP| = |dO v^T| / (1 - dropout_p), times |k| or |q| and the softmax scale 1/sqrt(D)."""
    if k.numel() == 0:
        return 0.0
    d_p = (grad_out.double() @ v.double().transpose(-1, -2)).abs().max().item() / (1 - dropout_p)
    return d_p * max(q.abs().max().item(), k.abs().max().item()) / q.shape[-1] ** 0.5


def _run(fn, q, k, v, q_len, kv_len, grad_out):
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    out = fn(q, k, v, q_len, kv_len)
    return (out, *torch.autograd.grad(out, (q, k, v), grad_out.to(out.dtype)))


def _check_case(B, H, Tq, Tk, D, dtype, q_lengths, kv_lengths, device="cpu"):
    q = torch.randn(B, H, Tq, D, device=device)
    k = torch.randn(B, H, Tk, D, device=device)
    v = torch.randn(B, H, Tk, D, device=device)
    grad_out = torch.randn(B, H, Tq, D, device=device)
    q_len = None if q_lengths is None else torch.tensor(q_lengths, device=device)
    kv_len = None if kv_lengths is None else torch.tensor(kv_lengths, device=device)
    low = [t.to(dtype) for t in (q, k, v)]

    def triton(*a):
        return ops.attention(*a[:3], q_lengths=a[3], kv_lengths=a[4], backend="triton")

    kernel = _run(triton, *low, q_len, kv_len, grad_out)
    same = _run(ops.attention_ref, *low, q_len, kv_len, grad_out)
    fp64 = _run(ops.attention_ref, *(t.double() for t in low), q_len, kv_len, grad_out.double())
    cancelled = _cancelled(*low, grad_out)
    for name, a, b, c, factor in zip(("out", "dq", "dk", "dv"), kernel, same, fp64, (2, 3, 3, 3)):
        assert a.dtype == dtype
        assert_within_rule(name, a, b, c, factor, cancelled if name in ("dq", "dk") else 0.0)
    out, dq, dk, dv = kernel
    if q_len is not None:  # padded query rows: exactly zero output and zero dq
        q_pad = torch.arange(Tq, device=device)[None, :] >= q_len[:, None]
        assert not out.transpose(1, 2)[q_pad].any() and not dq.transpose(1, 2)[q_pad].any()
    if kv_len is not None:  # padded keys: exactly zero dk and dv; samples without keys: zero output
        kv_pad = torch.arange(Tk, device=device)[None, :] >= kv_len[:, None]
        assert not dk.transpose(1, 2)[kv_pad].any() and not dv.transpose(1, 2)[kv_pad].any()
        assert not out[kv_len == 0].any()


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_triton_attention_matches_fp64_reference(case):
    _check_case(*case)


def test_triton_attention_strided_inputs_and_expanded_grad():
    """q, k, v as head-split views of [B, T, H*D] projections; ``out.sum()`` gives a stride-0 grad."""
    B, T, H, D = 2, 33, 2, 32
    x = torch.randn(B, T, 3 * H * D, dtype=torch.float64).float().requires_grad_(True)
    lengths = torch.tensor([33, 18])

    def run(backend):
        q, k, v = (t.reshape(B, T, H, D).transpose(1, 2) for t in x.chunk(3, dim=-1))
        out = ops.attention(q, k, v, q_lengths=lengths, kv_lengths=lengths, backend=backend)
        (grad,) = torch.autograd.grad(out.sum(), x)
        return out, grad

    out, grad = run("triton")
    out_ref, grad_ref = run("math")
    torch.testing.assert_close(out, out_ref, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(grad, grad_ref, atol=2e-6, rtol=1e-5)


def test_triton_attention_default_and_custom_scale():
    q, k, v = (torch.randn(1, 1, 16, 32) for _ in range(3))
    for scale in (None, 0.05):
        torch.testing.assert_close(
            ops.attention(q, k, v, scale=scale, backend="triton"),
            ops.attention_ref(q, k, v, scale=scale),
            atol=2e-6,
            rtol=1e-5,
        )


def _dropout_ref(q, k, v, lengths, kept, p):
    """Attention whose probabilities are multiplied by ``kept / (1 - p)`` (P read through v = I)."""
    eye = torch.eye(k.shape[2], q.shape[3], dtype=q.dtype, device=q.device).expand(*k.shape)
    probs = ops.attention_ref(q, k, eye, lengths, lengths)[..., : k.shape[2]]
    return (probs * kept / (1 - p)).to(q.dtype) @ v


def _check_dropout(dtype, device="cpu"):
    """Dropout: the kernel's mask is read back through v = I (D >= T), then forward and backward are
    compared with the reference that applies that mask; the keep rate and the seed's effect are checked."""
    B, H, T, D, p = 2, 2, 24, 32, 0.3
    lengths = torch.tensor([24, 17], device=device)
    q, k, v = (torch.randn(B, H, T, D, device=device).to(dtype) for _ in range(3))
    eye = torch.eye(T, D, dtype=dtype, device=device).expand(B, H, T, D)
    torch.manual_seed(7)  # the kernel draws its seed from torch's generator: same seed, same mask
    kept = ops.attention(q, k, eye, q_lengths=lengths, kv_lengths=lengths, dropout_p=p, backend="triton")
    kept = kept[..., :T] != 0
    frame_ok = torch.arange(T, device=device)[None, :] < lengths[:, None]
    valid = (frame_ok[:, :, None] & frame_ok[:, None, :])[:, None].expand_as(kept)
    rate = kept[valid].float().mean().item()
    assert abs(rate - (1 - p)) < 0.05, rate
    grad_out = torch.randn(B, H, T, D, device=device)

    def triton(q, k, v, q_len, kv_len):
        torch.manual_seed(7)
        return ops.attention(q, k, v, q_lengths=q_len, kv_lengths=kv_len, dropout_p=p, backend="triton")

    def reference(q, k, v, *_):
        return _dropout_ref(q, k, v, lengths, kept, p)

    kernel = _run(triton, q, k, v, lengths, lengths, grad_out)
    same = _run(reference, q, k, v, None, None, grad_out)
    fp64 = _run(reference, *(t.double() for t in (q, k, v)), None, None, grad_out.double())
    cancelled = _cancelled(q, k, v, grad_out, p)
    for name, a, b, c, factor in zip(("out", "dq", "dk", "dv"), kernel, same, fp64, (2, 3, 3, 3)):
        assert_within_rule(name, a, b, c, factor, cancelled if name in ("dq", "dk") else 0.0)
    torch.manual_seed(8)
    other = ops.attention(q, k, eye, q_lengths=lengths, kv_lengths=lengths, dropout_p=p, backend="triton")
    assert not torch.equal(other[..., :T] != 0, kept)


@pytest.mark.parametrize("dtype", [FP32, BF16], ids=str)
def test_triton_attention_dropout_matches_reference_with_the_kernels_mask(dtype):
    _check_dropout(dtype)


def test_triton_attention_dropout_under_activation_checkpointing():
    """Recomputation draws the same seed (checkpoint restores torch's RNG), so the gradients are equal."""
    q, k, v = (torch.randn(2, 2, 8, 16, requires_grad=True) for _ in range(3))
    lengths = torch.tensor([8, 3])

    def layer(q, k, v):
        out = ops.attention(q, k, v, q_lengths=lengths, kv_lengths=lengths, dropout_p=0.3, backend="triton")
        return out.sin().sum()

    torch.manual_seed(0)
    plain = torch.autograd.grad(layer(q, k, v), (q, k, v))
    torch.manual_seed(0)
    recomputed = torch.autograd.grad(checkpoint(layer, q, k, v, use_reentrant=False), (q, k, v))
    for a, b in zip(plain, recomputed):
        assert torch.equal(a, b)


def test_autotune_pruning_as_triton_calls_it():
    """GPU-only path: Triton passes positional arguments as ``named_args`` and keywords as ``kwargs``."""
    import triton

    from easytune_kernels.attention import _prune

    configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}) for m, n in ((32, 32), (64, 64), (128, 64))]
    q = torch.empty(1, 1, 40, 128)
    kept = _prune(configs, {"Q": q}, TQ_BUCKET=64, TK_BUCKET=32, HEAD_DIM=128)
    assert [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) for c in kept] == [(32, 32)]
    kept = _prune(configs, {"Q": q.half()}, TQ_BUCKET=256, TK_BUCKET=256, HEAD_DIM=128)
    assert len(kept) == 3
    assert len(_prune(configs, {"Q": q}, TQ_BUCKET=256, TK_BUCKET=256, HEAD_DIM=128)) == 2  # fp32, D=128
