"""Recursive-dependence analysis: Jacobian norms against exact Jacobians (analytic on a linear denoiser),
the per-step split of DRaFT-K's gradient against plain autograd and per-step parameter copies (float64), the
Corollary-1 bound, and ``easytune analyze`` end to end on tiny random checkpoints."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from easytune import analysis
from easytune.cli import main
from easytune.data.humanml import write_clip, write_mean_std, write_split
from easytune.diffusion import DDIMScheduler
from easytune.errors import ConfigError
from easytune.models import MLD, get_preset, model_config
from easytune.models.reward import build_reward_model
from easytune.text import build_text_encoder

D = 6
MLD_DDIM = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "set_alpha_to_one": False,
    "steps_offset": 1,
}


def scheduler(n):
    s = DDIMScheduler(**MLD_DDIM)
    s.set_timesteps(n)
    return s


class MLPDenoiser(nn.Module):
    """eps(x [B, 1, D], t [B], cond [B, 1, C]): a small tanh MLP with a time feature (samples independent)."""

    def __init__(self, cond_dim=3, hidden=16):
        super().__init__()
        self.inp = nn.Linear(D + cond_dim + 1, hidden)
        self.out = nn.Linear(hidden, D)

    def forward(self, x, t, cond):
        h = torch.cat([x, cond, (t.to(x.dtype) / 1000)[:, None, None]], dim=-1)
        return self.out(torch.tanh(self.inp(h)))


def reward_fn(x0):
    """A smooth per-sample reward of x0 [B, 1, D] -> [B]."""
    target = torch.linspace(-1, 1, D, dtype=x0.dtype)
    return torch.cos(x0[:, 0] - target).sum(-1) - 0.1 * (x0[:, 0] ** 2).sum(-1)


def mlp_setup(n_steps, batch=3, w=2.5, seed=0):
    torch.manual_seed(seed)
    model = MLPDenoiser().double()
    cond = torch.randn(batch, 1, 3, dtype=torch.float64)
    uncond = torch.zeros_like(cond)
    step = analysis.GuidedDDIMStep(model, scheduler(n_steps), cond, uncond, guidance_scale=w)
    x_T = torch.randn(batch, 1, D, dtype=torch.float64)
    return model, step, cond, uncond, x_T


def exact_jacobian(fn, x):
    """Per-sample exact Jacobians [B, D_out, D_in]: the diagonal blocks of the whole batch's Jacobian
    (whose off-diagonal blocks must be zero: samples are independent)."""
    b = x.shape[0]
    full = torch.autograd.functional.jacobian(fn, x).reshape(b, -1, b, x[0].numel())
    blocks = torch.stack([full[i, :, i] for i in range(b)])
    off_diagonal = full.clone()
    for i in range(b):
        off_diagonal[i, :, i] = 0
    assert not off_diagonal.any()
    return blocks


def test_jacobian_norms_match_the_analytic_norms_of_a_linear_denoiser():
    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
    lam = torch.tensor([3.0, -2.0, 1.5, 0.5, -0.25, 0.1], dtype=torch.float64)
    a = q @ torch.diag(lam) @ q.T  # symmetric, eigenvalues lam
    scale = torch.tensor([[1.0], [-0.5], [-0.7]], dtype=torch.float64)  # per-sample conditional gain
    null, w = 0.5, 3.0

    def denoise(x, t, cond):  # eps = cond * A x: the guided Jacobian is (null + w (s - null)) A
        return cond[:, :, None] * (x @ a.T)

    sched = scheduler(10)
    step = analysis.GuidedDDIMStep(denoise, sched, scale, torch.full_like(scale, null), guidance_scale=w)
    x = torch.randn(3, 1, D, generator=g, dtype=torch.float64)
    gain = null + w * (scale[:, 0] - null)  # [B]
    for i in (0, 5, 9):
        a_t, a_prev = (float(v[i]) for v in sched.alpha_pair(torch.tensor(step.timesteps)))
        c1 = math.sqrt(a_prev / a_t)
        c2 = math.sqrt(1 - a_prev) - math.sqrt(a_prev * (1 - a_t) / a_t)
        eig = c1 + c2 * gain[:, None] * lam[None]  # [B, D]: eigenvalues of the symmetric step Jacobian
        got = analysis.jacobian_norms(lambda z, i=i: step(z, i)[2], x, iters=60, probes=1500, generator=g)
        exact = exact_jacobian(lambda z, i=i: step(z, i)[2], x)
        torch.testing.assert_close(got.spectral, eig.abs().max(1).values, rtol=1e-7, atol=0)
        torch.testing.assert_close(got.spectral, torch.linalg.matrix_norm(exact, 2), rtol=1e-7, atol=0)
        fro = eig.pow(2).sum(1).sqrt()
        torch.testing.assert_close(torch.linalg.matrix_norm(exact, "fro"), fro)
        assert ((got.frobenius - fro).abs() <= 5 * got.frobenius_se + 1e-12).all(), (got.frobenius, fro)
        assert (got.frobenius_se / fro < 0.05).all() and got.dim == D
        out = analysis.jacobian_norms(lambda z, i=i: step(z, i)[0], x, iters=60, probes=0, generator=g)
        torch.testing.assert_close(out.spectral, gain.abs() * lam.abs().max(), rtol=1e-7, atol=0)
        assert out.frobenius is None and out.frobenius_se is None


def test_jacobian_norms_match_exact_jacobian_of_a_nonlinear_step():
    _, step, _, _, x_T = mlp_setup(8)
    g = torch.Generator().manual_seed(0)
    for i in (0, 4, 7):
        fn = lambda z, i=i: step(z, i)[2]  # noqa: E731
        got = analysis.jacobian_norms(fn, x_T, iters=60, probes=600, generator=g)
        exact = exact_jacobian(fn, x_T)
        torch.testing.assert_close(got.spectral, torch.linalg.matrix_norm(exact, 2), rtol=1e-6, atol=0)
        assert (got.spectral_residual < 1e-8).all()
        fro = torch.linalg.matrix_norm(exact, "fro")
        assert ((got.frobenius - fro).abs() <= 5 * got.frobenius_se + 1e-12).all()


def test_lanczos_converges_on_a_clustered_spectrum_where_power_iteration_stalls():
    g = torch.Generator().manual_seed(3)
    d = 120
    u, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    sv = torch.cat([torch.tensor([1.03]), torch.linspace(1.0, 1.02, d - 1)]).double()  # like a late DDIM step
    top = float(sv[0])
    j = u @ torch.diag(sv) @ v.T
    x = torch.randn(2, d, generator=g, dtype=torch.float64)
    got = analysis.jacobian_norms(lambda z: z @ j.T, x, iters=20, probes=0, generator=g)
    torch.testing.assert_close(got.spectral, torch.full((2,), top, dtype=torch.float64), rtol=1e-10, atol=0)
    assert (got.spectral_residual < 1e-9).all()
    power = torch.randn(d, generator=g, dtype=torch.float64)
    for _ in range(20):  # the same 20 products (J v, J^T w) spent on power iteration
        power = j.T @ (j @ power)
        power = power / power.norm()
    assert top - float((j @ power).norm()) > 1e-4


def reference_chain_gradient(model, sched, cond, uncond, w, x_T, k):
    """Plain autograd through the undetached last-k chain, with the scheduler's own step (not the
    analysis code): d mean R(x_0) / d theta."""
    params = list(model.parameters())
    x = x_T
    n = len(sched.timesteps)
    for i, t in enumerate(sched.timesteps):
        with torch.set_grad_enabled(i >= n - k):
            tt = torch.full((2 * x.shape[0],), int(t))
            out = model(torch.cat([x, x]), tt, torch.cat([cond, uncond]))
            c, u = out.chunk(2)
            x = sched.step(u + w * (c - u), int(t), x).prev_sample
    return torch.autograd.grad(reward_fn(x).mean(), params)


def per_step_reference(model, sched, cond, uncond, w, x_T, k):
    """The gradient w.r.t. a separate copy of the parameters for each of the last k steps."""
    n = len(sched.timesteps)
    base = {name: p.detach() for name, p in model.named_parameters()}
    copies = [{name: p.clone().requires_grad_(True) for name, p in base.items()} for _ in range(k)]
    x = x_T
    for i, t in enumerate(sched.timesteps):
        params = copies[i - (n - k)] if i >= n - k else base
        tt = torch.full((2 * x.shape[0],), int(t))
        with torch.set_grad_enabled(i >= n - k):
            args = (torch.cat([x, x]), tt, torch.cat([cond, uncond]))
            out = torch.func.functional_call(model, params, args)
            c, u = out.chunk(2)
            x = sched.step(u + w * (c - u), int(t), x).prev_sample
    flat = [p for c in copies for p in c.values()]
    grads = torch.autograd.grad(reward_fn(x).mean(), flat)
    per = len(base)
    return [grads[j * per : (j + 1) * per] for j in range(k)]


def flat(grads):
    return torch.cat([g.flatten() for g in grads])


@pytest.mark.parametrize("k", [1, 4, 6])
def test_gradient_contributions_sum_to_the_undetached_chain_gradient(k):
    n, w = 6, 2.5
    model, step, cond, uncond, x_T = mlp_setup(n, w=w)
    xs = step.trajectory(x_T)
    res = analysis.gradient_contributions(step, xs, list(model.parameters()), reward_fn, k)
    sched = scheduler(n)
    total = flat(reference_chain_gradient(model, sched, cond, uncond, w, x_T, k))
    parts = [flat(g) for g in per_step_reference(model, sched, cond, uncond, w, x_T, k)]
    torch.testing.assert_close(sum(parts), total, rtol=1e-10, atol=1e-13)  # the references agree
    assert res.indices == list(range(n - k, n))
    assert res.residual < 1e-12
    assert res.total_norm == pytest.approx(float(total.norm()), rel=1e-12)
    torch.testing.assert_close(res.norms, torch.stack([p.norm() for p in parts]), rtol=1e-10, atol=0)
    cos = torch.stack([p @ total / (p.norm() * total.norm()) for p in parts])
    torch.testing.assert_close(res.cosines, cos, rtol=1e-10, atol=1e-12)
    assert float(res.projections.sum()) == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(res.reward, reward_fn(xs[-1]))
    assert res.signal.shape == (k, x_T.shape[0]) and res.signal_final.shape == (x_T.shape[0],)


def test_analyze_trajectory_cumulative_bound_and_summary():
    n, k = 6, 4
    model, step, _, _, x_T = mlp_setup(n)
    params = list(model.parameters())
    g = torch.Generator().manual_seed(0)
    runs = [
        analysis.analyze_trajectory(
            step, x_T + 0.1 * j, params, reward_fn, k=k, iters=30, probes=3, generator=g
        )
        for j in range(2)
    ]
    a = runs[0]
    assert a.step_norms.spectral.shape == (n, 3) and a.output_norms.spectral.shape == (n, 3)
    torch.testing.assert_close(a.cumulative[-1], a.step_norms.spectral[-1])
    torch.testing.assert_close(a.cumulative[0], a.step_norms.spectral.prod(0))
    # Corollary 1: |dR/dx_t| / |dR/dx_0| <= prod_{j >= t} |J_j|_2, sample by sample
    gain = a.gradient.signal / a.gradient.signal_final
    assert (gain <= a.cumulative[n - k :] * (1 + 1e-9)).all()
    summary = analysis.summarize(runs, iters=30, probes=3)
    rows = summary["rows"]
    assert len(rows) == n and summary["k"] == k and summary["samples"] == 6 and summary["trajectories"] == 2
    assert all(r["grad_share"] is None for r in rows[: n - k])
    assert sum(r["grad_share"]["mean"] for r in rows[n - k :]) == pytest.approx(1.0)
    assert sum(r["grad_projection"]["mean"] for r in rows[n - k :]) == pytest.approx(1.0)
    mean0 = float(torch.cat([r.step_norms.spectral[0] for r in runs]).mean())
    assert rows[0]["jacobian_spectral"]["mean"] == pytest.approx(mean0)
    assert summary["gradient"]["residual_max"] < 1e-12
    json.dumps(summary)
    table = analysis.format_table(summary)
    assert len(table.splitlines()) == n + 3 and "cum.prod" in table


def test_bad_arguments_raise_config_errors():
    model, step, _, _, x_T = mlp_setup(3)
    xs = step.trajectory(x_T)
    with pytest.raises(ConfigError, match="k must be in"):
        analysis.gradient_contributions(step, xs, list(model.parameters()), reward_fn, 4)
    with pytest.raises(ConfigError, match="iters"):
        analysis.jacobian_norms(lambda z: step(z, 0)[2], x_T, iters=0)
    with pytest.raises(ConfigError, match="does not depend"):
        analysis.jacobian_norms(lambda z: torch.zeros_like(z), x_T)

    class OnceDifferentiableSquare(torch.autograd.Function):  # like a fused kernel's backward
        @staticmethod
        def forward(ctx, z):
            ctx.save_for_backward(z)
            return z * z

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx, grad):
            (z,) = ctx.saved_tensors
            return 2 * z * grad

    with pytest.raises(ConfigError, match="EASYTUNE_BACKEND=math"):
        analysis.jacobian_norms(OnceDifferentiableSquare.apply, x_T)


# ------------------------------------------------------------------------------------------------ CLI
ACTIONS = ["walks", "jumps", "waves"]
TEXT = "builtin:token_dim=16,sentence_dim=16"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("analyze")
    data = root / "data"
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("test", 4)):
        ids = []
        for i in range(n):
            clip = f"{split}{i}"
            write_clip(
                data, clip, rng.normal(size=(int(rng.integers(40, 48)), 263)), [f"a person {ACTIONS[i % 3]}"]
            )
            ids.append(clip)
        write_split(data, split, ids)
    write_mean_std(data, np.zeros(263), np.ones(263))
    preset = get_preset("tiny")
    preset["text_encoder"] = TEXT
    preset["vae"].update(latent_dim=16, ff_size=32, num_layers=1)
    preset["denoiser"].update(latent_dim=16, hidden_dim=None, time_dim=16, ff_size=32, num_layers=1)
    config = model_config(preset, text_dim=16)
    torch.manual_seed(0)
    torch.save(
        {"state_dict": MLD.from_config(config).state_dict(), "config": config, "meta": {}}, root / "mld.pt"
    )
    build_reward_model(
        "tiny",
        text_encoder=build_text_encoder(TEXT),
        latent_dim=16,
        ff_size=32,
        num_layers=1,
        time_channels=16,
    ).save(root / "reward.pt")
    return root


def test_cli_analyze_end_to_end(checkpoints, tmp_path, capsys):
    plot = importlib.util.find_spec("matplotlib") is not None
    out = tmp_path / "out"
    args = [
        "analyze",
        "--base",
        str(checkpoints / "mld.pt"),
        "--reward",
        str(checkpoints / "reward.pt"),
        "--data",
        str(checkpoints / "data"),
        "--k",
        "3",
        "--steps",
        "4",
        "--trajectories",
        "2",
        "--batch",
        "2",
        "--iters",
        "8",
        "--probes",
        "2",
        "--out",
        str(out),
    ]
    assert main(args + ([] if plot else ["--no-plot"])) == 0
    printed = capsys.readouterr().out
    assert "cum.prod" in printed and "analysis.json" in printed
    summary = json.loads((out / "analysis.json").read_text())
    rows = summary["rows"]
    assert [r["index"] for r in rows] == [0, 1, 2, 3] and summary["k"] == 3 and summary["samples"] == 4
    assert [r["timestep"] for r in rows] == [751, 501, 251, 1]
    assert rows[0]["grad_share"] is None and all(r["grad_share"] is not None for r in rows[1:])
    assert summary["gradient"]["residual_max"] < 1e-4  # float32
    for r in rows:
        assert r["jacobian_spectral"]["mean"] > 0 and math.isfinite(r["cumulative_product"]["mean"])
    assert summary["config"]["guidance_scale"] == 7.5 and summary["config"]["kind"] == "mld"
    assert (out / "analysis.png").is_file() == plot
    assert main(args[:-1] + [str(tmp_path / "bad"), "--k", "5"]) == 2  # k > steps
    assert "--k (5) must not exceed --steps (4)" in capsys.readouterr().err
