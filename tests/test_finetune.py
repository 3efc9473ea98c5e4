"""The fine-tuning loop: exact resume, export, NaN guard, LoRA, and a two-process (gloo) data-parallel run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from easytune.checkpoint import save_atomic
from easytune.data.humanml import load_mean_std
from easytune.data.synthetic import generate_dataset
from easytune.errors import ConfigError, NonFiniteLossError
from easytune.generation import load_generator
from easytune.models.presets import build_model, get_preset, model_config
from easytune.models.reward import build_reward_model
from easytune.text import build_text_encoder
from easytune.training.finetune import FinetuneConfig, Run, build_method

TEXT = "builtin:token_dim=16,sentence_dim=16"


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    """A small synthetic dataset, a random tiny MLD and a random tiny reward model."""
    root = tmp_path_factory.mktemp("ft")
    data = root / "data"
    generate_dataset(data, 12, seed=1)
    torch.manual_seed(0)
    preset = get_preset("tiny")
    preset["text_encoder"] = TEXT
    preset["vae"].update(latent_dim=16, ff_size=32, num_layers=1, num_heads=2)
    preset["denoiser"].update(latent_dim=16, hidden_dim=16, time_dim=16, ff_size=32, num_layers=1,
                              num_heads=2)
    config = model_config(preset, text_dim=16)
    model = build_model(config)
    mean, std = load_mean_std(data)
    save_atomic({"state_dict": model.state_dict(), "config": config,
                 "meta": {"mean": mean.tolist(), "std": std.tolist(), "data": str(data)}}, root / "mld.pt")
    reward = build_reward_model("tiny", text_encoder=build_text_encoder(TEXT), latent_dim=16, ff_size=32,
                                num_layers=1, num_heads=2)
    reward.save(root / "reward.pt")
    return {"data": data, "base": root / "mld.pt", "reward": root / "reward.pt", "root": root}


def _config(assets, out: Path, **kw) -> FinetuneConfig:
    base = dict(method="easytune", method_options={"k": 2}, base=str(assets["base"]),
                reward=str(assets["reward"]), data=str(assets["data"]), out=str(out), steps=4, batch_size=2,
                lr=1e-3, warmup=1, num_inference_steps=4, ckpt_every=1, seed=3, device="cpu", progress=False)
    base.update(kw)
    return FinetuneConfig(**base)


def test_build_method_rejects_unknown_name():
    with pytest.raises(ConfigError, match="--method"):
        build_method("dpo")
    assert build_method("draft", k=3).k == 3


def test_resume_reproduces_the_loss_curve_and_export_loads(assets, tmp_path):
    full = Run(_config(assets, tmp_path / "full")).train()
    assert len(full) == 4 and all(row["updates"] == 2 for row in full)
    class Crash(Exception):
        pass

    def crash_after_two(row):
        if row["step"] == 2:
            raise Crash

    with pytest.raises(Crash):  # a run killed after its step-2 checkpoint
        Run(_config(assets, tmp_path / "split")).train(on_step=crash_after_two)
    resumed = Run(_config(assets, tmp_path / "split", resume=True)).train()
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full]
    assert [r["reward"] for r in resumed] == [r["reward"] for r in full]
    lines = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4]

    run = Run(_config(assets, tmp_path / "export", steps=1))
    run.train()
    gen = load_generator(run.export())
    for k, v in run.gen.trainable.state_dict().items():
        torch.testing.assert_close(gen.trainable.state_dict()[k], v)
    assert gen.sample(["a person walks"], [8], steps=2)[0].shape == (8, 263)


def test_export_cli_can_leave_out_the_dataset_path(assets, tmp_path):
    from easytune.cli import main

    assert main(["export", str(assets["base"]), "--out", str(tmp_path / "kept.pt")]) == 0
    assert main(["export", str(assets["base"]), "--out", str(tmp_path / "shipped.pt"), "--no-data-path",
                 "--source", "unit test"]) == 0
    kept = torch.load(tmp_path / "kept.pt", weights_only=True)["meta"]
    shipped = torch.load(tmp_path / "shipped.pt", weights_only=True)["meta"]
    assert kept["data"] == str(assets["data"])
    assert "data" not in shipped and shipped["source"] == "unit test"
    assert shipped["mean"] == kept["mean"] and shipped["std"] == kept["std"]
    assert load_generator(tmp_path / "shipped.pt").data_dir is None
    assert main(["export", str(assets["base"]), "--out", str(tmp_path / "small.pt"), "--max-frames", "60",
                 "--max-text-tokens", "1"]) == 0
    small = torch.load(tmp_path / "small.pt", weights_only=True)
    vae_rows = 60 + 2 * small["config"]["vae"]["latent_size"]
    assert small["config"]["vae"]["max_len"] == vae_rows
    assert small["state_dict"]["vae.query_pos_decoder.pe"].shape[0] == vae_rows


def test_resume_refuses_a_different_method(assets, tmp_path):
    Run(_config(assets, tmp_path, steps=1)).train()
    with pytest.raises(ConfigError, match="method"):
        Run(_config(assets, tmp_path, method="draft", resume=True))


def test_nan_loss_is_reported_not_trained_on(assets, tmp_path):
    run = Run(_config(assets, tmp_path, steps=1))
    before = {k: v.clone() for k, v in run.gen.trainable.state_dict().items()}
    run.objective.reward = lambda feats, batch: feats.sum(dim=(1, 2)) * float("nan")
    run.trainer.reward_fn = run.objective.reward
    with pytest.raises(NonFiniteLossError):
        run.train()
    for k, v in run.gen.trainable.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_checkpointing_the_frozen_reward_path_changes_no_number(assets, tmp_path):
    plain = Run(_config(assets, tmp_path / "plain", steps=2)).train()
    run = Run(_config(assets, tmp_path / "ckpt", steps=2, checkpoint_frozen=True))
    assert run.gen.model.vae.decoder.gradient_checkpointing
    assert run.reward_model.motion_encoder.gradient_checkpointing
    ckpt = run.train()
    for a, b in zip(plain, ckpt):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-7)
        assert a["reward"] == pytest.approx(b["reward"], rel=1e-5, abs=1e-7)


def test_lora_and_regularisation_train_only_adapters(assets, tmp_path):
    run = Run(_config(assets, tmp_path, steps=1, lora_rank=2, reg_weight=0.1))
    trainable = [n for n, p in run.gen.trainable.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    run.train()
    gen = load_generator(run.export())
    assert not any("lora" in k for k in gen.trainable.state_dict())


def test_two_process_gloo_run_keeps_ranks_in_sync(assets, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533",
           "-m", "easytune.cli", "finetune", "--method", "easytune", "--k", "2",
           "--base", str(assets["base"]),
           "--reward", str(assets["reward"]), "--data", str(assets["data"]), "--out", str(out),
           "--steps", "2", "--batch-size", "2", "--inference-steps", "4", "--lr", "1e-3", "--warmup", "1",
           "--device", "cpu", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    # Each rank draws different prompts: without gradient averaging the final check_in_sync raises.
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    tuned = load_generator(out / "model.pt").trainable.state_dict()
    base = load_generator(assets["base"]).trainable.state_dict()
    assert any(not torch.equal(base[k], v) for k, v in tuned.items())


def test_check_in_sync_detects_divergence(monkeypatch):
    from easytune.training import distributed

    info = distributed.DistInfo(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"))

    def fake_all_gather(out, local):
        out[0].copy_(local)
        out[1].copy_(local + 1)

    monkeypatch.setattr(distributed.dist, "all_gather", fake_all_gather)
    with pytest.raises(RuntimeError, match="diverged"):
        distributed.check_in_sync(torch.nn.Linear(2, 2), info)
