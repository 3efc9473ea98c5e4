"""The pure-PyTorch references and the sdpa/math backends agree and handle padding."""

import pytest
import torch

from easytune import ops
from easytune.errors import BackendUnavailableError, ConfigError


def _inputs(B=3, H=2, Tq=7, Tk=9, D=16, dtype=torch.float64):
    q = torch.randn(B, H, Tq, D, dtype=dtype)
    k = torch.randn(B, H, Tk, D, dtype=dtype)
    v = torch.randn(B, H, Tk, D, dtype=dtype)
    return q, k, v


def test_attention_padding_invariance_and_zero_rows():
    q, k, v = _inputs()
    kv_len = torch.tensor([9, 4, 0])
    q_len = torch.tensor([7, 3, 5])
    out = ops.attention(q, k, v, q_lengths=q_len, kv_lengths=kv_len, backend="math")
    # sample 1 with its padding cut off gives the same valid rows
    short = ops.attention_ref(q[1:2, :, :3], k[1:2, :, :4], v[1:2, :, :4])
    torch.testing.assert_close(out[1:2, :, :3], short)
    assert torch.all(out[1, :, 3:] == 0)
    assert torch.all(out[2] == 0) and torch.isfinite(out).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sdpa_matches_math_with_padding(dtype):
    q, k, v = _inputs(dtype=dtype)
    for t in (q, k, v):
        t.requires_grad_(True)
    kv_len = torch.tensor([9, 1, 0])
    q_len = torch.tensor([2, 7, 7])
    a = ops.attention(q, k, v, q_lengths=q_len, kv_lengths=kv_len, backend="sdpa")
    b = ops.attention(q, k, v, q_lengths=q_len, kv_lengths=kv_len, backend="math")
    torch.testing.assert_close(a, b)
    ga = torch.autograd.grad(a.square().sum(), (q, k, v))
    gb = torch.autograd.grad(b.square().sum(), (q, k, v))
    for x, y in zip(ga, gb):
        assert torch.isfinite(x).all()
        torch.testing.assert_close(x, y)


def test_explicit_backend_raises_with_reason():
    q, k, v = _inputs()
    with pytest.raises(BackendUnavailableError, match="dropout"):
        ops.attention(q, k, v, dropout_p=0.1, backend="math")


def test_attention_rejects_bad_lengths():
    q, k, v = _inputs()
    with pytest.raises(ValueError, match="kv_lengths"):
        ops.attention(q, k, v, kv_lengths=torch.tensor([10, 1, 1]))


def test_reward_head_matches_cosine_similarity():
    m, t = torch.randn(5, 8, dtype=torch.float64), torch.randn(5, 8, dtype=torch.float64)
    torch.testing.assert_close(ops.reward_head(m, t), torch.nn.functional.cosine_similarity(m, t))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("prediction_type", ["flow_prediction", "flow_sample"])
def test_flow_step_is_the_euler_step_of_the_interpolation(dtype, prediction_type):
    """x0_hat and x_prev against the flow x_t = (1 - s) x0 + s eps written out in float64: the velocity
    step is diffusers' ``x + (s_next - s) v`` bit for bit; x0-prediction lands on the same interpolation."""
    g = torch.Generator().manual_seed(3)
    x, c, u = (torch.randn(3, 5, 4, generator=g, dtype=torch.float64) for _ in range(3))
    sigma = torch.tensor([1.0, 0.6, 0.02], dtype=torch.float64)
    sigma_next = torch.tensor([0.97, 0.4, 0.0], dtype=torch.float64)
    guided = u + 4.0 * (c - u)
    s, s_next = sigma[:, None, None], sigma_next[:, None, None]
    if prediction_type == "flow_prediction":
        x0, eps = x - s * guided, x + (1 - s) * guided
    else:
        x0, eps = guided, (x - (1 - s) * guided) / s
    args = [t.to(dtype) for t in (c, u, x)]
    for backend in ("math", None):
        out = ops.guided_step(
            *args, sigma, sigma_next, guidance_scale=4.0, prediction_type=prediction_type, backend=backend
        )
        tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 0.1}[dtype]
        for name, got, want in zip(
            ("guided", "x0", "prev"), out, (guided, x0, (1 - s_next) * x0 + s_next * eps)
        ):
            torch.testing.assert_close(got.double(), want, atol=tol, rtol=tol, msg=name)
    if prediction_type == "flow_prediction" and dtype != torch.bfloat16:  # diffusers' arithmetic, same bits
        s32, s_next32 = sigma.float(), sigma_next.float()  # its float32 tables; the difference taken there
        xd, gd = args[2], args[1] + 4.0 * (args[0] - args[1])  # (diffusers upcasts bf16 to fp32)
        expected = xd + (s_next32 - s32).to(dtype)[:, None, None] * gd
        out = ops.guided_step(*args, s32, s_next32, guidance_scale=4.0, prediction_type=prediction_type)
        assert torch.equal(out[2], expected)
    with pytest.raises(ConfigError, match="deterministic; eta must be 0"):
        ops.guided_step(*args, sigma, sigma_next, prediction_type=prediction_type, eta=0.5, noise=args[2])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize(
    "prediction_type", ["epsilon", "sample", "v_prediction", "flow_prediction", "flow_sample"]
)
def test_guided_step_math_backend_is_the_reference_bit_for_bit_at_eta_0(dtype, prediction_type):
    """The math backend skips the variance term when eta == 0 (it is exactly zero there); same bits."""
    import sys

    step = sys.modules["easytune.ops.guided_step"]
    g = torch.Generator().manual_seed(1)
    x, c, u = (torch.randn(4, 6, 5, generator=g).to(dtype) for _ in range(3))
    a = torch.rand(4, generator=g) * 0.9 + 0.05
    a_prev = a + (1 - a) * torch.rand(4, generator=g)
    a_prev[0] = 1.0  # the last step of set_alpha_to_one schedules
    for uncond in (u, None):
        ref = step.guided_step_ref(c, uncond, x, a, a_prev, 7.5, prediction_type)
        out = ops.guided_step(
            c, uncond, x, a, a_prev, guidance_scale=7.5, prediction_type=prediction_type, backend="math"
        )
        assert all(torch.equal(r, o) for r, o in zip(ref, out))
    if prediction_type.startswith("flow"):  # deterministic: no eta > 0 path
        return
    noise = torch.randn(4, 6, 5, generator=g).to(dtype)  # eta > 0 takes the reference path itself
    ref = step.guided_step_ref(c, u, x, a, a_prev, 7.5, prediction_type, 0.5, noise)
    out = ops.guided_step(
        c,
        u,
        x,
        a,
        a_prev,
        guidance_scale=7.5,
        prediction_type=prediction_type,
        eta=0.5,
        noise=noise,
        backend="math",
    )
    assert all(torch.equal(r, o) for r, o in zip(ref, out))
