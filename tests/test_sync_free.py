"""No host syncs inside a trajectory: the calls that would sync on a GPU (``item``, ``__bool__``, ``__int__``,
``__float__``, ``__index__``, ``tolist``, ``nonzero``, ``cpu``, ``numpy``) are counted during ``Trainer.step``
on the real MLD + reward-model path; their number must not grow with the denoising steps or the updates.
The ``gpu`` test runs a trajectory under ``torch.cuda.set_sync_debug_mode("error")``."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

import easytune as et
from easytune.diffusion import DDIMScheduler
from easytune.generation import MotionPipeline
from easytune.models import packing
from easytune.models.families import FAMILIES
from easytune.models.presets import MLD_SCHEDULER, build_model, get_preset, model_config
from easytune.models.reward import build_reward_model
from easytune.text import build_text_encoder
from easytune.training.objective import build_finetuning

TEXT = "builtin:token_dim=16,sentence_dim=16"
SYNCING = {"item", "__bool__", "__int__", "__float__", "__index__", "tolist", "nonzero", "cpu", "numpy"}


class SyncCounter(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in SYNCING:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


def _trainer(method, n_steps: int, device: str = "cpu", frame_layout: str = "auto"):
    torch.manual_seed(0)
    preset = get_preset("tiny")
    preset["vae"].update(latent_dim=16, ff_size=32, num_layers=1, num_heads=2)
    preset["denoiser"].update(
        latent_dim=16, hidden_dim=16, time_dim=16, ff_size=32, num_layers=1, num_heads=2
    )
    model = build_model(model_config(preset, text_dim=16)).to(device)
    reward = build_reward_model(
        "tiny", text_encoder=build_text_encoder(TEXT), latent_dim=16, ff_size=32, num_layers=1, num_heads=2
    ).to(device)
    scheduler = DDIMScheduler.from_config(MLD_SCHEDULER)
    scheduler.set_timesteps(n_steps)
    pipe = MotionPipeline(
        family=FAMILIES["mld"],
        model=model,
        text=build_text_encoder(TEXT),
        scheduler=scheduler,
        guidance_scale=7.5,
        mean=torch.zeros(263),
        std=torch.ones(263),
    )
    parts = build_finetuning(pipe, reward, lr=1e-4, frame_layout=frame_layout)
    obj = parts.objective
    trainer = et.Trainer(
        obj.denoise,
        scheduler,
        obj.reward,
        method=method,
        optimizer=parts.optimizer,
        guidance_scale=7.5,
        decode_fn=obj.decode_fn,
        latent_shape=pipe.latent_shape,
        seed=0,
    )
    batch = obj.batch(["a person walks", "a person jumps"], [40, 25], torch.device(device))
    return trainer, batch


def _count(method, n_steps: int) -> list[str]:
    trainer, batch = _trainer(method, n_steps)
    trainer.step(batch)  # first trajectory: per-device tables, text latents, optimizer state
    with SyncCounter() as counter:
        stats = trainer.step(batch)
    assert stats["updates"] >= 1
    return counter.calls


@pytest.mark.parametrize(
    "small,large",
    [
        (et.methods.EasyTune(k=2), et.methods.EasyTune(k=6)),
        (et.methods.DRaFT(k=1), et.methods.DRaFT(k=5)),
        (et.methods.DRaFTLV(n=1), et.methods.DRaFTLV(n=4)),
    ],
    ids=["easytune", "draft", "draft-lv"],
)
def test_syncing_calls_do_not_grow_with_steps_or_updates(small, large):
    few = _count(small, 4)
    many = _count(large, 12)
    assert len(few) == len(many), (few, many)
    assert len(few) <= 2, few  # the one read of the trajectory's statistics


def test_the_fused_optimizer_skips_a_non_finite_update_on_the_device_and_training_stops():
    trainer, batch = _trainer(et.methods.EasyTune(k=2), 4)
    assert trainer._sync_free  # build_finetuning's AdamW is fused
    before = [p.detach().clone() for p in trainer._params]
    trainer.reward_fn = lambda feats, b: feats.sum(dim=(1, 2)) * float("nan")
    with pytest.raises(et.errors.NonFiniteLossError, match=r"update 0 \(sampling step 2"):
        trainer.step(batch)
    assert all(torch.equal(b, p) for b, p in zip(before, trainer._params))


@pytest.mark.gpu
@pytest.mark.parametrize("frame_layout", ["padded", "packed"])
def test_a_cuda_trajectory_makes_no_host_sync(monkeypatch, frame_layout):
    """Every denoising step, reward, backward and optimizer update of the trajectory runs with sync debug
    mode "error"; only the trajectory's one read of its statistics (``Trainer._read``) may sync. Packed
    frames: the layout comes from the batch's host lengths (no read)."""
    trainer, batch = _trainer(et.methods.EasyTune(k=3), 6, "cuda", frame_layout)
    trainer.step(batch)  # warm-up: tables, text latents, optimizer state
    packing._LAYOUTS.clear()  # the packed layout is built again inside the checked trajectory
    read = trainer._read
    reads = []

    def read_allowing_the_sync(values):
        torch.cuda.set_sync_debug_mode("default")
        reads.append(len(values))
        return read(values)

    monkeypatch.setattr(trainer, "_read", read_allowing_the_sync)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        stats = trainer.step(batch)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert reads == [3 * 2 + 3 * 2] and stats["updates"] == 3  # rewards, losses, norms, flags of 3 updates
