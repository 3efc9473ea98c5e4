"""Overhead benchmarks: what the Python around the kernels costs.

``op_overhead``: each op through ``auto`` (``easytune.ops.attention`` / ``guided_step`` / ``reward_head``:
validation + dispatch + the backend) against the bare call of the backend ``auto`` picks (its function,
called directly), at the MLD shapes (CFG batch 2: attention [2, 4, 3, 64], guided step [2, 1, 256], reward
head [2, 256]). The two are timed interleaved, in blocks of ``calls`` calls; the fastest block of each gives
its per-call seconds (noise on a shared machine only adds time) and ``overhead_us`` is the median over the
blocks of the paired difference (block j of both ran back to back). ``dispatch_us`` times the same pair with
the backend's function stubbed out: the cost of the Python around the backend without the noise of its work.
The first is what a caller pays and is larger: on these CPUs Python code interleaved with the backend's
torch ops runs slower than alone, 1.1-5x depending on the host (caches and branch predictors shared with
the ops; docs/bench.md).

``loop_overhead``: a no-grad 50-step guided DDIM sampling pass of the tiny MLD at batch 1 (compute ~0:
this measures overhead) through ``easytune.diffusion.ddim_sample`` against a minimal hand-written loop over
the same denoiser with bare ``F.scaled_dot_product_attention`` in its layers and the DDIM update written
out with Python-float alphas, passes alternating. ``ratio`` = easytune / hand-written, the median over the
pairs of passes (goal: at most 1.1 eager); the seconds are the fastest pass of each. ``bare_attention_ratio``:
the easytune pass with bare SDPA in the layers over the hand-written loop (what is left without the
attention dispatch: the guided step's share).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from easytune.errors import ConfigError

OP_TARGET_US = 5.0  # CPU: at most this much more per call than the bare backend
LOOP_TARGET = 1.1


def _interleaved(fns: dict[str, Callable[[], Any]], calls: int, blocks: int, device: torch.device):
    """Per-call seconds of each function, timed in alternating blocks of ``calls`` calls: ``{name: [block
    seconds per call]}`` (block j of every function ran back to back, so paired differences cancel the
    machine's drift). The order flips every round, so that no effect of position (the state the other
    function leaves in caches and predictors) can lean on one side of the pairs; an A/A check (one function
    paired with itself) found none above the noise here, the flip keeps it so elsewhere."""
    for fn in fns.values():  # warm-up (dispatch caches, allocator)
        for _ in range(max(10, calls // 10)):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns.items())
    for block in range(blocks):
        for name, fn in order if block % 2 == 0 else order[::-1]:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[name].append((time.perf_counter() - t0) / calls)
    return times


def _median(values: list[float]) -> float:
    ordered, mid = sorted(values), len(values) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _paired_median(times: dict[str, list[float]], a: str, b: str) -> float:
    """Median over the blocks of ``a``'s minus ``b``'s seconds per call (each pair ran back to back)."""
    return _median([x - y for x, y in zip(times[a], times[b])])


def _paired_ratio(times: dict[str, list[float]], a: str, b: str) -> float:
    """Median over the blocks of ``a``'s over ``b``'s seconds (each pair ran back to back: the machine's
    drift between blocks cancels)."""
    return _median([x / y for x, y in zip(times[a], times[b])])


def _best(times: dict[str, list[float]]) -> dict[str, float]:
    """The fastest block of each function (seconds per call): on a shared machine noise only ever adds time,
    so the minimum estimates the intrinsic cost best."""
    return {name: min(v) for name, v in times.items()}


def _op_cases(device: torch.device, dtype: torch.dtype) -> dict[str, tuple[Callable, Callable, Any]]:
    """Per op: (the call through ``auto``, the bare call ``bare(fn)`` of a backend function, the
    implementation ``auto`` picks)."""
    from easytune import ops

    def randn(*shape):
        return torch.randn(*shape, device=device, dtype=dtype)

    q, k, v = (randn(2, 4, 3, 64) for _ in range(3))
    out_c, out_u, x = (randn(2, 1, 256) for _ in range(3))
    a_t = torch.rand(2, device=device) * 0.5 + 0.25
    a_prev = a_t + 0.1
    motion, text = randn(2, 256), randn(2, 256)
    attention = ops.dispatch.resolve(
        "attention", q=q, k=k, v=v, q_lengths=None, kv_lengths=None, dropout_p=0.0
    )
    step_inputs = dict(
        model_cond=out_c, model_uncond=out_u, sample=x, eta=0.0, noise=None, prediction_type="epsilon",
        alpha_prod_t=a_t, alpha_prod_t_prev=a_prev, guidance_scale=7.5,
    )  # fmt: skip
    step = ops.dispatch.resolve("guided_step", **step_inputs)
    head = ops.dispatch.resolve("reward_head", motion=motion, text=text)
    return {
        "attention": (
            lambda: ops.attention(q, k, v),
            lambda fn: fn(q, k, v, q_lengths=None, kv_lengths=None, scale=None, dropout_p=0.0),
            attention,
        ),
        "guided_step": (
            lambda: ops.guided_step(out_c, out_u, x, a_t, a_prev, guidance_scale=7.5),
            lambda fn: fn(out_c, out_u, x, a_t, a_prev, guidance_scale=7.5),
            step,
        ),
        "reward_head": (lambda: ops.reward_head(motion, text), lambda fn: fn(motion, text), head),
    }


def _stub(*args: Any, **kwargs: Any) -> None:
    return None


def op_overhead(
    device: str | torch.device = "cpu", dtype: str = "float32", calls: int = 2000, blocks: int = 15
) -> list[dict[str, Any]]:
    """One row per op.

    ``auto_us`` / ``bare_us``: the op through ``auto`` and the backend ``auto`` picks called directly (fastest
    block); ``overhead_us``: the median paired difference, which carries the noise of timing the backend's
    work twice (on a shared CPU +-1 us for a 20-80 us call). ``dispatch_us``: the same for the two calls with
    the backend's function replaced by a stub that returns at once (the entry point's validation and dispatch
    alone, to a few tenths of a us). ``passes``: both within ``OP_TARGET_US`` (CPU only)."""
    from easytune import ops

    device = torch.device(device)
    torch_dtype = getattr(torch, dtype)
    rows = []
    for op, (auto, bare, impl) in _op_cases(device, torch_dtype).items():
        fn = impl.fn
        with torch.no_grad():
            timed = _interleaved({"auto": auto, "bare": partial(bare, fn)}, calls, blocks, device)
            object.__setattr__(impl, "fn", _stub)  # the registered (frozen) implementation, for this timing
            ops.dispatch.clear_cache()  # the memo holds the function it was filled with
            try:
                pair = {"auto": auto, "bare": partial(bare, _stub)}
                stubbed = _interleaved(pair, calls, blocks, device)
            finally:
                object.__setattr__(impl, "fn", fn)
                ops.dispatch.clear_cache()
        times = _best(timed)
        overhead_us = _paired_median(timed, "auto", "bare") * 1e6
        dispatch_us = _paired_median(stubbed, "auto", "bare") * 1e6
        rows.append(
            {
                "kind": "overhead",
                "case": f"op/{op}/{device.type}",
                "op": op,
                "backend": impl.backend,
                "device": str(device),
                "dtype": dtype,
                "auto_us": times["auto"] * 1e6,
                "bare_us": times["bare"] * 1e6,
                "overhead_us": overhead_us,
                "dispatch_us": dispatch_us,
                "target_us": OP_TARGET_US if device.type == "cpu" else None,
                "passes": max(overhead_us, dispatch_us) <= OP_TARGET_US if device.type == "cpu" else None,
                "calls_per_block": calls,
                "blocks": blocks,
            }
        )
    return rows


class _BareAttention:
    """``easytune.models.layers.attention`` replaced by plain SDPA (no validation, no dispatch)."""

    def __enter__(self) -> _BareAttention:
        self.layers = sys.modules["easytune.models.layers"]
        self.saved = self.layers.attention

        def bare(q, k, v, *, q_lengths=None, kv_lengths=None, scale=None, dropout_p=0.0, backend=None):
            if q_lengths is not None or kv_lengths is not None:
                raise ConfigError("the hand-written loop's bare attention takes no lengths")
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)

        self.layers.attention = bare
        return self

    def __exit__(self, *exc: object) -> None:
        self.layers.attention = self.saved


def _tiny_denoiser(device: torch.device, seed: int):
    from easytune.diffusion import DDIMScheduler
    from easytune.models.presets import build_model, get_preset, model_config
    from easytune.text import build_text_encoder

    torch.manual_seed(seed)
    preset = get_preset("tiny")
    text = build_text_encoder(preset["text_encoder"])
    model = build_model(model_config(preset, text.sentence_dim)).to(device).eval()
    scheduler = DDIMScheduler.from_config(preset["scheduler"])
    cond = text.encode(["a person walks forward"], device=device).sentence[:, None]
    null = text.encode([""], device=device).sentence[:, None]
    return model.denoiser, scheduler, cond, null, float(preset["guidance_scale"])


def loop_overhead(
    device: str | torch.device = "cpu",
    steps: int = 50,
    blocks: int = 21,
    seed: int = 0,
    compile_mode: str | None = None,
) -> dict[str, Any]:
    """The loop benchmark of the module docstring; one row. ``compile_mode``: also time the easytune pass
    with the denoiser compiled (``torch.compile(mode=...)``) and report ``compiled_ratio``."""
    from easytune.diffusion import ddim_sample

    device = torch.device(device)
    denoiser, scheduler, cond, null, w = _tiny_denoiser(device, seed)
    scheduler.set_timesteps(steps)
    x_T = torch.randn((1, *denoiser_shape(denoiser)), generator=torch.Generator().manual_seed(seed)).to(
        device
    )
    timesteps = scheduler.timesteps.tolist()
    a_t, a_prev = (a.tolist() for a in scheduler.alpha_pair(torch.tensor(timesteps)))
    cond_in = torch.cat([cond, null])

    def easytune_pass(fn=denoiser):
        return ddim_sample(fn, scheduler, x_T, cond, null, guidance_scale=w)

    def hand_pass():
        x = x_T
        for i, t in enumerate(timesteps):
            tt = torch.full((2,), t, dtype=torch.int64, device=device)
            out = denoiser(torch.cat([x, x]), tt, cond_in)
            eps = out[1:] + w * (out[:1] - out[1:])
            x0 = (x - (1 - a_t[i]) ** 0.5 * eps) / a_t[i] ** 0.5
            x = a_prev[i] ** 0.5 * x0 + (1 - a_prev[i]) ** 0.5 * eps
        return x

    def bare_attention(pass_fn):
        with _BareAttention():
            return pass_fn()

    with torch.no_grad():
        reference = bare_attention(hand_pass)
        torch.testing.assert_close(easytune_pass(), reference, rtol=1e-4, atol=1e-5)  # the same sampler
        hand = partial(bare_attention, hand_pass)
        passes = {
            "easytune": easytune_pass,
            "hand": hand,
            "bare_attention": partial(bare_attention, easytune_pass),
        }
        times = _interleaved(passes, 1, blocks, device)  # easytune and hand adjacent in every round
        t, ratio = _best(times), _paired_ratio(times, "easytune", "hand")
        row: dict[str, Any] = {
            "kind": "overhead",
            "case": f"loop/tiny/b1/{steps}/{device.type}",
            "device": str(device),
            "steps": steps,
            "easytune_s": t["easytune"],
            "hand_s": t["hand"],
            "ratio": ratio,
            "bare_attention_ratio": _paired_ratio(times, "bare_attention", "hand"),
            "target_ratio": LOOP_TARGET,
            "passes": ratio <= LOOP_TARGET,
            "blocks": blocks,
            "compile_mode": compile_mode,
        }
        if compile_mode is not None:
            compiled = torch.compile(denoiser, mode=compile_mode)
            warm0 = time.perf_counter()
            easytune_pass(compiled)
            row["compile_warmup_s"] = time.perf_counter() - warm0
            times = _interleaved(
                {"compiled": lambda: easytune_pass(compiled), "hand": hand}, 1, blocks, device
            )
            tc = _best(times)
            row.update(compiled_s=tc["compiled"], compiled_ratio=_paired_ratio(times, "compiled", "hand"))
    return row


def denoiser_shape(denoiser: torch.nn.Module) -> tuple[int, int]:
    c = denoiser.config
    return (c.latent_size, c.latent_dim)
