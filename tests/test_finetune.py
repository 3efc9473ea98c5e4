"""The fine-tuning loop: exact resume, export, NaN guard, LoRA, and a two-process (gloo) data-parallel run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from easytune.checkpoint import save_atomic
from easytune.data.humanml import load_mean_std
from easytune.data.synthetic import generate_dataset
from easytune.errors import ConfigError, NonFiniteLossError
from easytune.generation import load_pipeline
from easytune.methods import build as build_method
from easytune.models.presets import build_model, get_preset, model_config
from easytune.models.reward import build_reward_model
from easytune.text import build_text_encoder
from easytune.training.finetune import FinetuneConfig, Run

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
    preset["denoiser"].update(
        latent_dim=16, hidden_dim=16, time_dim=16, ff_size=32, num_layers=1, num_heads=2
    )
    config = model_config(preset, text_dim=16)
    model = build_model(config)
    mean, std = load_mean_std(data)
    save_atomic(
        {
            "state_dict": model.state_dict(),
            "config": config,
            "meta": {"mean": mean.tolist(), "std": std.tolist(), "data": str(data)},
        },
        root / "mld.pt",
    )
    reward = build_reward_model(
        "tiny", text_encoder=build_text_encoder(TEXT), latent_dim=16, ff_size=32, num_layers=1, num_heads=2
    )
    reward.save(root / "reward.pt")
    return {"data": data, "base": root / "mld.pt", "reward": root / "reward.pt", "root": root}


def _config(assets, out: Path, **kw) -> FinetuneConfig:
    base = dict(
        method="easytune",
        method_options={"k": 2},
        base=str(assets["base"]),
        reward=str(assets["reward"]),
        data=str(assets["data"]),
        out=str(out),
        steps=4,
        batch_size=2,
        lr=1e-3,
        warmup=1,
        num_inference_steps=4,
        ckpt_every=1,
        seed=3,
        device="cpu",
        progress=False,
    )
    base.update(kw)
    return FinetuneConfig(**base)


def test_build_method_rejects_unknown_name():
    with pytest.raises(ConfigError, match="method must be one of"):
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
    pipe = load_pipeline(run.export())
    for k, v in run.pipe.trainable.state_dict().items():
        torch.testing.assert_close(pipe.trainable.state_dict()[k], v)
    assert pipe.sample(["a person walks"], [8], steps=2)[0].shape == (8, 263)


def test_export_cli_can_leave_out_the_dataset_path(assets, tmp_path):
    from easytune.cli import main

    assert main(["export", str(assets["base"]), "--out", str(tmp_path / "kept.pt")]) == 0
    assert (
        main(
            [
                "export",
                str(assets["base"]),
                "--out",
                str(tmp_path / "shipped.pt"),
                "--no-data-path",
                "--source",
                "unit test",
            ]
        )
        == 0
    )
    kept = torch.load(tmp_path / "kept.pt", weights_only=True)["meta"]
    shipped = torch.load(tmp_path / "shipped.pt", weights_only=True)["meta"]
    assert kept["data"] == str(assets["data"])
    assert "data" not in shipped and shipped["source"] == "unit test"
    assert shipped["mean"] == kept["mean"] and shipped["std"] == kept["std"]
    assert load_pipeline(tmp_path / "shipped.pt").data_dir is None
    assert (
        main(
            [
                "export",
                str(assets["base"]),
                "--out",
                str(tmp_path / "small.pt"),
                "--max-frames",
                "60",
                "--max-text-tokens",
                "1",
            ]
        )
        == 0
    )
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
    before = {k: v.clone() for k, v in run.pipe.trainable.state_dict().items()}
    run.objective.reward = lambda feats, batch: feats.sum(dim=(1, 2)) * float("nan")
    run.trainer.reward_fn = run.objective.reward
    with pytest.raises(NonFiniteLossError):
        run.train()
    for k, v in run.pipe.trainable.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_checkpointing_the_frozen_reward_path_changes_no_number(assets, tmp_path):
    plain = Run(_config(assets, tmp_path / "plain", steps=2)).train()
    run = Run(_config(assets, tmp_path / "ckpt", steps=2, checkpoint_frozen=True))
    assert run.pipe.model.vae.decoder.gradient_checkpointing
    assert run.reward_model.motion_encoder.gradient_checkpointing
    ckpt = run.train()
    for a, b in zip(plain, ckpt):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-7)
        assert a["reward"] == pytest.approx(b["reward"], rel=1e-5, abs=1e-7)


def test_lora_and_regularisation_train_only_adapters(assets, tmp_path):
    run = Run(_config(assets, tmp_path, steps=1, lora_rank=2, reg_weight=0.1))
    trainable = [n for n, p in run.pipe.trainable.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    run.train()
    pipe = load_pipeline(run.export())
    assert not any("lora" in k for k in pipe.trainable.state_dict())


def _torchrun(assets, out, steps, *extra):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        "29533",
        "-m",
        "easytune.cli",
        "finetune",
        "--method",
        "easytune",
        "--k",
        "2",
        "--base",
        str(assets["base"]),
        "--reward",
        str(assets["reward"]),
        "--data",
        str(assets["data"]),
        "--out",
        str(out),
        "--steps",
        str(steps),
        "--batch-size",
        "2",
        "--inference-steps",
        "4",
        "--lr",
        "1e-3",
        "--warmup",
        "1",
        "--device",
        "cpu",
        "--no-progress",
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_two_process_gloo_run_keeps_ranks_in_sync_and_resumes_exactly(assets, tmp_path):
    # Each rank draws different prompts: without gradient averaging the final check_in_sync raises.
    _torchrun(assets, tmp_path / "ddp", 3)
    assert len((tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()) == 3
    tuned = load_pipeline(tmp_path / "ddp" / "model.pt").trainable.state_dict()
    base = load_pipeline(assets["base"]).trainable.state_dict()
    assert any(not torch.equal(base[k], v) for k, v in tuned.items())
    # 2 trajectories, then resumed to 3: every rank continues its own random stream (its x_T noise), so
    # the weights are those of the uninterrupted run.
    _torchrun(assets, tmp_path / "split", 2)
    _torchrun(assets, tmp_path / "split", 3, "--resume")
    resumed = load_pipeline(tmp_path / "split" / "model.pt").trainable.state_dict()
    assert all(torch.equal(resumed[k], v) for k, v in tuned.items())


def test_check_in_sync_detects_divergence(monkeypatch):
    from easytune.training import distributed

    info = distributed.DistInfo(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"))

    def fake_all_gather(out, local):
        out[0].copy_(local)
        out[1].copy_(local + 1)

    monkeypatch.setattr(distributed.dist, "all_gather", fake_all_gather)
    with pytest.raises(RuntimeError, match="diverged"):
        distributed.check_in_sync(torch.nn.Linear(2, 2), info)


# ------------------------------------------------------------------- issue 12: frozen path, LR, messages
@pytest.mark.parametrize("lora_rank", [None, 2])
def test_only_the_denoiser_holds_gradients_and_the_frozen_path_is_unchanged(assets, tmp_path, lora_rank):
    """The embedded tiny MLD and SPL reward model: at every update only the trainable parameters (the
    denoiser, or its LoRA adapters) hold gradients, and the VAE and reward model stay bit-identical."""
    cfg = _config(
        assets,
        tmp_path,
        base="default",
        reward="default",
        steps=2,
        num_inference_steps=5,
        lora_rank=lora_rank,
    )
    run = Run(cfg)
    vae, reward = run.pipe.model.vae, run.reward_model
    frozen_before = {
        **{f"vae.{k}": v.clone() for k, v in vae.state_dict().items()},
        **{f"reward.{k}": v.clone() for k, v in reward.state_dict().items()},
    }
    trained = {id(p) for p in run.optimizer.param_groups[0]["params"]}
    assert not any(p.requires_grad for p in [*vae.parameters(), *reward.parameters()])
    assert not vae.training and not reward.training
    if lora_rank:
        assert all("lora_" in n for n, p in run.pipe.trainable.named_parameters() if id(p) in trained)
    checked = []

    def check(grads):  # at each update, after the backward
        holders = [
            (n, p) for m in (run.pipe.model, reward) for n, p in m.named_parameters() if p.grad is not None
        ]
        stray = [n for n, p in holders if id(p) not in trained]
        assert holders and not stray, stray
        checked.append(len(grads))

    run.trainer.grad_reducer = check
    history = run.train()
    assert len(checked) == sum(int(r["updates"]) for r in history) == 4  # EasyTune k=2, 2 trajectories
    after = {
        **{f"vae.{k}": v for k, v in vae.state_dict().items()},
        **{f"reward.{k}": v for k, v in reward.state_dict().items()},
    }
    assert all(torch.equal(frozen_before[k], after[k]) for k in frozen_before)
    assert all(p.grad is None for p in [*vae.parameters(), *reward.parameters()])


def test_lr_schedule_counts_trajectories_alike_for_every_method(assets, tmp_path):
    """Warm-up over 2 trajectories: EasyTune-2 (2 updates per trajectory) and DRaFT (1) see the same LR per
    trajectory, and reach the full LR on trajectory 3."""
    lrs = {}
    for method in ("easytune", "draft"):
        cfg = _config(assets, tmp_path / method, method=method, steps=4, warmup=2, lr=1e-3, ckpt_every=0)
        lrs[method] = [row["lr"] for row in Run(cfg).train()]
    assert lrs["easytune"] == lrs["draft"] == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3])
    cos = _config(assets, tmp_path / "cos", steps=4, warmup=1, lr=1e-3, lr_schedule="cosine", ckpt_every=0)
    assert [row["lr"] for row in Run(cos).train()] == pytest.approx([1e-3, 1e-3, 7.5e-4, 2.5e-4])


def test_default_config_trains_at_the_given_lr_after_a_short_warmup():
    from easytune.train_utils import lr_lambda

    cfg = FinetuneConfig()
    f = lr_lambda(cfg.lr_schedule, cfg.warmup, cfg.steps)
    assert cfg.warmup < cfg.steps // 5
    assert [f(s) for s in range(cfg.warmup, cfg.steps)] == [1.0] * (cfg.steps - cfg.warmup)


def test_an_option_the_method_does_not_take_is_refused_by_name(assets, tmp_path, capsys):
    from easytune.cli import main

    with pytest.raises(ConfigError, match="--weighting does not apply to --method draft.*--k"):
        FinetuneConfig(method="draft", method_options={"weighting": "early"}).validate()
    with pytest.raises(ConfigError, match="--k does not apply to --method refl"):
        build_method("refl", k=3)
    code = main(
        [
            "finetune",
            "--method",
            "draft",
            "--weighting",
            "early",
            "--out",
            str(tmp_path / "x"),
            "--data",
            str(assets["data"]),
            "--device",
            "cpu",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "--weighting does not apply to --method draft" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_only_rank_zero_writes_run_files(assets, tmp_path):
    from easytune.training.distributed import DistInfo

    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1, "written": "by rank 0"}\n')
    run = Run(_config(assets, out, steps=1, ckpt_every=0, overwrite=True))
    run.info = DistInfo(rank=1, world_size=1, local_rank=1, device=torch.device("cpu"))
    run.train()
    assert (out / "metrics.jsonl").read_text() == '{"step": 1, "written": "by rank 0"}\n'
    assert not (out / "last.pt").exists() and not (out / "tb").exists()


def test_the_light_config_module_agrees_with_the_trainer_and_the_objective():
    from easytune import trainer
    from easytune.training import finetune_config, objective

    assert finetune_config.COMPILE_MODES == trainer.COMPILE_MODES
    assert objective.PRECISIONS is finetune_config.PRECISIONS
    with pytest.raises(ConfigError, match="--precision"):
        FinetuneConfig(precision="fp8").validate()
    with pytest.raises(ConfigError, match="--compile"):
        FinetuneConfig(compile="max").validate()


# ---------------------------------------------------- issue 18: runs are never silently changed
def test_a_previous_run_is_never_overwritten_without_overwrite(assets, tmp_path):
    Run(_config(assets, tmp_path, steps=2)).train()
    lines = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(
        ConfigError, match=r"holds a previous run \(last.pt, metrics.jsonl\).*--resume.*--overwrite"
    ):
        Run(_config(assets, tmp_path, steps=1))
    assert (tmp_path / "metrics.jsonl").read_text() == lines  # untouched
    Run(_config(assets, tmp_path, steps=1, overwrite=True)).train()
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1
    with pytest.raises(ConfigError, match="is a file"):
        Run(_config(assets, tmp_path / "metrics.jsonl", steps=1))
    with pytest.raises(ConfigError, match="does not exist"):
        Run(_config(assets, tmp_path / "new", steps=1, resume=True))


@pytest.mark.parametrize(
    "change",
    [
        {"lr": 2e-3},
        {"num_inference_steps": 3},
        {"guidance_scale": 2.0},
        {"reward_weight": 0.5},
        {"ema": 0.9},
        {"warmup": 3},
    ],
)
def test_resume_refuses_a_changed_option_by_name_unless_allowed(assets, tmp_path, change):
    Run(_config(assets, tmp_path, steps=1)).train()
    ((key, value),) = change.items()
    flag = {"num_inference_steps": "--inference-steps", "guidance_scale": "--guidance"}.get(
        key, "--" + key.replace("_", "-")
    )
    bare = flag.lstrip("-")
    with pytest.raises(ConfigError, match=f"was run with {flag} .*--allow-changed {bare} "):
        Run(_config(assets, tmp_path, steps=2, resume=True, **change))
    run = Run(_config(assets, tmp_path, steps=2, resume=True, allow_changed=(flag,), **change))
    assert run.step == 1
    # the advice works on the command line (argparse takes "--allow-changed --lr" for two options)
    from easytune.cli import build_parser
    from easytune.cli.finetune import config_from_args

    args = build_parser().parse_args(["finetune", "--out", str(tmp_path), "--allow-changed", bare])
    assert config_from_args(args).allow_changed == (bare,)


def test_stale_temporary_files_of_killed_saves_are_removed(assets, tmp_path):
    Run(_config(assets, tmp_path, steps=1)).train()
    stale = tmp_path / ".last.pt.abc123.tmp"
    stale.write_bytes(b"partial")
    Run(_config(assets, tmp_path, steps=2, resume=True))
    assert not stale.exists()


def test_a_kill_right_after_a_resume_starts_keeps_the_metrics_log(assets, tmp_path, monkeypatch):
    """Issue 18 item 5: the log was reopened with "w" and nothing was written until the first step, so a
    kill in between emptied it. Now it is rewritten atomically with the checkpoint's rows first."""
    import easytune.training.tracking as tracking_mod

    Run(_config(assets, tmp_path, steps=2)).train()
    before = (tmp_path / "metrics.jsonl").read_text()
    assert len(before.splitlines()) == 2

    class Killed(Exception):
        pass

    real_open = tracking_mod._rewrite

    def open_then_die(path, rows):
        real_open(path, rows).close()
        raise Killed  # the process dies before its first step

    monkeypatch.setattr(tracking_mod, "_rewrite", open_then_die)
    with pytest.raises(Killed):
        Run(_config(assets, tmp_path, steps=4, resume=True)).train()
    assert (tmp_path / "metrics.jsonl").read_text() == before
    assert not list(tmp_path.glob(".metrics.jsonl.*"))


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("max_grad_norm", float("nan"), "--max-grad-norm must be a finite number"),
        ("reg_weight", float("nan"), "--reg-weight must be a finite number in \\[0, inf\\)"),
        ("time_budget", float("nan"), "--time-budget"),
        ("lora_rank", 0, "--lora-rank must be an integer >= 1"),
        ("warmup", -10, "--warmup must be >= 0"),
        ("ckpt_every", -1, "--ckpt-every must be an integer >= 0"),
        ("ema", float("nan"), "--ema must be a finite number in \\(0, 1\\)"),
        ("ema", 2.0, "--ema"),
        ("lr", float("nan"), r"--lr must be a finite number in \(0, inf\), got nan"),
        ("lr", -1.0, "--lr"),
        ("guidance_scale", float("inf"), "--guidance"),
        ("reward_weight", float("nan"), "--reward-weight"),
        ("allow_changed", ("--steps",), "--allow-changed: \\['--steps'\\] are not options a resume compares"),
    ],
)
def test_odd_option_values_are_refused_with_the_accepted_range(field, value, message):
    with pytest.raises(ConfigError, match=message):
        FinetuneConfig(**{field: value}).validate()


def test_eval_every_without_an_evaluator_is_refused(assets, tmp_path, capsys):
    from easytune.cli import main

    code = main(
        [
            "finetune",
            "--out",
            str(tmp_path / "x"),
            "--data",
            str(assets["data"]),
            "--eval-every",
            "1",
            "--device",
            "cpu",
        ]
    )
    assert code == 2 and "--eval-every 1 needs --evaluator" in capsys.readouterr().err


def test_unusable_run_directories_are_refused_before_training(assets, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot write there"):
        Run(_config(assets, blocker / "run", steps=1))  # under a file


def test_a_checkpoint_with_non_finite_tensors_is_never_written(tmp_path):
    from easytune.checkpoint import save_atomic
    from easytune.errors import NonFiniteError

    save_atomic({"state_dict": {"w": torch.ones(2)}}, tmp_path / "ok.pt")
    before = (tmp_path / "ok.pt").read_bytes()
    with pytest.raises(NonFiniteError, match=r"tensor optimizer\.state\.0\.exp_avg holds NaN or inf"):
        save_atomic(
            {
                "state_dict": {"w": torch.ones(2)},
                "optimizer": {"state": {0: {"exp_avg": torch.tensor([1.0, float("nan")])}}},
            },
            tmp_path / "ok.pt",
        )
    assert (tmp_path / "ok.pt").read_bytes() == before
    assert not list(tmp_path.glob(".ok.pt.*.tmp"))


def test_alignprop_runs_at_any_step_count_and_takes_its_window_from_the_cli(assets, tmp_path, capsys):
    Run(_config(assets, tmp_path / "a", method="alignprop", method_options={}, steps=1)).train()  # 4 steps
    from easytune.cli import main

    common = [
        "--method",
        "alignprop",
        "--data",
        str(assets["data"]),
        "--base",
        str(assets["base"]),
        "--reward",
        str(assets["reward"]),
        "--inference-steps",
        "4",
        "--steps",
        "1",
        "--batch-size",
        "2",
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert main(["finetune", "--out", str(tmp_path / "b"), "--low", "2", "--high", "3", *common]) == 0
    assert main(["finetune", "--out", str(tmp_path / "c"), "--mean", "nan", *common]) == 2
    assert "AlignProp: mean must be a finite number" in capsys.readouterr().err


# ---------------------------------------------------- issue 15: the config dataclass is the command line
def _finetune_flags(assets, out) -> list[str]:
    return [
        "finetune", "--method", "easytune-2", "--weighting", "late", "--base", str(assets["base"]),
        "--reward", str(assets["reward"]), "--data", str(assets["data"]), "--out", str(out), "--steps", "3",
        "--batch-size", "2", "--lr", "1e-3", "--warmup", "1", "--inference-steps", "4", "--ckpt-every", "1",
        "--seed", "5", "--device", "cpu", "--no-progress", "--max-grad-norm", "0.5",
    ]  # fmt: skip


def test_a_config_file_and_the_same_flags_give_identical_runs(assets, tmp_path):
    from easytune.cli import main
    from easytune.generation import load_pipeline

    assert main(_finetune_flags(assets, tmp_path / "flags")) == 0
    saved = tmp_path / "flags" / "config.yaml"
    text = saved.read_text()
    assert "method: easytune" in text and "k: 2" in text and "weighting: late" in text
    assert "resume" not in text and "overwrite" not in text  # per-invocation actions are not saved
    # The saved config alone repeats the run (only --out differs) ...
    assert main(["finetune", "--config", str(saved), "--out", str(tmp_path / "file"), "--no-progress"]) == 0
    # ... and a hand-written file with flags overriding some of its values gives the run too.
    (tmp_path / "mine.yaml").write_text(
        f"method: draft\nmethod_options: {{k: 2, weighting: late}}\nbase: {assets['base']}\n"
        f"reward: {assets['reward']}\ndata: {assets['data']}\nsteps: 3\nbatch_size: 2\nlr: 0.5\n"
        "warmup: 1\nnum_inference_steps: 4\nseed: 5\nmax_grad_norm: 0.5\n"
    )
    argv = ["finetune", "--config", str(tmp_path / "mine.yaml"), "--method", "easytune", "--lr", "1e-3",
            "--out", str(tmp_path / "mixed"), "--device", "cpu", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    runs = ["flags", "file", "mixed"]
    metrics = {r: (tmp_path / r / "metrics.jsonl").read_text().splitlines() for r in runs}
    strip = [[{k: v for k, v in json.loads(line).items() if "time" not in k and "seconds" not in k}
              for line in metrics[r]] for r in runs]  # fmt: skip
    assert len(strip[0]) == 3 and strip[0] == strip[1] == strip[2]
    weights = [load_pipeline(tmp_path / r / "model.pt").model.state_dict() for r in runs]
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]) and torch.equal(value, weights[2][name]), name


@pytest.mark.parametrize(
    "text,message",
    [
        ("lr: [1, 2]\n", "lr must be"),
        ("learning_rate: 1e-3\n", r"unknown keys \['learning_rate'\]"),
        ("- a\n- b\n", "expected a mapping"),
        ("steps: 2.5\n", "steps must be"),
        ("method: dpo\n", "method must be one of"),
        ("method_options: {k: 2, weighting: sideways}\n", "--weighting of --method easytune must be one of"),
        ("method: draft\nmethod_options: {weighting: early}\n", "--weighting does not apply to --method"),
        ("!!python/object/apply:os.system ['echo pwned']\n", "not valid YAML"),
        ("steps: [\n", "not valid YAML"),
    ],
)
def test_a_bad_config_file_is_refused_naming_the_file_and_key(tmp_path, capsys, text, message):
    from easytune.cli import main

    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["finetune", "--config", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err, err
    assert str(path) in err or "method" in message
    assert not (tmp_path / "o").exists()


def test_every_config_field_is_an_option_with_its_default_in_help(capsys):
    import dataclasses

    from easytune.cli import main
    from easytune.config import flag_of

    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(FinetuneConfig):
        if f.metadata.get("cli", True):
            flag = flag_of(f) if f.default is not True else "--no-" + flag_of(f)[2:]
            assert flag in text, flag
    assert "--steps STEPS trajectories (default: 100)" in text
    assert "--method METHOD" in text and "--k K" in text
    assert "--weighting {uniform,early,late,snr,gradnorm}" in text


def test_the_run_directory_has_metrics_tensorboard_config_and_sample_gifs(assets, tmp_path):
    """Issue 16: metrics.jsonl, TensorBoard scalars equal to it, config.yaml, and at each evaluation GIFs of
    fixed prompts (RUN_DIR/samples) with a frame strip in TensorBoard."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from easytune.training.tracking import read_metrics

    cfg = _config(assets, tmp_path, steps=4, evaluator="default", eval_every=2, sample_prompts=2)
    Run(cfg, lambda pipe, step: {"score": float(step)}).train()
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and [r.get("eval/score") for r in rows] == [
        None,
        2,
        None,
        4,
    ]
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "scalars": 0}).Reload()
    assert [(e.step, e.value) for e in events.Scalars("reward")] == [
        (r["step"], pytest.approx(r["reward"])) for r in rows
    ]
    assert [e.step for e in events.Images("samples")] == [2, 4]
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == [
        "step_000002.gif", "step_000002.png", "step_000004.gif", "step_000004.png",
    ]  # fmt: skip
    assert "method: easytune" in (tmp_path / "config.yaml").read_text()


def test_a_composite_reward_logs_each_term_and_trains_on_their_weighted_sum(assets, tmp_path):
    """Issue 17: --reward-term spl --reward-term foot_skate:0.5 --reward-term jitter:2: the trainer's reward
    is the weighted sum of the terms, each logged (trainer stats, metrics.jsonl)."""
    from easytune.cli import build_parser
    from easytune.cli.finetune import config_from_args
    from easytune.training.tracking import read_metrics

    terms = ("spl", "foot_skate:0.5", "jitter:2")
    Run(_config(assets, tmp_path, steps=2, reward_terms=terms)).train()
    rows = read_metrics(tmp_path)
    for row in rows:
        total = row["reward/spl"] + 0.5 * row["reward/foot_skate"] + 2 * row["reward/jitter"]
        assert row["reward"] == pytest.approx(total, rel=1e-5, abs=1e-6)
        assert row["reward/foot_skate"] <= 0 and row["reward/jitter"] <= 0
    args = build_parser().parse_args(["finetune", "--reward-term", "spl", "--reward-term", "foot_skate:0.5"])
    assert config_from_args(args).reward_terms == ("spl", "foot_skate:0.5")
    with pytest.raises(ConfigError, match="--reward-term"):
        _config(assets, tmp_path / "x", reward_terms=("spl", "skating"))


@pytest.mark.parametrize(
    "method, options",
    [
        ("easytune", {"k": 2}),
        ("easytune", {"k": 2, "variant": "chain"}),
        ("draft", {"k": 2}),
        ("draft-lv", {"n": 2}),
        ("refl", {"m": 2}),
        ("drtune", {"k": 2, "m": 2}),
        ("alignprop", {}),
    ],
)
def test_the_embedded_flow_model_fine_tunes_with_every_method(assets, tmp_path, method, options):
    """Issue 17: ``--base default-flow`` (the embedded flow-matching MLD) end to end with every method: finite
    losses, updates that move the denoiser, an exported model that samples with the flow scheduler."""
    from easytune.diffusion import FlowMatchEulerDiscreteScheduler

    cfg = _config(
        assets, tmp_path / "run", base="default-flow", reward="default", method=method, method_options=options
    )
    run = Run(cfg)
    assert isinstance(run.pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    before = {k: v.clone() for k, v in run.pipe.trainable.state_dict().items()}
    rows = run.train()
    assert len(rows) == 4 and all(
        row["updates"] >= 1 and torch.isfinite(torch.tensor(row["loss"])) for row in rows
    )
    after = run.pipe.trainable.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    pipe = load_pipeline(run.export())
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    assert torch.isfinite(torch.as_tensor(pipe.sample(["a person walks"], [40], steps=4)[0])).all()
