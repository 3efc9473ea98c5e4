"""Triton reward head (``backend="triton"``) against the float64 reference: every dtype, latent sizes
that need one or several column chunks, zero vectors (the eps clamp), forward and backward."""

from __future__ import annotations

import pytest
import torch

from easytune import ops
from easytune.ops._triton import interpreting
from easytune.ops.testing import assert_within_rule

DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# CPU tensors through the Triton interpreter (conftest sets TRITON_INTERPRET=1 unless told otherwise);
# the compiled kernels are tested on a GPU by test_kernels_gpu.py.
pytestmark = [
    pytest.mark.skipif(not interpreting(), reason="needs TRITON_INTERPRET=1 (CPU tensors)"),
    pytest.mark.triton,
]


def _run(fn, motion, text, grad):
    m, t = (x.detach().clone().requires_grad_(True) for x in (motion, text))
    cos = fn(m, t)
    return (cos, *torch.autograd.grad(cos, (m, t), grad.to(cos.dtype)))


def _check(B, D, dtype, zero_rows=(), tiny_rows=(), device="cpu"):
    motion, text = (torch.randn(B, D, device=device) for _ in range(2))
    text = text + 0.5 * motion  # correlated latents: cosines away from 0
    for r in zero_rows:
        motion[r] = 0
    for r in tiny_rows:  # 0 < |m| < eps: the norm is clamped, so it has no gradient
        motion[r] *= 1e-10
    grad = torch.randn(B, device=device)
    low = [x.to(dtype) for x in (motion, text)]
    kernel = _run(lambda m, t: ops.reward_head(m, t, backend="triton"), *low, grad)
    same = _run(ops.reward_head_ref, *low, grad)
    fp64 = _run(ops.reward_head_ref, *(x.double() for x in low), grad.double())
    for name, a, b, c, factor in zip(("cos", "d_motion", "d_text"), kernel, same, fp64, (2, 3, 3)):
        assert a.dtype == dtype
        assert_within_rule(name, a, b, c, factor)
    for r in zero_rows:
        assert kernel[0][r] == 0 and not kernel[1][r].isnan().any()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B,D", [(1, 1), (37, 256), (5, 1000), (3, 5000)])
def test_triton_reward_head_matches_fp64_reference(B, D, dtype):
    _check(B, D, dtype)


def test_triton_reward_head_zero_and_tiny_latents_use_the_eps_clamp():
    _check(4, 64, torch.float32, zero_rows=(1,), tiny_rows=(2,))


def test_triton_reward_head_strided_rows():
    base = torch.randn(6, 2, 48)
    motion, text = base[:, 0], base[:, 1]  # row stride 96, unit column stride
    torch.testing.assert_close(
        ops.reward_head(motion, text, backend="triton"),
        torch.nn.functional.cosine_similarity(motion, text, eps=1e-8),
    )
