"""Recursive-dependence analysis of reward back-propagation through a DDIM chain
(the recursive gradient DRaFT-K and AlignProp back-propagate, which EasyTune avoids).

Along a sampled trajectory x_T -> ... -> x_0 (the trainer's sampler: CFG in one batch + ``ops.guided_step``,
eta = 0) this module measures, for each step i (index 0 = x_T, the noisiest; n-1 returns x_0):

- ``jacobian_norms``: the input-Jacobian norms of the one-step map ``x_t -> x_{t-1}`` and of the guided model
  output ``x_t -> u + w (c - u)`` (eps for epsilon prediction): the spectral norm by Lanczos iteration on
  J^T J (J v by double backward, J^T w by autograd), and the Frobenius norm by Hutchinson's estimator with
  Rademacher probes (``E |J^T z|^2 = |J|_F^2``). Norms are per sample: the map must treat samples
  independently (no batch statistics), so its Jacobian is block diagonal over the batch.
- ``gradient_contributions``: DRaFT-K's parameter gradient of the mean final reward (last K steps keep the
  graph, their input NOT detached) split into per-step parts g_i, the gradient w.r.t. the parameters *as
  used at step i* with the step's input held fixed. Computed by reverse accumulation one step at a time
  (u = dR/d(output of step i); g_i = (d out_i / d theta)^T u; then u <- J_i^T u); sum_i g_i is the total
  gradient exactly (checked against plain autograd through the undetached chain: ``residual``).
- the Corollary-1 bound: ``prod_{j >= i} |J_j|_2``, an upper bound on the gain ``|dR/dx_i| / |dR/dx_0|``,
  which is measured too (``signal``).

Everything sees callables (``denoise_fn``, a reward of x_0), so it works for any model. The double-backward
Jacobian-vector product needs every op to be twice differentiable: fused attention / guided-step kernels
are not, so run easytune models with ``EASYTUNE_BACKEND=math`` (``easytune analyze`` does).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from easytune.diffusion import GuidedStep
from easytune.diffusion.guidance import DenoiseFn
from easytune.errors import ConfigError

RewardOfSample = Callable[[torch.Tensor], torch.Tensor]


class GuidedDDIMStep(GuidedStep):
    """The trainer's deterministic sampling step (``easytune.diffusion.GuidedStep``) with its condition
    bound: ``step(x_t, i) -> (guided, x0_hat, x_prev)``, all shaped like ``x`` [B, ...]. ``scheduler``: an
    easytune ``DDIMScheduler`` with ``set_timesteps`` done; ``uncond=None``: no guidance.
    """

    def __init__(
        self,
        denoise_fn: DenoiseFn,
        scheduler: Any,
        cond: Any,
        uncond: Any = None,
        *,
        guidance_scale: float = 1.0,
        backend: str | None = None,
    ) -> None:
        super().__init__(denoise_fn, scheduler, guidance_scale=guidance_scale, backend=backend)
        self.cond_in = self.conditions(cond, uncond)

    def __call__(  # type: ignore[override]
        self, x: torch.Tensor, i: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return super().__call__(x, i, self.cond_in)

    @torch.no_grad()
    def trajectory(self, x_T: torch.Tensor) -> list[torch.Tensor]:
        """``[x_T, ..., x_0]`` (n + 1 tensors, no graph): entry i is the input of step i."""
        xs = [x_T]
        for i in range(len(self)):
            xs.append(self(xs[-1], i)[2])
        return xs


def _per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1)


def _per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B] -> [B, 1, ..., 1] broadcastable against ``like``."""
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def _twice_differentiable_error(err: RuntimeError) -> ConfigError:
    return ConfigError(
        f"jacobian_norms: the Jacobian-vector product (double backward) failed: {err}. Fused kernels are "
        "not twice differentiable: run easytune models with EASYTUNE_BACKEND=math"
    )


def lanczos_top_eigenvalue(
    matvec: Callable[[torch.Tensor], torch.Tensor], v0: torch.Tensor, iters: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Largest eigenvalue of a symmetric PSD operator, per sample: ``iters`` Lanczos steps from ``v0``
    [B, ...] with full re-orthogonalisation (``matvec`` maps [B, ...] -> [B, ...] sample by sample).

    Returns ``(theta [B], bound [B])`` in float64: the top Ritz value (a lower bound that rises with
    ``iters``) and the residual bound ``beta_m |s_m|`` (some eigenvalue lies within it of ``theta``). A
    sample whose Krylov space is exhausted (dimension < iters, or an invariant subspace) stops early.
    """
    batch = v0.shape[0]
    q = v0 / _per_sample(_per_sample_norm(v0).clamp_min(torch.finfo(v0.dtype).tiny), v0)
    basis: list[torch.Tensor] = []
    alphas, betas = [], []
    beta = torch.zeros(batch, dtype=v0.dtype, device=v0.device)
    q_prev = torch.zeros_like(q)
    scale = torch.zeros_like(beta)
    for _ in range(iters):
        basis.append(q)
        w = matvec(q)
        alpha = (q * w).flatten(1).sum(1)
        w = w - _per_sample(alpha, w) * q - _per_sample(beta, w) * q_prev
        flat = torch.stack(basis, 1).flatten(2)  # [B, j, D]
        for _ in range(2):  # full re-orthogonalisation, twice is enough
            w = w - (torch.einsum("bjd,bd->bj", flat, w.flatten(1))[..., None] * flat).sum(1).view_as(w)
        scale = torch.maximum(scale, alpha.abs())
        beta = _per_sample_norm(w)
        beta = torch.where(beta > 64 * torch.finfo(w.dtype).eps * scale, beta, torch.zeros_like(beta))
        alphas.append(alpha)
        betas.append(beta)
        live = _per_sample((beta > 0).to(w.dtype), w)  # 0: this sample's Krylov space is exhausted
        q_prev, q = q, live * w / _per_sample(beta.clamp_min(torch.finfo(w.dtype).tiny), w)
    a = torch.stack(alphas, 1).double()
    b = torch.stack(betas, 1).double()
    tri = torch.diag_embed(a) + torch.diag_embed(b[:, :-1], 1) + torch.diag_embed(b[:, :-1], -1)
    evals, evecs = torch.linalg.eigh(tri)
    return evals[:, -1], b[:, -1] * evecs[:, -1, -1].abs()


@dataclass
class JacobianNorms:
    """Per-sample norms of the input Jacobian J (shape [D_out, D_in] per sample) of a batched map, float64.

    ``spectral`` [B]: Lanczos estimate of the largest singular value (a lower bound that rises with the
    iterations); ``spectral_residual`` [B]: its relative error bound from the Lanczos residual. ``frobenius``
    [B]: Hutchinson estimate of |J|_F, ``frobenius_se`` [B] its standard error (None without probes).
    ``dim``: D_in; ``frobenius / sqrt(dim)`` is the RMS singular value for square J.
    """

    spectral: torch.Tensor
    spectral_residual: torch.Tensor
    frobenius: torch.Tensor | None
    frobenius_se: torch.Tensor | None
    dim: int


def jacobian_norms(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    iters: int = 20,
    probes: int = 8,
    generator: torch.Generator | None = None,
) -> JacobianNorms:
    """Norms of d fn(x)_b / d x_b for every sample b of ``x`` [B, ...] (``fn`` maps samples independently).

    Spectral: ``iters`` >= 1 Lanczos steps on J^T J (each one J v and one J^T w) from a Gaussian start; a
    Krylov refinement of power iteration, which stalls here: the singular values of a DDIM step cluster
    around sqrt(alpha_prev / alpha_t). Frobenius: ``probes`` >= 0 Rademacher vectors z, |J|_F^2 = E |J^T z|^2.
    Random draws come from ``generator`` (CPU). One forward graph serves every product: J^T w by backward,
    J v by differentiating J^T u (linear in u) once more.
    """
    if iters < 1 or probes < 0:
        raise ConfigError(f"jacobian_norms: need iters >= 1 and probes >= 0, got {iters}, {probes}")
    x = x.detach()
    with torch.enable_grad():
        xg = x.clone().requires_grad_(True)
        y = fn(xg)
        if not isinstance(y, torch.Tensor) or y.shape[0] != x.shape[0]:
            raise ConfigError(
                f"jacobian_norms: fn must return a tensor [B={x.shape[0]}, ...] for x {tuple(x.shape)}"
            )
        if not y.requires_grad:
            raise ConfigError("jacobian_norms: fn(x) does not depend on x differentiably")
        u = torch.zeros_like(y, requires_grad=True)
        (vjp_u,) = torch.autograd.grad(y, xg, u, create_graph=True)
        if not vjp_u.requires_grad:
            raise _twice_differentiable_error(RuntimeError("J^T u has no graph back to u"))

        def jvp(v: torch.Tensor) -> torch.Tensor:
            try:
                (out,) = torch.autograd.grad(vjp_u, u, v, retain_graph=True, allow_unused=True)
            except RuntimeError as err:
                raise _twice_differentiable_error(err) from err
            if out is None:
                raise _twice_differentiable_error(RuntimeError("J^T u has no graph back to u"))
            return out

        def vjp(w: torch.Tensor) -> torch.Tensor:
            return torch.autograd.grad(y, xg, w, retain_graph=True)[0]

        v0 = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        theta, bound = lanczos_top_eigenvalue(lambda v: vjp(jvp(v)).detach(), v0, iters)
        sigma = theta.clamp_min(0).sqrt()
        residual = bound / (2 * theta).clamp_min(torch.finfo(torch.float64).tiny)  # d sigma / sigma
        fro = fro_se = None
        if probes:

            def probe() -> torch.Tensor:
                z = torch.randint(0, 2, y.shape, generator=generator).to(device=x.device, dtype=y.dtype)
                return _per_sample_norm(vjp(2 * z - 1)).double() ** 2

            sq = torch.stack([probe() for _ in range(probes)])
            fro = sq.mean(0).sqrt()
            se_sq = sq.std(0) / math.sqrt(probes) if probes > 1 else torch.full_like(fro, float("nan"))
            fro_se = se_sq / (2 * fro.clamp_min(torch.finfo(torch.float64).tiny))  # delta method
    return JacobianNorms(
        sigma.detach(),
        residual.detach(),
        None if fro is None else fro.detach(),
        None if fro_se is None else fro_se.detach(),
        x[0].numel(),
    )


@dataclass
class GradientContributions:
    """DRaFT-K's gradient of the mean final reward split by step (the last ``k`` steps of an n-step chain).

    ``indices``: the k step indices (ascending). ``norms`` [k]: |g_i| over all parameters; ``cosines`` [k]:
    cos(g_i, g); ``projections`` [k]: <g_i, g> / |g|^2 (they sum to 1); ``signal`` [k, B]: |dR/dx_i| per
    sample at the input of step i; ``signal_final`` [B]: |dR/dx_0|; ``total_norm``: |g| (plain autograd
    through the undetached chain); ``residual``: |sum_i g_i - g| / |g|; ``reward`` [B]: R(x_0).
    """

    indices: list[int]
    norms: torch.Tensor
    cosines: torch.Tensor
    projections: torch.Tensor
    signal: torch.Tensor
    signal_final: torch.Tensor
    total_norm: float
    residual: float
    reward: torch.Tensor


def _grads(out: torch.Tensor, inputs: Sequence[torch.Tensor], grad_output: torch.Tensor | None = None):
    got = torch.autograd.grad(out, list(inputs), grad_output, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(got, inputs)]


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    return float(sum((x.double() * y.double()).sum() for x, y in zip(a, b)))


def gradient_contributions(
    step: Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    xs: Sequence[torch.Tensor],
    params: Sequence[torch.Tensor],
    reward_fn: RewardOfSample,
    k: int,
) -> GradientContributions:
    """Per-step parts of d mean(reward_fn(x_0)) / d params through the last ``k`` steps of ``xs``.

    ``step(x, i) -> (..., x_prev)`` (e.g. ``GuidedDDIMStep``); ``xs`` = ``[x_T, ..., x_0]`` from
    ``step.trajectory``; ``params``: the tensors the step's model uses (requires_grad); ``reward_fn(x_0)`` ->
    [B] (decode included). ``step`` must be deterministic (eval mode): every step is recomputed.
    """
    n = len(xs) - 1
    if not 1 <= k <= n:
        raise ConfigError(f"gradient_contributions: k must be in [1, {n}] (the number of steps), got {k}")
    params = list(params)
    if not params or not all(p.requires_grad for p in params):
        raise ConfigError("gradient_contributions: params must be a non-empty list of tensors requiring grad")
    first = n - k
    with torch.enable_grad():
        x = xs[first].detach()
        for i in range(first, n):  # the DRaFT-K chain: x_i NOT detached from step `first` on
            x = step(x, i)[2]
        total = _grads(reward_fn(x).mean(), params)
        total_sq = _dot(total, total)

        x0 = xs[n].detach().requires_grad_(True)
        reward = reward_fn(x0)
        (u,) = _grads(reward.mean(), [x0])
        signal_final = _per_sample_norm(u)
        summed = [torch.zeros_like(p) for p in params]
        norms, dots, signal = [], [], []
        for i in reversed(range(first, n)):
            xi = xs[i].detach().requires_grad_(True)
            u, *g = _grads(step(xi, i)[2], [xi, *params], u)
            norms.append(math.sqrt(_dot(g, g)))
            dots.append(_dot(g, total))
            signal.append(_per_sample_norm(u))
            for s, gi in zip(summed, g):
                s.add_(gi)
    diff = [s - t for s, t in zip(summed, total)]
    total_norm = math.sqrt(total_sq)
    scale = total_norm if total_norm > 0 else 1.0
    norms_t = torch.tensor(norms[::-1], dtype=torch.float64)
    dots_t = torch.tensor(dots[::-1], dtype=torch.float64)
    return GradientContributions(
        indices=list(range(first, n)),
        norms=norms_t,
        cosines=dots_t / (norms_t * total_norm).clamp_min(torch.finfo(torch.float64).tiny),
        projections=dots_t / max(total_sq, torch.finfo(torch.float64).tiny),
        signal=torch.stack(signal[::-1]).detach(),
        signal_final=signal_final.detach(),
        total_norm=total_norm,
        residual=math.sqrt(_dot(diff, diff)) / scale,
        reward=reward.detach(),
    )


@dataclass
class TrajectoryAnalysis:
    """One batch of trajectories. Per step i of n (rows) and sample b (columns): ``timesteps`` [n];
    ``step_norms`` / ``output_norms``: ``JacobianNorms`` of the step map x_t -> x_{t-1} and of x_t -> guided
    output, stacked (fields [n, B]); ``cumulative`` [n, B]: prod_{j >= i} of the step spectral norm;
    ``gradient``: the last-K split."""

    timesteps: list[int]
    step_norms: JacobianNorms
    output_norms: JacobianNorms
    cumulative: torch.Tensor
    gradient: GradientContributions


def _stack(norms: list[JacobianNorms]) -> JacobianNorms:
    def cat(name: str) -> torch.Tensor | None:
        vals = [getattr(n, name) for n in norms]
        return None if vals[0] is None else torch.stack(vals).cpu().double()

    return JacobianNorms(
        cat("spectral"), cat("spectral_residual"), cat("frobenius"), cat("frobenius_se"), norms[0].dim
    )


def analyze_trajectory(
    step: GuidedDDIMStep,
    x_T: torch.Tensor,
    params: Sequence[torch.Tensor],
    reward_fn: RewardOfSample,
    *,
    k: int,
    iters: int = 20,
    probes: int = 8,
    generator: torch.Generator | None = None,
) -> TrajectoryAnalysis:
    """Sample from ``x_T`` [B, ...], measure the Jacobian norms of every step and split DRaFT-K's gradient."""
    xs = step.trajectory(x_T)
    step_norms, output_norms = [], []
    for i in range(len(step)):
        kw = {"iters": iters, "probes": probes, "generator": generator}
        step_norms.append(jacobian_norms(lambda x, i=i: step(x, i)[2], xs[i], **kw))
        output_norms.append(jacobian_norms(lambda x, i=i: step(x, i)[0], xs[i], **kw))
    stacked = _stack(step_norms)
    cumulative = stacked.spectral.flip(0).cumprod(0).flip(0)
    gradient = gradient_contributions(step, xs, params, reward_fn, k)
    return TrajectoryAnalysis(step.timesteps, stacked, _stack(output_norms), cumulative, gradient)


def _stats(values: torch.Tensor) -> dict[str, float]:
    v = values.double().flatten()
    return {
        "mean": float(v.mean()),
        "std": float(v.std()) if v.numel() > 1 else 0.0,
        "min": float(v.min()),
        "max": float(v.max()),
    }


def summarize(analyses: Sequence[TrajectoryAnalysis], *, iters: int, probes: int) -> dict[str, Any]:
    """JSON-ready summary: ``rows`` (one per step: statistics over all samples of every trajectory for
    per-sample quantities, over trajectories for gradient quantities; gradient fields are None outside the
    last K), ``norms`` (how each norm was estimated), ``gradient`` (residual and total-norm statistics)."""
    if not analyses:
        raise ConfigError("summarize: no trajectory analysed")
    n = len(analyses[0].timesteps)

    def cat(get: Callable[[TrajectoryAnalysis], torch.Tensor]) -> torch.Tensor:  # [n, B * trajectories]
        return torch.cat([get(a) for a in analyses], dim=-1)

    spectral = cat(lambda a: a.step_norms.spectral)
    residual = cat(lambda a: a.step_norms.spectral_residual)
    out_spectral = cat(lambda a: a.output_norms.spectral)
    cumulative = cat(lambda a: a.cumulative)
    rms = math.sqrt(analyses[0].step_norms.dim)
    grads = [a.gradient for a in analyses]
    indices = grads[0].indices
    shares = torch.stack([g.norms / g.norms.sum().clamp_min(1e-300) for g in grads])  # [trajectories, k]
    gain = torch.cat([(g.signal / g.signal_final.clamp_min(1e-300)).cpu().double() for g in grads], dim=1)
    rows = []
    for i in range(n):
        row: dict[str, Any] = {
            "index": i,
            "timestep": analyses[0].timesteps[i],
            "jacobian_spectral": _stats(spectral[i]),
            "jacobian_spectral_residual_max": float(residual[i].max()),
            "output_spectral": _stats(out_spectral[i]),
            "cumulative_product": _stats(cumulative[i]),
        }
        if probes:
            row["jacobian_frobenius_rms"] = _stats(cat(lambda a, i=i: a.step_norms.frobenius[i]) / rms)
            row["output_frobenius_rms"] = _stats(cat(lambda a, i=i: a.output_norms.frobenius[i]) / rms)
        j = i - indices[0]
        in_k = j >= 0
        row["grad_norm"] = _stats(torch.stack([g.norms[j] for g in grads])) if in_k else None
        row["grad_share"] = _stats(shares[:, j]) if in_k else None
        row["grad_cosine"] = _stats(torch.stack([g.cosines[j] for g in grads])) if in_k else None
        row["grad_projection"] = _stats(torch.stack([g.projections[j] for g in grads])) if in_k else None
        row["signal_gain"] = _stats(gain[j]) if in_k else None
        rows.append(row)
    return {
        "norms": {
            "jacobian_spectral": "largest singular value of d x_(t-1) / d x_t, per sample: Lanczos on J^T J "
            f"({iters} iterations; J v by double backward, J^T w by autograd)",
            "output_spectral": "largest singular value of d (guided model output) / d x_t (eps for epsilon "
            "prediction), same estimator",
            "jacobian_frobenius_rms": f"Hutchinson estimate of |J|_F / sqrt(dim) ({probes} Rademacher probes)"
            if probes
            else None,
            "cumulative_product": "prod over steps j >= t of the spectral norm (Corollary-1 bound on "
            "|d x_0 / d x_t|)",
            "signal_gain": "measured |dR/dx_t| / |dR/dx_0| along the DRaFT-K backward pass (<= cumulative)",
            "grad_share": "|g_t| / sum_j |g_j|, g_t = gradient w.r.t. the parameters as used at step t",
            "grad_projection": "<g_t, g> / |g|^2 (sums to 1 over the K steps)",
        },
        "k": len(indices),
        "steps": n,
        "samples": int(spectral.shape[1]),
        "trajectories": len(analyses),
        "gradient": {
            "residual_max": max(g.residual for g in grads),
            "total_norm": _stats(torch.tensor([g.total_norm for g in grads])),
            "reward": _stats(torch.cat([g.reward.cpu() for g in grads])),
        },
        "rows": rows,
    }


def format_table(summary: dict[str, Any]) -> str:
    """A fixed-width table of ``summarize``'s rows (means over samples / trajectories)."""
    head = (
        f"{'step':>4} {'t':>5} {'|J|_2':>8} {'|J|_F/vd':>8} {'|deps|_2':>9} {'cum.prod':>10} "
        f"{'dR gain':>9} {'|g_t|':>10} {'share':>7} {'cos':>6}"
    )
    lines = [head, "-" * len(head)]

    def fmt(stats: dict[str, float] | None, spec: str) -> str:
        return "-" if stats is None else format(stats["mean"], spec)

    for r in summary["rows"]:
        lines.append(
            f"{r['index']:>4} {r['timestep']:>5} {fmt(r['jacobian_spectral'], '8.4f')} "
            f"{fmt(r.get('jacobian_frobenius_rms'), '8.4f'):>8} {fmt(r['output_spectral'], '9.3f')} "
            f"{fmt(r['cumulative_product'], '10.3e')} {fmt(r['signal_gain'], '9.3e'):>9} "
            f"{fmt(r['grad_norm'], '10.3e'):>10} {fmt(r['grad_share'], '7.4f'):>7} "
            f"{fmt(r['grad_cosine'], '6.3f'):>6}"
        )
    g = summary["gradient"]
    lines.append(
        f"K = {summary['k']}, {summary['trajectories']} trajectories, {summary['samples']} samples; "
        f"mean |g| = {g['total_norm']['mean']:.4e}; "
        f"max |sum_t g_t - g| / |g| = {g['residual_max']:.2e}"
    )
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: str | Path) -> Path:
    """Two panels: the step Jacobian's spectral norm (and its cumulative product) per step; the gradient
    share per step. Needs matplotlib (imported here, Agg backend)."""
    try:
        import matplotlib
    except ImportError as err:
        raise ConfigError(
            f"{path}: plotting needs matplotlib (pip install matplotlib); pass --no-plot to skip the figure"
        ) from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["rows"]
    idx = [r["index"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    mean = [r["jacobian_spectral"]["mean"] for r in rows]
    ax1.errorbar(
        idx,
        mean,
        yerr=[r["jacobian_spectral"]["std"] for r in rows],
        fmt="o-",
        ms=3,
        label="|d x_(t-1)/d x_t|_2",
    )
    ax1.plot(idx, [r["output_spectral"]["mean"] for r in rows], "s--", ms=3, label="|d out/d x_t|_2")
    ax1.plot(idx, [r["cumulative_product"]["mean"] for r in rows], "k:", label="cumulative product")
    ax1.set_yscale("log")
    ax1.set_xlabel("step index (0 = x_T)")
    ax1.set_title("input-Jacobian norm per step")
    ax1.legend(fontsize=8)
    tail = [r for r in rows if r["grad_share"] is not None]
    ax2.bar(
        [r["index"] for r in tail],
        [r["grad_share"]["mean"] for r in tail],
        yerr=[r["grad_share"]["std"] for r in tail],
    )
    ax2.set_xlabel("step index (0 = x_T)")
    ax2.set_title(f"share of the DRaFT-{summary['k']} gradient |g_t| / sum |g_j|")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
