"""The shared training loop (``easytune.training.loop``): the fit loop's checkpoint schedule and time budget,
the update's guards, random state round trips, and exact resume of the stages that had no kill test
(reward stage 1, SPL, evaluator; pretraining and fine-tuning have theirs in their own test files)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from motion_data import write_random_motions

from easytune.data.humanml import MotionDataset
from easytune.errors import CheckpointError, ConfigError, NonFiniteLossError
from easytune.training.evaluator import EvaluatorTrainConfig, train_evaluator
from easytune.training.loop import SeededBatches, fit, restore_rng, rng_state, update
from easytune.training.reward import RewardTrainConfig, train_reward_model

log = logging.getLogger("test")
TEXT = "builtin:token_dim=16,sentence_dim=16"


class _Killed(Exception):
    pass


def _fit(steps, start=0, ckpt_every=3, **kw):
    saved, ran = [], []

    def step(s):
        ran.append(s)
        return {"loss": torch.tensor(float(s)), "lr": 0.5}

    result = fit(
        step,
        start=start,
        steps=steps,
        save=saved.append,
        ckpt_every=ckpt_every,
        log=log,
        desc="test",
        show_progress=False,
        **kw,
    )
    return result, saved, ran


def test_fit_saves_every_ckpt_every_steps_and_at_the_end():
    result, saved, ran = _fit(7)
    assert ran == [1, 2, 3, 4, 5, 6, 7] and saved == [3, 6, 7] and result.last == 7
    assert result.series("loss") == [(s, float(s)) for s in range(1, 8)]
    assert result.history[0][1] == {"loss": 1.0, "lr": 0.5}  # tensors read as floats, order kept
    result, saved, ran = _fit(6, start=3)
    assert ran == [4, 5, 6] and saved == [6]  # no double save of the last step
    with pytest.raises(ConfigError, match="already at step 6 of 6"):
        _fit(6, start=6)


def test_fit_time_budget_stops_before_a_step_and_saves_what_ran():
    clock = iter([0.0, 1.0, 2.5, 9.0])
    result, saved, ran = _fit(10, time_budget=2.0, clock=lambda: next(clock))
    assert ran == [1, 2] and saved == [2] and result.last == 2


def test_fit_logs_window_means(caplog):
    with caplog.at_level(logging.INFO, logger="test"):
        _fit(4, log_every=2)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "step 2/4 loss=1.5 lr=0.5" in lines[0] and "step 4/4 loss=3.5" in lines[1]


def test_update_refuses_non_finite_loss_and_gradient_before_stepping():
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(NonFiniteLossError, match="toy loss is not finite at step 4"):
        update(model(torch.full((1, 3), float("nan"))).sum(), opt, model, what="toy", step=4)
    grad_inf = torch.sqrt(model.weight - model.weight.detach()).sum()  # loss 0, d/dw sqrt(0) = inf
    assert grad_inf.item() == 0.0
    with pytest.raises(NonFiniteLossError, match="toy gradient norm is not finite at step 6"):
        update(grad_inf, opt, model, what="toy", step=6, max_grad_norm=1.0)
    for p, p0 in zip(model.parameters(), before):
        assert torch.equal(p, p0)


def test_rng_state_round_trip_and_legacy_formats():
    gen = torch.Generator().manual_seed(3)
    state = rng_state({"noise": gen})
    expected = (torch.rand(2), torch.rand(2, generator=gen))
    torch.manual_seed(99), gen.manual_seed(99)
    restore_rng(state, {"noise": gen}, "x.pt")
    assert torch.equal(torch.rand(2), expected[0]) and torch.equal(torch.rand(2, generator=gen), expected[1])
    # pretraining / reward checkpoints before the shared loop: {"torch", "generator" | "noise"}
    legacy = {"torch": state["torch"], "generator": state["generators"]["noise"]}
    restore_rng(legacy, {"noise": gen}, "old.pt")
    assert torch.equal(torch.rand(2, generator=gen), expected[1])
    restore_rng(state["torch"], {}, "old-finetune.pt")  # fine-tuning: the bare global state
    assert torch.equal(torch.rand(2), expected[0])
    with pytest.raises(CheckpointError, match=r"x.pt: the saved random state has no generator \['other'\]"):
        restore_rng(state, {"other": gen}, "x.pt")


def test_seeded_batches_are_length_bucketed_and_a_pure_function_of_the_step(tmp_path):
    root = write_random_motions(tmp_path / "d", [40 + 7 * (i % 9) for i in range(40)], [("a walk",)] * 40)
    ds = MotionDataset(root, "train")
    plain, bucketed = SeededBatches(ds, 4, 1), SeededBatches(ds, 4, 1, bucket_pool=5)
    spread = [
        max(ds.lengths[i] for i in b.indices(s)) - min(ds.lengths[i] for i in b.indices(s))
        for b in (plain, bucketed)
        for s in range(10)
    ]
    assert sum(spread[10:]) < sum(spread[:10])
    order = [bucketed.indices(s) for s in (12, 3, 11)]  # across epochs and back
    assert order == [SeededBatches(ds, 4, 1, bucket_pool=5).indices(s) for s in (12, 3, 11)]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    caps = ["a person walks", "someone jumps", "a man waves", "a person squats", "someone spins"]
    return write_random_motions(
        tmp_path_factory.mktemp("loopdata"),
        [40 + 3 * (i % 6) for i in range(15)],
        [(caps[i % 5], f"{caps[i % 5]} slowly") for i in range(15)],
    )


def _reward_run(data_root, out, stage, on_step, resume=False):
    from easytune.models.reward import build_reward_model

    torch.manual_seed(0)
    model = build_reward_model(
        "tiny",
        text_encoder=TEXT,
        mode="M1T0",
        latent_dim=16,
        ff_size=32,
        num_layers=1,
        time_channels=8,
        max_len=64,
    )
    cfg = RewardTrainConfig(
        steps=6,
        batch_size=4,
        noise_prob=0.5,
        ckpt_every=2,
        log_every=3,
        spl_weight=1e-2 if stage == "spl" else 0.0,
        bucket_pool=2,
    )
    ds = MotionDataset(data_root, "train", seed=0)
    train_reward_model(model, ds, cfg, out, stage=stage, on_step=on_step, resume=resume)


def _evaluator_run(data_root, out, stage, on_step, resume=False):
    cfg = EvaluatorTrainConfig(
        steps=6, batch_size=4, ckpt_every=2, log_every=3, text_encoder=TEXT, bucket_pool=2
    )
    train_evaluator(data_root, out, cfg, on_step=on_step, resume=resume)


@pytest.mark.parametrize(
    "run, stage", [(_reward_run, "stage1"), (_reward_run, "spl"), (_evaluator_run, "evaluator")]
)
def test_a_run_killed_after_a_checkpoint_resumes_with_the_same_losses(data_root, tmp_path, run, stage):
    full: list = []
    run(data_root, tmp_path / "full.pt", stage, lambda s, stats: full.append((s, stats)))
    assert [s for s, _ in full] == [1, 2, 3, 4, 5, 6]

    def kill_at_5(s, stats):
        if s == 5:  # after the checkpoint of step 4, before that of step 6
            raise _Killed

    with pytest.raises(_Killed):
        run(data_root, tmp_path / "killed.pt", stage, kill_at_5)
    assert torch.load(tmp_path / "killed.pt", weights_only=True)["step"] == 4
    resumed: list = []
    run(data_root, tmp_path / "killed.pt", stage, lambda s, stats: resumed.append((s, stats)), resume=True)
    assert resumed == full[4:], "a resumed run must reproduce the uninterrupted losses exactly"
    a = torch.load(tmp_path / "full.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "killed.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_every_single_checkpoint_trainer_writes_its_run_directory(data_root, tmp_path):
    """Issue 16: pretraining, reward training and evaluator training log like fine-tuning: OUT.logs/ holds
    metrics.jsonl, TensorBoard scalars equal to it and config.yaml."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from easytune.training.pretrain import PretrainOptions, pretrain
    from easytune.training.tracking import read_metrics, run_dir_of

    runs = {"reward.pt": "total", "evaluator.pt": "loss", "vae.pt": "loss"}
    _reward_run(data_root, tmp_path / "reward.pt", "stage1", None)
    _evaluator_run(data_root, tmp_path / "evaluator.pt", "evaluator", None)
    opts = dict(steps=3, batch_size=4, ckpt_every=2, show_progress=False, skip_data_check=True)
    pretrain(PretrainOptions(stage="vae", data=str(data_root), out=str(tmp_path / "vae.pt"), **opts))
    for name, key in runs.items():
        logs = run_dir_of(tmp_path / name)
        rows = read_metrics(logs)
        assert [r["step"] for r in rows] == list(range(1, len(rows) + 1)) and len(rows) in (3, 6), name
        events = EventAccumulator(str(logs / "tb"), size_guidance={"scalars": 0}).Reload()
        got = [(e.step, e.value) for e in events.Scalars(key)]
        assert got == [(r["step"], pytest.approx(r[key])) for r in rows], name
        assert "seed: 0" in (logs / "config.yaml").read_text()


def test_a_resumed_run_logs_each_step_once(data_root, tmp_path):
    """The lines a killed run logged after its last checkpoint are dropped when it resumes."""
    from easytune.training.tracking import read_metrics, run_dir_of

    def kill_at_5(s, stats):
        if s == 5:
            raise _Killed

    _reward_run(data_root, tmp_path / "full.pt", "stage1", None)
    with pytest.raises(_Killed):
        _reward_run(data_root, tmp_path / "k.pt", "stage1", kill_at_5)
    assert [r["step"] for r in read_metrics(run_dir_of(tmp_path / "k.pt"))] == [1, 2, 3, 4, 5]
    _reward_run(data_root, tmp_path / "k.pt", "stage1", None, resume=True)
    assert read_metrics(run_dir_of(tmp_path / "k.pt")) == read_metrics(run_dir_of(tmp_path / "full.pt"))


def test_wandb_missing_is_named(tmp_path, monkeypatch):
    import builtins

    from easytune.training.tracking import RunLog

    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("no wandb")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    with pytest.raises(ConfigError, match="--wandb proj: the wandb package is not installed"):
        RunLog(tmp_path / "r", wandb="proj")
