"""Triton guided step (``backend="triton"``) against the float64 reference for every prediction type,
eta = 0 and eta > 0, every dtype, with and without the unconditional branch; gradients through each
output path (guided, x0_hat, x_{t-1}) separately and together. Same rule as the attention kernels:
error vs fp64 at most 2x (forward) / 3x (backward) PyTorch's error in the same dtype + one epsilon."""

from __future__ import annotations

import pytest
import torch

from easytune import ops
from easytune.ops._triton import interpreting
from easytune.ops.testing import assert_within_rule

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
PATHS = {"guided": (1, 0, 0), "x0_hat": (0, 1, 0), "prev": (0, 0, 1), "all": (1, 1, 1)}

# CPU tensors through the Triton interpreter (conftest sets TRITON_INTERPRET=1 unless told otherwise);
# the compiled kernels are tested on a GPU by test_kernels_gpu.py.
pytestmark = [
    pytest.mark.skipif(not interpreting(), reason="needs TRITON_INTERPRET=1 (CPU tensors)"),
    pytest.mark.triton,
]


def _inputs(dtype, shape=(3, 7, 33), uncond=True, device="cpu", flow=False):
    cond, un, sample, noise = (torch.randn(shape, device=device).to(dtype) for _ in range(4))
    if flow:  # sigma_t, sigma_next of a flow schedule: the first, a middle and the last (to 0) step
        a_t = torch.tensor([1.0, 0.5, 0.05], dtype=torch.float64, device=device)[: shape[0]]
        a_prev = torch.tensor([0.96, 0.3, 0.0], dtype=torch.float64, device=device)[: shape[0]]
    else:  # per-sample alphas from a DDIM-like schedule, including a nearly clean and a very noisy step
        a_t = torch.tensor([0.95, 0.5, 0.01], dtype=torch.float64, device=device)[: shape[0]]
        a_prev = torch.tensor([0.99, 0.6, 0.05], dtype=torch.float64, device=device)[: shape[0]]
    return cond, un if uncond else None, sample, noise, a_t, a_prev


def _run(cond, uncond, sample, noise, a_t, a_prev, grads, backend, guidance_scale, prediction_type, eta):
    leaves = [
        t.detach().clone().requires_grad_(True) if t is not None else None
        for t in (cond, uncond, sample, noise)
    ]
    c, u, x, z = leaves
    if backend == "ref":
        outs = ops.guided_step_ref(c, u, x, a_t, a_prev, guidance_scale, prediction_type, eta, z)
    else:
        outs = ops.guided_step(
            c,
            u,
            x,
            a_t,
            a_prev,
            guidance_scale=guidance_scale,
            prediction_type=prediction_type,
            eta=eta,
            noise=z,
            backend=backend,
        )
    used = [(o, g.to(o.dtype)) for o, g in zip(outs, grads) if g is not None]
    wrt = [t for t in leaves if t is not None]
    d = torch.autograd.grad(
        [o for o, _ in used], wrt, [g for _, g in used], allow_unused=True, materialize_grads=True
    )
    return list(outs), list(d)


def _check(dtype, prediction_type, eta, uncond, path, device="cpu", shape=(3, 7, 33)):
    flow = prediction_type.startswith("flow")
    cond, un, sample, noise, a_t, a_prev = _inputs(dtype, shape, uncond, device, flow)
    grads = [torch.randn(shape, device=device) if on else None for on in PATHS[path]]
    kw = dict(guidance_scale=7.5, prediction_type=prediction_type, eta=eta)
    k_out, k_grad = _run(cond, un, sample, noise, a_t, a_prev, grads, "triton", **kw)
    s_out, s_grad = _run(cond, un, sample, noise, a_t, a_prev, grads, "ref", **kw)
    f_inputs = [t.double() if t is not None else None for t in (cond, un, sample, noise)]
    f_grads = [g.double() if g is not None else None for g in grads]
    f_out, f_grad = _run(*f_inputs, a_t, a_prev, f_grads, "ref", **kw)
    for name, a, b, c in zip(("guided", "x0_hat", "prev"), k_out, s_out, f_out):
        assert a.dtype == dtype
        assert_within_rule(name, a, b, c, 2)
    names = ["d_cond", "d_uncond", "d_sample", "d_noise"] if uncond else ["d_cond", "d_sample", "d_noise"]
    for name, a, b, c in zip(names, k_grad, s_grad, f_grad):
        assert_within_rule(name, a, b, c, 3)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("eta", [0.0, 0.7])
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_triton_guided_step_matches_fp64_reference(prediction_type, eta, dtype):
    _check(dtype, prediction_type, eta, uncond=True, path="all")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("prediction_type", ["flow_prediction", "flow_sample"])
def test_triton_flow_step_matches_fp64_reference(prediction_type, dtype):
    _check(dtype, prediction_type, 0.0, uncond=True, path="all")


@pytest.mark.parametrize("path", ["guided", "x0_hat", "prev"])
@pytest.mark.parametrize("prediction_type", ["flow_prediction", "flow_sample"])
def test_triton_flow_step_each_gradient_path(prediction_type, path):
    _check(torch.float32, prediction_type, 0.0, uncond=True, path=path)


@pytest.mark.parametrize("path", ["guided", "x0_hat", "prev"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_triton_guided_step_each_gradient_path(prediction_type, path):
    _check(torch.float32, prediction_type, 0.5, uncond=True, path=path)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
def test_triton_guided_step_without_uncond(prediction_type):
    _check(torch.float32, prediction_type, 0.0, uncond=False, path="all")


def test_triton_guided_step_scalar_alphas_and_eta_zero_ignores_noise():
    cond, un, sample, noise, *_ = _inputs(torch.float32)
    a_t, a_prev = torch.tensor(0.3), torch.tensor(0.4)
    kw = dict(guidance_scale=2.0, prediction_type="epsilon", eta=0.0)
    got = ops.guided_step(cond, un, sample, a_t, a_prev, noise=noise, backend="triton", **kw)
    want = ops.guided_step_ref(cond, un, sample, a_t, a_prev, 2.0, "epsilon", 0.0, None)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_triton_guided_step_large_sample_spans_several_blocks():
    """Per-sample blocks: each sample's alphas must be applied to all of its elements (N > BLOCK)."""
    _check(torch.float32, "epsilon", 0.3, uncond=True, path="all", shape=(2, 5000, 3))
