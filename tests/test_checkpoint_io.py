"""Atomic checkpoint writes, the config-checkpoint mixin and resuming a training checkpoint."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from easytune.checkpoint import ConfigCheckpointMixin, load_checkpoint, load_training_checkpoint, save_atomic
from easytune.errors import CheckpointError, ConfigError


@dataclass
class _Config:
    width: int = 3


class _Model(ConfigCheckpointMixin, nn.Module):
    def __init__(self, config: _Config) -> None:
        super().__init__()
        self.config = config
        self.linear = nn.Linear(config.width, 2)


def test_mixin_saves_the_easytune_layout_atomically(tmp_path):
    model = _Model(_Config(4))
    path = model.save(tmp_path / "m.pt", {"note": "x"})
    ckpt = load_checkpoint(path)
    assert set(ckpt) == {"state_dict", "config", "meta"}
    assert ckpt["config"] == {"width": 4} and ckpt["meta"] == {"note": "x"}
    torch.testing.assert_close(ckpt["state_dict"]["linear.weight"], model.linear.weight.detach())
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary file left behind


def test_training_checkpoint_resume_checks(tmp_path):
    train_config = {"lr": 1e-3, "steps": 10, "log_every": 5, "seed": 0}
    base = {"state_dict": {}, "meta": {"stage": "spl", "train_config": train_config}}
    path = save_atomic({**base, "optimizer": {}}, tmp_path / "run.pt")
    longer = {**train_config, "steps": 20, "log_every": 1}  # may change on resume
    assert load_training_checkpoint(path, longer, "spl")["meta"]["stage"] == "spl"
    with pytest.raises(ConfigError, match=r"'lr': \(0.001, 0.1\)"):
        load_training_checkpoint(path, {**train_config, "lr": 0.1}, "spl")
    with pytest.raises(ConfigError, match=r"'stage': \('spl', 'stage1'\)"):
        load_training_checkpoint(path, train_config, "stage1")
    exported = save_atomic(base, tmp_path / "exported.pt")
    with pytest.raises(CheckpointError, match="no optimizer state"):
        load_training_checkpoint(exported, train_config)


class _Payload:
    """A pickle that would write a file when unpickled (it must never run)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_unreadable_checkpoints_are_named_without_unsafe_advice(tmp_path):
    import os

    from easytune.checkpoint import load_checkpoint
    from easytune.errors import CheckpointError

    noise = tmp_path / "noise.pt"
    noise.write_bytes(bytes(range(256)) * 8)
    marker = tmp_path / "ran"
    torch.save({"state_dict": {}, "payload": _Payload(marker)}, tmp_path / "evil.pt")
    loop = tmp_path / "loop.pt"
    os.symlink(loop, loop)
    for path, expected in (
        (noise, "not a valid torch checkpoint|not a readable torch"),
        (tmp_path / "evil.pt", "holds pickled objects other than tensors"),
        (loop, "a symbolic link loop"),
    ):
        with pytest.raises(CheckpointError, match=expected) as info:
            load_checkpoint(path)
        assert str(path) in str(info.value) and "weights_only=False" not in str(info.value)
    assert not marker.exists()  # the pickled code never ran


@pytest.mark.parametrize(
    "ff_size,message",
    [
        (2e9, "ff_size must be an integer"),
        (2_000_000_000, r"config denoiser\.ff_size=2000000000 contradicts"),
    ],
)
def test_a_config_that_contradicts_its_weights_is_refused_before_building(tmp_path, ff_size, message):
    """Issue 18: ``ff_size=2e9`` in a checkpoint's config used to allocate ~1 TB before any shape check."""
    import time

    from easytune.checkpoint import ASSETS, load_checkpoint, save_atomic
    from easytune.errors import CheckpointError
    from easytune.generation import load_pipeline

    ckpt = load_checkpoint(ASSETS / "mld_tiny.pt")
    ckpt["config"] = {**ckpt["config"], "denoiser": {**ckpt["config"]["denoiser"], "ff_size": ff_size}}
    save_atomic(ckpt, tmp_path / "bad.pt")
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match=f"bad.pt: .*{message}") as err:
        load_pipeline(tmp_path / "bad.pt")
    assert time.perf_counter() - t0 < 30  # refused from shapes, nothing allocated
    if isinstance(ff_size, int):
        assert "linear1.weight: weights (256, 128), config (2000000000, 128)" in str(err.value)


@pytest.mark.parametrize(
    "asset, load", [("reward.pt", "reward"), ("evaluator.pt", "evaluator"), ("mld_tiny.pt", "mld")]
)
def test_every_model_config_is_read_by_one_loader_naming_the_file_and_field(tmp_path, asset, load):
    """Issue 15: one ``config_from_dict`` for every model config (MLD, MDM, reward model, evaluator)."""
    from easytune.checkpoint import ASSETS, config_from_dict
    from easytune.models import MLD
    from easytune.models.evaluator import MotionTextEvaluator
    from easytune.models.reward import RewardModel

    ckpt = load_checkpoint(ASSETS / asset)
    if load == "mld":
        ckpt["config"]["vae"] = {**ckpt["config"]["vae"], "bogus": 1}
    else:
        ckpt["config"] = {**ckpt["config"], "bogus": 1}
    save_atomic(ckpt, tmp_path / "bad.pt")
    cls = {"reward": RewardModel, "evaluator": MotionTextEvaluator, "mld": MLD}[load]
    with pytest.raises(
        (ConfigError, CheckpointError), match=r"bad.pt: config(\.vae)?: unknown \w+Config fields \['bogus'\]"
    ):
        cls.from_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(ConfigError, match=r"here\.width must be an integer, got 2.5"):
        config_from_dict(_Config, {"width": 2.5}, "here")
    assert config_from_dict(_Config, {"width": 5}, "here") == _Config(5)
