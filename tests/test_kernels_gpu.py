"""The compiled Triton kernels on a CUDA GPU: the interpreter tests' checks at GPU sizes, and the
performance targets of docs/kernels.md. Run with
``TRITON_INTERPRET=0 pytest -m gpu -s tests/test_kernels_gpu.py`` (conftest turns the interpreter on
unless told otherwise; these tests then skip)."""

from __future__ import annotations

import pytest
import test_kernels_attention as attention_tests
import test_kernels_guided_step as guided_tests
import test_kernels_reward_head as reward_tests
import torch
import torch.nn.functional as F

from easytune import ops
from easytune.ops._triton import interpreting

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.triton,
    pytest.mark.skipif(interpreting(), reason="TRITON_INTERPRET=1: set it to 0 to test compiled kernels"),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("case", attention_tests.CASES, ids=attention_tests._ids)
def test_attention_cases(case):
    attention_tests._check_case(*case, device="cuda")


@pytest.mark.parametrize("T", [64, 196])
def test_attention_target_shapes(T):
    """B=128, H=4, D=64, bf16 with random padding, fully padded rows included."""
    lengths = torch.randint(1, T + 1, (128,)).tolist()
    lengths[:2] = [T, 0]
    attention_tests._check_case(128, 4, T, T, 64, torch.bfloat16, lengths, lengths, device="cuda")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_attention_dropout(dtype):
    attention_tests._check_dropout(dtype, device="cuda")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_guided_step(prediction_type, dtype):
    guided_tests._check(
        dtype, prediction_type, 0.7, uncond=True, path="all", device="cuda", shape=(3, 196, 263)
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_reward_head(dtype):
    reward_tests._check(512, 256, dtype, zero_rows=(3,), device="cuda")


def _ms(fn) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=200)


@pytest.mark.parametrize("T", [64, 196])
def test_attention_speed_target(T):
    """Target: Triton fwd+bwd >= 1.3x SDPA with the key-padding mask (bf16, B=128, H=4, D=64)."""
    B, H, D = 128, 4, 64
    q, k, v = (torch.randn(B, H, T, D, device="cuda").bfloat16().requires_grad_() for _ in range(3))
    lengths = torch.randint(T // 4, T + 1, (B,), device="cuda")
    mask = (torch.arange(T, device="cuda")[None, :] < lengths[:, None])[:, None, None, :]
    grad = torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16)

    def triton():
        ops.attention(q, k, v, q_lengths=lengths, kv_lengths=lengths, backend="triton").backward(grad)

    def sdpa():
        F.scaled_dot_product_attention(q, k, v, attn_mask=mask).backward(grad)

    speedup = _ms(sdpa) / _ms(triton)
    print(f"attention T={T}: triton fwd+bwd is {speedup:.2f}x SDPA with mask")
    assert speedup >= 1.3


def test_guided_step_bandwidth_target():
    """Target: the fused step moves its bytes at >= 80% of a device copy's bandwidth."""
    shape = (64, 196, 263)
    cond, uncond, x = (torch.randn(shape, device="cuda") for _ in range(3))
    a_t, a_prev = torch.rand(64, device="cuda"), torch.rand(64, device="cuda")
    src, dst = torch.randn(3 * cond.numel(), device="cuda"), torch.empty(3 * cond.numel(), device="cuda")
    step_ms = _ms(lambda: ops.guided_step(cond, uncond, x, a_t, a_prev, guidance_scale=7.5, backend="triton"))
    copy_ms = _ms(lambda: dst.copy_(src))
    ratio = copy_ms / step_ms  # both move 6 tensors' worth of bytes (3 read + 3 written)
    print(f"guided step: {ratio:.0%} of copy bandwidth")
    assert ratio >= 0.8
