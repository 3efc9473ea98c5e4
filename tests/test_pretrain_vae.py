"""VAE pretraining loss settings (rec_loss / kl_weight / joints_weight) and the VAE's position tables."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from motion_data import write_random_motions

from easytune.checkpoint import load_checkpoint
from easytune.data.features import recover_from_ric
from easytune.data.humanml import MotionDataset
from easytune.errors import ConfigError
from easytune.models.layers import sinusoidal_table
from easytune.models.mld import MotionVAE, VAEConfig
from easytune.models.presets import get_preset
from easytune.train_utils import seed_everything
from easytune.training.loop import SeededBatches
from easytune.training.pretrain import BUCKET_POOL, PretrainOptions, pretrain
from easytune.training.pretrain_config import VAE_LOSS_DEFAULTS


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """Four clips of random features (lengths 40..52), Mean 0.1 / Std 2 (so de-normalising matters)."""
    return write_random_motions(
        tmp_path_factory.mktemp("motions"),
        [40 + 4 * i for i in range(4)],
        [("a person walks",)] * 4,
        mean=0.1,
        std=2.0,
        seed=1,
    )


def _reference_first_loss(root: Path, rec_loss: str, kl_weight: float, joints_weight: float) -> float:
    """The step-1 loss written out independently: same seed, model init and batch as ``pretrain``."""
    seed_everything(0)
    dataset = MotionDataset(root, "train", seed=0)
    vae_cfg = get_preset("tiny")["vae"]
    model = MotionVAE(VAEConfig(**vae_cfg)).train()
    batch = SeededBatches(dataset, 4, 0, bucket_pool=BUCKET_POOL)(0)
    x, lengths, mask = batch["motion"], batch["lengths"], batch["mask"]
    rec, _, post = model(x, lengths)
    valid = mask[..., None].float()
    err = rec - x
    per_elem = err**2 if rec_loss == "mse" else torch.where(err.abs() < 1, 0.5 * err**2, err.abs() - 0.5)
    loss = (per_elem * valid).sum() / (valid.sum() * 263)
    kl = (-torch.log(post.stddev) + (post.stddev**2 + post.mean**2) / 2 - 0.5).mean()
    loss = loss + kl_weight * kl
    if joints_weight:
        jr, jx = recover_from_ric(rec * 2.0 + 0.1), recover_from_ric(x * 2.0 + 0.1)
        j = F.smooth_l1_loss(jr, jx, reduction="none") * mask[..., None, None]
        loss = loss + joints_weight * j.sum() / (mask.sum() * 22 * 3)
    return loss.item()


@pytest.mark.parametrize("rec_loss,kl_weight,joints_weight", [("mse", 0.5, 0.0), ("smooth_l1", 1e-4, 1.0)])
def test_vae_loss_settings_reach_the_loss_and_meta(data_root, tmp_path, rec_loss, kl_weight, joints_weight):
    opts = PretrainOptions(
        stage="vae",
        data=data_root,
        out=tmp_path / "vae.pt",
        steps=1,
        batch_size=4,
        warmup=1,
        show_progress=False,
        rec_loss=rec_loss,
        kl_weight=kl_weight,
        joints_weight=joints_weight,
    )
    got = pretrain(opts).losses[0][1]
    want = _reference_first_loss(data_root, rec_loss, kl_weight, joints_weight)
    assert got == pytest.approx(want, rel=1e-5)
    train = load_checkpoint(tmp_path / "vae.pt")["meta"]["train"]
    got_settings = (train["rec_loss"], train["kl_weight"], train["joints_weight"])
    assert got_settings == (rec_loss, kl_weight, joints_weight)


def test_vae_loss_settings_default_to_the_preset_then_motionlcm(data_root, tmp_path):
    pretrain(
        PretrainOptions(
            stage="vae", data=data_root, out=tmp_path / "tiny.pt", steps=1, batch_size=4, show_progress=False
        )
    )
    tiny = get_preset("tiny")["train"]["vae"]
    train = load_checkpoint(tmp_path / "tiny.pt")["meta"]["train"]
    assert {k: train[k] for k in VAE_LOSS_DEFAULTS} == {
        **VAE_LOSS_DEFAULTS,
        **{k: tiny[k] for k in VAE_LOSS_DEFAULTS if k in tiny},
    }
    assert VAE_LOSS_DEFAULTS == {"rec_loss": "smooth_l1", "kl_weight": 1e-4, "joints_weight": 1.0}


def test_vae_loss_setting_errors(data_root, tmp_path):
    base = dict(data=data_root, out=tmp_path / "x.pt", steps=1, batch_size=4, show_progress=False)
    with pytest.raises(ConfigError, match="--rec-loss must be one of"):
        pretrain(PretrainOptions(stage="vae", rec_loss="l2", **base))
    with pytest.raises(ConfigError, match=r"--kl-weight must be a finite number in \[0, inf\)"):
        pretrain(PretrainOptions(stage="vae", kl_weight=-1.0, **base))
    with pytest.raises(ConfigError, match="--joints-weight only applies to the vae stage"):
        pretrain(PretrainOptions(stage="mdm", preset="mdm-tiny", joints_weight=0.0, **base))


def test_vae_position_tables_start_as_a_sinusoid():
    vae = MotionVAE(
        VAEConfig(
            latent_size=2, latent_dim=8, hidden_dim=16, ff_size=32, num_layers=1, num_heads=2, max_len=50
        )
    )
    table = sinusoidal_table(50, 16)[:, None]
    torch.testing.assert_close(vae.query_pos_encoder.pe.detach(), table, rtol=0, atol=0)
    torch.testing.assert_close(vae.query_pos_decoder.pe.detach(), table, rtol=0, atol=0)
    assert vae.query_pos_decoder.pe.requires_grad  # still learned: the checkpoint layout is unchanged


def test_vae_loss_flags_of_the_cli_reach_the_checkpoint(data_root, tmp_path):
    from easytune.cli import main

    out = tmp_path / "cli.pt"
    assert (
        main(
            [
                "pretrain",
                "vae",
                "--data",
                str(data_root),
                "--out",
                str(out),
                "--steps",
                "1",
                "--batch-size",
                "4",
                "--no-progress",
                "--rec-loss",
                "smooth_l1",
                "--kl-weight",
                "0.01",
                "--joints-weight",
                "0.5",
            ]
        )
        == 0
    )
    train = load_checkpoint(out)["meta"]["train"]
    assert (train["rec_loss"], train["kl_weight"], train["joints_weight"]) == ("smooth_l1", 0.01, 0.5)
