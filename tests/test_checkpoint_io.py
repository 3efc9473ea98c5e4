"""Atomic checkpoint writes, the config-checkpoint mixin and resuming a training checkpoint."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
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


@pytest.mark.parametrize("asset", ["mld_tiny.pt", "mld_tiny_flow.pt", "reward.pt", "evaluator.pt"])
def test_export_round_trips_through_safetensors_and_every_loader_reads_it(tmp_path, asset, capsys):
    """Issue 16: ``easytune export`` writes NAME.safetensors + NAME.json by default; the loaders give the
    same model as from the .pt (same weights, config, outputs)."""
    import json

    from easytune.checkpoint import ASSETS
    from easytune.cli import main

    out = tmp_path / "shipped"
    assert main(["export", str(ASSETS / asset), "--out", str(out), "--source", "test"]) == 0
    weights, side = tmp_path / "shipped.safetensors", tmp_path / "shipped.json"
    assert weights.is_file() and side.is_file() and "shipped.safetensors" in capsys.readouterr().out
    assert weights.read_bytes()[8:9] == b"{"  # a safetensors header: no pickle anywhere
    assert json.loads(side.read_text())["meta"]["source"] == "test"
    assert main(["export", str(ASSETS / asset), "--out", str(tmp_path / "ref.pt")]) == 0
    a, b = load_checkpoint(weights), load_checkpoint(tmp_path / "ref.pt")
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert a["config"] == json.loads(json.dumps(b["config"]))
    if asset.startswith("mld_tiny"):
        from easytune.generation import load_pipeline

        x, y = (
            load_pipeline(p).sample(["a person walks"], [40], steps=3, seed=0)[0]
            for p in (weights, tmp_path / "ref.pt")
        )
        np.testing.assert_array_equal(x, y)
    else:
        from easytune.models.evaluator import MotionTextEvaluator
        from easytune.models.reward import RewardModel

        cls = RewardModel if asset == "reward.pt" else MotionTextEvaluator
        m1, m2 = cls.from_checkpoint(weights), cls.from_checkpoint(tmp_path / "ref.pt")
        assert m1.config == m2.config
        assert all(torch.equal(p, q) for p, q in zip(m1.state_dict().values(), m2.state_dict().values()))
    assert main(["export", str(ASSETS / asset), "--out", str(tmp_path / "x.bin")]) == 2


def test_a_training_checkpoint_is_not_written_as_safetensors(tmp_path):
    with pytest.raises(CheckpointError, match=r"holds weights, config and meta only, not \['optimizer'\]"):
        save_atomic({"state_dict": {}, "optimizer": {}}, tmp_path / "run.safetensors")
    assert not list(tmp_path.iterdir())
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"bad.json: expected a JSON object"):
        load_checkpoint(tmp_path / "bad.safetensors")


def _loaders():
    from easytune.checkpoint import load_training_checkpoint
    from easytune.generation import load_pipeline
    from easytune.models import MDM, MLD, load_vae
    from easytune.models.evaluator import MotionTextEvaluator
    from easytune.models.reward import RewardModel

    return {
        "load_checkpoint": load_checkpoint,
        "load_training_checkpoint": lambda p: load_training_checkpoint(p, {}),
        "MLD.from_checkpoint": MLD.from_checkpoint,
        "MDM.from_checkpoint": MDM.from_checkpoint,
        "load_vae": load_vae,
        "load_pipeline": load_pipeline,
        "RewardModel.from_checkpoint": RewardModel.from_checkpoint,
        "MotionTextEvaluator.from_checkpoint": MotionTextEvaluator.from_checkpoint,
    }


@pytest.mark.parametrize("loader", list(_loaders()))
def test_no_loader_runs_pickled_code(tmp_path, loader):
    """Issue 16: every loader goes through the safe load; a checkpoint whose pickle would run code (here: a
    file written when unpickled) is refused by name and the code never runs."""
    marker = tmp_path / "ran"
    for name in ("state_dict", "config", "meta"):
        path = tmp_path / f"evil_{name}.pt"
        torch.save({"state_dict": {}, "config": {}, "meta": {}, name: _Payload(marker)}, path)
        with pytest.raises(CheckpointError, match="holds pickled objects other than tensors") as info:
            _loaders()[loader](path)
        assert str(path) in str(info.value)
    assert not marker.exists()


def test_the_embedded_models_stay_under_5_mb_and_load_without_a_dataset():
    """The wheel ships them (issue 17: the flow twin too); each carries its own Mean/Std."""
    from easytune.checkpoint import ASSETS
    from easytune.generation import EMBEDDED_BASES, load_pipeline

    sizes = {p.name: p.stat().st_size for p in ASSETS.glob("*.pt")}
    assert {"mld_tiny.pt", "mld_tiny_flow.pt", "reward.pt", "evaluator.pt"} <= set(sizes)
    assert all(size < 5_000_000 for size in sizes.values()), sizes
    for name, (file, _) in EMBEDDED_BASES.items():
        pipe = load_pipeline(name)
        assert pipe.data_dir is None and pipe.mean.shape == (263,)
        assert file in sizes
