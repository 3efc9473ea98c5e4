"""Per-layer activation checkpointing of the skip transformers (frozen VAE decoder and reward model in
the reward path): same outputs and input gradients, fewer bytes alive during the backward pass."""

from __future__ import annotations

import torch

from easytune.bench.memory import LiveTensorMeter
from easytune.models.layers import set_gradient_checkpointing
from easytune.models.presets import build_model, get_preset, model_config
from easytune.models.reward import build_reward_model


def _reward_path(checkpointing: bool):
    torch.manual_seed(0)
    vae = build_model(model_config(get_preset("tiny"), 128)).vae.eval().requires_grad_(False)
    reward = build_reward_model("tiny").freeze()
    assert set_gradient_checkpointing(vae, checkpointing) == 2  # encoder and decoder stacks
    assert set_gradient_checkpointing(reward, checkpointing) == 3  # motion, text encoders; decoder
    lengths = torch.tensor([60, 37, 12])
    captions = ["a person jumps twice.", "someone waves.", "a person walks in a circle."]

    def run(z: torch.Tensor) -> torch.Tensor:
        return reward.reward(vae.decode(z, lengths), lengths, captions)

    return run, vae.config


def test_checkpointed_reward_path_matches_and_holds_fewer_bytes():
    results = {}
    for on in (False, True):
        run, cfg = _reward_path(on)
        z = torch.randn(
            3, cfg.latent_size, cfg.latent_dim, generator=torch.Generator().manual_seed(1)
        ).requires_grad_(True)
        with LiveTensorMeter() as live:
            r = run(z)
            (grad,) = torch.autograd.grad(r.sum(), z)
        results[on] = (r.detach(), grad, live.peak_bytes)
    (r0, g0, peak0), (r1, g1, peak1) = results[False], results[True]
    torch.testing.assert_close(r1, r0, rtol=0, atol=1e-6)
    torch.testing.assert_close(g1, g0, rtol=1e-5, atol=1e-7)
    assert g0.abs().max() > 0
    assert peak1 < 0.8 * peak0, (peak1, peak0)


def test_checkpointing_is_inactive_without_grad_and_can_be_turned_off():
    run, cfg = _reward_path(True)
    z = torch.randn(3, cfg.latent_size, cfg.latent_dim)
    with torch.no_grad():
        on = run(z)
    run_off, _ = _reward_path(False)
    with torch.no_grad():
        off = run_off(z)
    torch.testing.assert_close(on, off, rtol=0, atol=0)
