"""``Trainer(compile=...)``: the compiled denoiser gives the eager run's samples and updates (CPU, the
``default`` mode; the GPU test, ``reduce-overhead`` with CUDA graphs for the no-grad steps)."""

from __future__ import annotations

import pytest
import torch
from test_sync_free import _trainer

import easytune as et
from easytune.errors import ConfigError


def _run(method, compile_mode, device="cpu", trajectories=2):
    """``trajectories`` trainer steps from the same init with plain SGD (Adam's normalised steps would turn
    float noise in near-zero gradients into full-size differences)."""
    trainer, batch = _trainer(method, 4, device)
    optimizer = torch.optim.SGD(trainer._params, lr=1e-2)
    trainer = et.Trainer(
        trainer.denoise_fn, trainer.scheduler, trainer.reward_fn, method=method, optimizer=optimizer,
        guidance_scale=trainer.guidance_scale, decode_fn=trainer.decode_fn, latent_shape=trainer.latent_shape,
        seed=0, compile=compile_mode,
    )  # fmt: skip
    start = [p.detach().clone() for p in trainer._params]
    stats = [trainer.step(batch) for _ in range(trajectories)]
    moved = max(float((p - s).abs().max()) for p, s in zip(trainer._params, start))
    return [p.detach().clone() for p in trainer._params], stats, moved


@pytest.mark.slow
def test_compiled_default_mode_equals_eager_on_cpu():
    torch._dynamo.reset()
    for method in (et.methods.EasyTune(k=2), et.methods.DRaFT(k=2)):
        eager, eager_stats, moved = _run(method, None)
        compiled, compiled_stats, _ = _run(method, "default")
        assert moved > 1e-4  # the updates are large against the tolerance
        for a, b in zip(eager, compiled):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
        for a, b in zip(eager_stats, compiled_stats):
            assert a["reward"] == pytest.approx(b["reward"], rel=1e-4, abs=1e-6)
            assert a["updates"] == b["updates"]


def test_unknown_compile_mode_is_refused():
    trainer, _ = _trainer(et.methods.EasyTune(k=2), 4)
    with pytest.raises(ConfigError, match="compile must be one of"):
        et.Trainer(
            trainer.denoise_fn,
            trainer.scheduler,
            trainer.reward_fn,
            method=et.methods.EasyTune(k=2),
            optimizer=trainer.optimizer,
            latent_shape=trainer.latent_shape,
            compile="max",
        )


@pytest.mark.gpu
def test_reduce_overhead_equals_eager_on_cuda():
    torch._dynamo.reset()
    method = et.methods.EasyTune(k=2)
    eager, _, _ = _run(method, None, "cuda", 3)
    compiled, _, _ = _run(method, "reduce-overhead", "cuda", 3)
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
