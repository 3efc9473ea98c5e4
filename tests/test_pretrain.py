"""Pretraining loop: every stage runs, checkpoints load as models, resume reproduces the loss sequence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from motion_data import write_random_motions

from easytune.checkpoint import load_checkpoint
from easytune.cli import main
from easytune.errors import CheckpointError, ConfigError, NonFiniteLossError
from easytune.generation import load_pipeline
from easytune.models import MDM, MLD, load_vae
from easytune.training import pretrain as pretrain_mod
from easytune.training.pretrain import PretrainOptions, pretrain

CAPTIONS = ["a person walks forward", "someone jumps twice", "a man waves his left hand", "a person squats"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """A 12-clip HumanML3D-layout dataset with random features (lengths 40..56)."""
    caps = [CAPTIONS[i % len(CAPTIONS)] for i in range(12)]
    return write_random_motions(
        tmp_path_factory.mktemp("motions"),
        [40 + 4 * (i % 5) for i in range(12)],
        [(c, f"{c} slowly") for c in caps],
    )


def _opts(stage: str, data: Path, out: Path, **kw) -> PretrainOptions:
    base = dict(steps=6, batch_size=4, ckpt_every=3, show_progress=False, warmup=2)
    return PretrainOptions(stage=stage, data=data, out=out, **{**base, **kw})


class _Stop(Exception):
    pass


def _interrupt_at(step: int):
    def callback(s: int, stats: dict) -> None:
        if s == step:
            raise _Stop

    return callback


def _assert_resume_reproduces(opts: PretrainOptions, tmp_path: Path) -> list[tuple[int, float]]:
    full = pretrain(opts).losses
    assert [s for s, _ in full] == list(range(1, 7))
    assert all(np.isfinite(v) for _, v in full)
    interrupted = PretrainOptions(**{**opts.__dict__, "out": tmp_path / "interrupted.pt"})
    with pytest.raises(_Stop):
        pretrain(interrupted, callback=_interrupt_at(5))  # dies after the step-3 checkpoint
    assert load_checkpoint(interrupted.out)["step"] == 3
    resumed = pretrain(PretrainOptions(**{**interrupted.__dict__, "resume": interrupted.out})).losses
    assert resumed == full[3:], "resume must reproduce the uninterrupted loss sequence exactly"
    return full


def _cli(*argv: str) -> None:
    assert main([*argv, "--no-progress"] if argv[0] == "pretrain" else list(argv)) == 0


@pytest.fixture(scope="module")
def vae_ckpt(data_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vae") / "vae.pt"
    _cli("pretrain", "vae", "--data", str(data_root), "--out", str(out), "--steps", "2", "--batch-size", "4")
    _cli(
        "pretrain",
        "vae",
        "--data",
        str(data_root),
        "--out",
        str(out),
        "--steps",
        "3",
        "--batch-size",
        "4",
        "--resume",
    )
    assert load_checkpoint(out)["step"] == 3
    return out


@pytest.fixture(scope="module")
def mld_ckpt(data_root, vae_ckpt, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mld") / "mld.pt"
    _cli(
        "pretrain",
        "mld",
        "--data",
        str(data_root),
        "--out",
        str(out),
        "--vae",
        str(vae_ckpt),
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--ema",
        "0.9",
    )
    return out


def test_vae_pretrain_resume_and_checkpoint(data_root, tmp_path):
    full = _assert_resume_reproduces(_opts("vae", data_root, tmp_path / "vae.pt", ema=0.9), tmp_path)
    ckpt = load_checkpoint(tmp_path / "vae.pt")
    assert ckpt["config"]["kind"] == "vae" and ckpt["step"] == 6 and "ema" in ckpt
    assert all(k.startswith("vae.") for k in ckpt["state_dict"])
    torch.testing.assert_close(ckpt["meta"]["std"], torch.ones(263))
    vae = load_vae(tmp_path / "vae.pt")
    assert (vae.config.latent_size, vae.config.latent_dim) == (8, 16)
    assert full[-1][1] < full[0][1] * 1.5


def test_mld_pretrain_resume_and_checkpoint(data_root, vae_ckpt, tmp_path):
    _assert_resume_reproduces(_opts("mld", data_root, tmp_path / "mld.pt", vae=vae_ckpt), tmp_path)
    model = MLD.from_checkpoint(tmp_path / "mld.pt")
    vae = load_vae(vae_ckpt)
    for k, v in vae.state_dict().items():  # the VAE stays frozen
        torch.testing.assert_close(model.vae.state_dict()[k], v, rtol=0, atol=0)
    ckpt = load_checkpoint(tmp_path / "mld.pt")
    assert ckpt["config"]["scheduler"]["prediction_type"] == "epsilon"
    assert ckpt["config"]["denoiser"]["text_dim"] == 128  # the tiny preset's text encoder sentence_dim


def test_mdm_pretrain_resume(data_root, tmp_path):
    opts = _opts("mdm", data_root, tmp_path / "mdm.pt", preset="mdm-tiny", lr=1e-4)
    _assert_resume_reproduces(opts, tmp_path)
    model = MDM.from_checkpoint(tmp_path / "mdm.pt")
    assert model.config.text_dim == 128


def test_flow_objective_pretrains_resumes_and_samples_with_the_flow_scheduler(data_root, vae_ckpt, tmp_path):
    """Issue 17: ``pretrain mld --objective flow`` trains the denoiser on the flow's interpolation (the
    stage's scheduler is the flow one), resumes exactly, saves a diffusers-style flow scheduler config that
    the pipeline samples with; the objective cannot change on resume and is refused for the other stages
    (MDM's timestep table takes integers)."""
    from easytune.diffusion import FlowMatchEulerDiscreteScheduler

    opts = _opts("mld", data_root, tmp_path / "flow.pt", vae=vae_ckpt, objective="flow")
    flow_losses = _assert_resume_reproduces(opts, tmp_path)
    diffusion = pretrain(_opts("mld", data_root, tmp_path / "ddpm.pt", vae=vae_ckpt)).losses
    assert flow_losses != diffusion  # another target on other inputs
    scheduler = load_checkpoint(tmp_path / "flow.pt")["config"]["scheduler"]
    assert scheduler["_class_name"] == "FlowMatchEulerDiscreteScheduler"
    assert scheduler["prediction_type"] == "flow_prediction"
    pipe = load_pipeline(tmp_path / "flow.pt", data=data_root)
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    motion = pipe.sample(["a person walks forward"], [40], steps=4, seed=0)[0]
    assert motion.shape == (40, 263) and np.isfinite(motion).all()
    with pytest.raises(
        ConfigError, match="trains the flow objective, this run asks for --objective diffusion"
    ):
        pretrain(
            _opts(
                "mld",
                data_root,
                tmp_path / "flow.pt",
                steps=8,
                objective="diffusion",
                resume=tmp_path / "flow.pt",
            )
        )
    for stage in ("vae", "mdm"):
        with pytest.raises(ConfigError, match=f"--objective only applies to the mld stage, not '{stage}'"):
            _opts(stage, data_root, tmp_path / "v.pt", objective="flow")


def test_nan_guard_stops_without_stepping(data_root, tmp_path, monkeypatch):
    def nan_loss(self, batch, gen):
        return torch.tensor(float("nan"), requires_grad=True), {}

    monkeypatch.setattr(pretrain_mod._VAEStage, "loss", nan_loss)
    with pytest.raises(NonFiniteLossError, match="step 1"):
        pretrain(_opts("vae", data_root, tmp_path / "nan.pt"))
    assert not (tmp_path / "nan.pt").exists()


def test_option_errors(data_root, tmp_path, vae_ckpt):
    with pytest.raises(ConfigError, match="needs --vae"):
        pretrain(_opts("mld", data_root, tmp_path / "x.pt"))
    with pytest.raises(ConfigError, match="is a mld preset"):
        pretrain(_opts("mdm", data_root, tmp_path / "x.pt", preset="tiny"))
    assert _opts("mdm", data_root, tmp_path / "x.pt").preset == "mdm-tiny"  # unset: the stage's preset
    with pytest.raises(ConfigError, match="fewer than --batch-size"):
        pretrain(_opts("vae", data_root, tmp_path / "x.pt", batch_size=64))
    with pytest.raises(ConfigError, match="already at step"):
        pretrain(
            _opts("vae", data_root, tmp_path / "x.pt", steps=3, resume=vae_ckpt, warmup=None, batch_size=None)
        )


def test_sample_cli_writes_denormalised_features_and_render(mld_ckpt, tmp_path, capsys):
    out, png = tmp_path / "x.npy", tmp_path / "x.png"
    _cli(
        "sample",
        "--ckpt",
        str(mld_ckpt),
        "--text",
        "a person jumps twice",
        "--length",
        "44",
        "--out",
        str(out),
        "--steps",
        "5",
        "--seed",
        "3",
        "--render",
        str(png),
    )
    feats = np.load(out)
    assert feats.shape == (44, 263) and feats.dtype == np.float32 and np.isfinite(feats).all()
    assert png.stat().st_size > 0
    pipe = load_pipeline(mld_ckpt)
    again = pipe.sample(["a person jumps twice"], [44], steps=5, seed=3)[0]
    np.testing.assert_array_equal(again, feats)
    other = pipe.sample(["a person jumps twice", "someone squats"], [44, 40], steps=5, seed=4)
    assert [o.shape for o in other] == [(44, 263), (40, 263)]
    torch.testing.assert_close(pipe.std, torch.ones(263))  # the checkpoint's dataset statistics


def test_sample_errors(vae_ckpt, mld_ckpt, tmp_path):
    with pytest.raises(CheckpointError, match="'vae' checkpoint cannot sample"):
        load_pipeline(vae_ckpt)
    with pytest.raises(ConfigError, match="gives 256-d sentences"):
        load_pipeline(mld_ckpt, text_encoder="builtin")


def test_unsafe_outputs_and_silent_option_changes_are_refused(data_root, tmp_path, vae_ckpt):
    with pytest.raises(ConfigError, match=r"--lr must be a finite number in \(0, inf\), got inf"):
        pretrain(_opts("vae", data_root, tmp_path / "x.pt", lr=float("inf")))
    existing = tmp_path / "existing.pt"
    existing.write_bytes(vae_ckpt.read_bytes())
    with pytest.raises(ConfigError, match="exists: pass --resume to continue it or --overwrite to replace"):
        pretrain(_opts("vae", data_root, existing))
    assert existing.read_bytes() == vae_ckpt.read_bytes()
    with pytest.raises(ConfigError, match="is a directory"):
        pretrain(_opts("vae", data_root, tmp_path))
    with pytest.raises(ConfigError, match="cannot write there"):
        pretrain(_opts("vae", data_root, existing / "under-a-file.pt"))
    with pytest.raises(ConfigError, match=r"was trained with --lr .*asks for 0.1"):
        pretrain(_opts("vae", data_root, existing, steps=9, lr=0.1, resume=existing))


def test_non_finite_weights_after_a_step_stop_the_run_naming_the_tensor(data_root, tmp_path, monkeypatch):
    """Issue 18: the loss and its gradient are finite, the update is not (an optimizer step that overflows):
    the run stops at that step naming the weight, and no checkpoint is written."""
    real_step = torch.optim.AdamW.step

    def overflowing_step(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        with torch.no_grad():
            self.param_groups[0]["params"][0].mul_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", overflowing_step)
    with pytest.raises(NonFiniteLossError, match=r"weight \S+ is not finite after pretrain vae step 1"):
        pretrain(_opts("vae", data_root, tmp_path / "inf.pt", ckpt_every=1))
    assert not (tmp_path / "inf.pt").exists()


def test_an_absurd_learning_rate_stops_at_the_loss_check_naming_it(data_root, tmp_path):
    """lr=1e30 (finite): the weights stay finite but the next forward is NaN. The run stops at the loss
    check naming the learning rate, not inside torch.distributions (the issue's raw ValueError); every
    checkpoint written on the way holds finite weights."""
    out = tmp_path / "huge.pt"
    with pytest.raises(
        NonFiniteLossError, match=r"step 2 .*learning rate \[[0-9.e+]+\] is not finite or absurdly"
    ):
        pretrain(_opts("vae", data_root, out, steps=3, lr=1e30, ckpt_every=1, warmup=0))
    state = torch.load(out, weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


def test_the_saved_options_repeat_a_pretraining_run(data_root, tmp_path):
    """Every run writes OUT.logs/config.yaml (its resolved options); ``--config`` with it alone repeats the
    run exactly."""
    first, again = tmp_path / "first.pt", tmp_path / "again.pt"
    flags = ["--steps", "2", "--batch-size", "4", "--lr", "3e-4", "--seed", "5"]
    _cli("pretrain", "vae", "--data", str(data_root), "--out", str(first), *flags)
    saved = Path(f"{first}.logs") / "config.yaml"
    text = saved.read_text()
    assert "steps: 2" in text and "lr: 0.0003" in text and "stage: vae" in text and "resume" not in text
    _cli("pretrain", "vae", "--config", str(saved), "--data", str(data_root), "--out", str(again))
    a, b = load_checkpoint(first), load_checkpoint(again)
    assert a["meta"]["train"] == b["meta"]["train"] and a["meta"]["loss"] == b["meta"]["loss"]
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
