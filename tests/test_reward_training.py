"""Reward training: stage-1 / SPL loss terms against hand references, noise augmentation, exact resume,
the NaN guard, and the ``easytune reward`` commands end to end on a tiny on-disk dataset."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from easytune.cli import main
from easytune.data.humanml import MotionDataset, collate_motion, write_clip, write_mean_std, write_split
from easytune.errors import ConfigError, NonFiniteLossError
from easytune.models.reward import RewardModel, build_reward_model
from easytune.text import build_text_encoder
from easytune.training.loop import SeededBatches, epoch_batches
from easytune.training.reward import (
    RewardTrainConfig,
    filtered_info_nce,
    gaussian_kl,
    noise_augment,
    noise_scheduler,
    spl_loss,
    train_reward_model,
)

ACTIONS = ["walks", "jumps", "waves", "kicks", "sits", "spins"]


def make_dataset(root, n_train=24, n_test=12, seed=0):
    """Clips whose feature pattern is set by the action named in the caption."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(len(ACTIONS), 263))
    ids = {"train": [], "test": []}
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            a = i % len(ACTIONS)
            t = int(rng.integers(40, 56))
            phase = np.linspace(0, 2 * np.pi * (1 + a % 3), t)[:, None]
            feats = np.sin(phase) * basis[a] + 0.3 * rng.normal(size=(t, 263))
            clip = f"{split}{i:03d}"
            write_clip(root, clip, feats, [f"a person {ACTIONS[a]}", f"someone {ACTIONS[a]} slowly"])
            ids[split].append(clip)
        write_split(root, split, ids[split])
    write_mean_std(root, np.zeros(263), np.ones(263))
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("rewarddata"))


@pytest.fixture(scope="module")
def text_encoder():
    return build_text_encoder("builtin:token_dim=16,sentence_dim=16")


def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu_q, lv_q, mu_p, lv_p = (torch.randn(4, 5, generator=g) for _ in range(4))
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu_q, (0.5 * lv_q).exp()),
        torch.distributions.Normal(mu_p, (0.5 * lv_p).exp()),
    ).mean()
    torch.testing.assert_close(gaussian_kl((mu_q, lv_q), (mu_p, lv_p)), ref)


def test_info_nce_filtering_masks_near_duplicate_captions():
    g = torch.Generator().manual_seed(0)
    text, motion = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    sim = F.normalize(text, dim=-1) @ F.normalize(motion, dim=-1).T / 0.1
    labels = torch.arange(4)
    plain = 0.5 * (F.cross_entropy(sim, labels) + F.cross_entropy(sim.T, labels))
    torch.testing.assert_close(filtered_info_nce(text, motion, None, 0.1, 0.9), plain)
    sentence = torch.eye(4)
    sentence[1] = sentence[0] + 0.01  # captions 0 and 1 are near-duplicates (cosine > 0.8)
    masked = sim.clone()
    masked[0, 1] = masked[1, 0] = float("-inf")
    ref = 0.5 * (F.cross_entropy(masked, labels) + F.cross_entropy(masked.T, labels))
    torch.testing.assert_close(filtered_info_nce(text, motion, sentence, 0.1, 0.9), ref)


def test_spl_loss_hand_example():
    s2 = math.sqrt(2)
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1 / s2, 1 / s2]])
    motion = torch.tensor([[1.0, 0.0], [1.0, 0.2], [0.0, 1.0]])
    c = 1 / math.sqrt(1.04)  # cosine of (1, 0.2) with (1, 0)
    # text 0: best motion is its own -> correct, logits equal -> KL(0.5,0.5 || 0.5,0.5) = 0.
    # text 1: sims (0, 0.2c, 1): top-1 is motion 2 -> failed: -log softmax([0.2c, 1] / 0.1)[0]
    # text 2: sims (1/s2, 1.2c/s2, 1/s2): top-1 is motion 1 -> failed.
    f1 = math.log1p(math.exp((1 - 0.2 * c) / 0.1))
    f2 = math.log1p(math.exp((1.2 * c / s2 - 1 / s2) / 0.1))
    loss, failed = spl_loss(text, motion, topk=1, temperature=0.1)
    assert failed.tolist() == [False, True, True]
    assert loss.item() == pytest.approx((0 + f1 + f2) / 3, rel=1e-5)
    # top-2 window: text 1's own motion is now retrieved (second); text 0 stays correct.
    _, failed2 = spl_loss(text, motion, topk=2, temperature=0.1)
    assert failed2.tolist()[:2] == [False, False]
    # reference variant: any similarity > 0.8 counts as correct -> every target is (0.5, 0.5)
    loss_hs, failed_hs = spl_loss(text, motion, topk=1, temperature=0.1, high_sim=0.8)
    assert not failed_hs.any()

    def half_kl(d):  # KL((.5,.5) || softmax([s_gt, s_top] / T)) with d = s_top - s_gt
        p = torch.softmax(torch.tensor([0.0, d]), 0)
        return float((0.5 * torch.log(0.5 / p)).sum())

    assert loss_hs.item() == pytest.approx(
        (half_kl(10 * (1 - 0.2 * c)) + half_kl(10 * (1.2 * c - 1) / s2)) / 3, rel=1e-5
    )
    loss_dt, _ = spl_loss(text, motion, topk=1, temperature=0.1, double_temperature=True)
    f1d = math.log1p(math.exp((1 - 0.2 * c) / 0.01))
    f2d = math.log1p(math.exp((1.2 * c / s2 - 1 / s2) / 0.01))
    assert loss_dt.item() == pytest.approx((f1d + f2d) / 3, rel=1e-4)


def test_noise_augment_probability_and_forward_diffusion():
    x = torch.randn(6, 10, 263)
    sched = noise_scheduler()
    same, t0 = noise_augment(x, 0.0, 500, torch.Generator().manual_seed(0), sched)
    assert torch.equal(same, x) and not t0.any()
    noisy, t = noise_augment(x, 1.0, 500, torch.Generator().manual_seed(0), sched)
    assert (t >= 0).all() and (t <= 500).all() and len(set(t.tolist())) > 1
    g = torch.Generator().manual_seed(0)
    torch.rand(6, generator=g), torch.randint(0, 501, (6,), generator=g)
    noise = torch.randn(x.shape, generator=g)
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    a = torch.cumprod(1 - betas, 0)[t][:, None, None]
    torch.testing.assert_close(noisy, a.sqrt() * x + (1 - a).sqrt() * noise)


def test_seeded_batches_resume_mid_epoch(data_dir):
    ds = MotionDataset(data_dir, "train")
    full = SeededBatches(ds, 5, 3, collate=collate_motion)
    ids = [full(s)["id"] for s in range(9)]
    resumed = SeededBatches(ds, 5, 3, collate=collate_motion, bucket_pool=0)  # a fresh object, as on resume
    assert [resumed(s)["id"] for s in range(6, 9)] == ids[6:]
    assert len(set(sum(ids[:4], []))) == 20  # epoch 0: 4 batches of 5, no repeats
    with pytest.raises(ConfigError, match="fewer than --batch-size 100"):
        SeededBatches(ds, 100, 0)


def test_epoch_batches_length_buckets():
    lengths = np.random.default_rng(0).integers(40, 200, size=100)
    plain = epoch_batches(100, 8, 1, 0)
    bucketed = epoch_batches(100, 8, 1, 0, lengths, bucket_pool=4)
    assert bucketed == epoch_batches(100, 8, 1, 0, lengths, bucket_pool=4)  # seeded
    for batches in (plain, bucketed):
        flat = sum(batches, [])
        assert len(batches) == 12 and all(len(b) == 8 for b in batches) and len(set(flat)) == 96
    # same items per pool of 4 batches, only regrouped: the padding (max length per batch) shrinks
    assert sorted(sum(plain, [])) == sorted(sum(bucketed, []))

    def padded(batches):
        return sum(8 * lengths[b].max() for b in batches)

    assert padded(bucketed) < 0.85 * padded(plain)
    assert epoch_batches(100, 8, 1, 1) != plain  # a new permutation per epoch


def _tiny(text_encoder, mode="M1T0"):
    torch.manual_seed(0)
    return build_reward_model(
        "tiny",
        text_encoder=text_encoder,
        mode=mode,
        latent_dim=16,
        ff_size=32,
        num_layers=1,
        time_channels=8,
        max_len=64,
    )


def test_training_resume_is_exact_and_nan_guard(tmp_path, data_dir, text_encoder):
    ds = MotionDataset(data_dir, "train")
    cfg = RewardTrainConfig(steps=4, batch_size=6, noise_prob=0.5, spl_weight=1e-2, ckpt_every=2, log_every=1)
    straight = train_reward_model(_tiny(text_encoder), ds, cfg, tmp_path / "a.pt", stage="spl")
    half = RewardTrainConfig(**{**cfg.__dict__, "steps": 2})
    train_reward_model(_tiny(text_encoder), ds, half, tmp_path / "b.pt", stage="spl")
    resumed = train_reward_model(_tiny(text_encoder), ds, cfg, tmp_path / "b.pt", stage="spl", resume=True)
    for k, v in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, atol=0, rtol=0)
    loaded = RewardModel.from_checkpoint(tmp_path / "b.pt", text_encoder=text_encoder)
    assert loaded.config.mode == "M1T0"
    with pytest.raises(ConfigError, match="cannot resume"):
        train_reward_model(
            _tiny(text_encoder),
            ds,
            RewardTrainConfig(**{**cfg.__dict__, "lr": 1.0}),
            tmp_path / "b.pt",
            stage="spl",
            resume=True,
        )

    class Poisoned(torch.utils.data.Dataset):
        def __len__(self):
            return len(ds)

        def __getitem__(self, i):
            item = ds[i]
            item["motion"] = item["motion"] * float("nan")
            return item

    with pytest.raises(NonFiniteLossError, match=r"step 1\b"):
        train_reward_model(_tiny(text_encoder), Poisoned(), cfg, tmp_path / "c.pt", stage="stage1")
    assert not (tmp_path / "c.pt").exists()


def test_cli_train_refine_eval(tmp_path, data_dir, capsys):
    s1, s2, js = tmp_path / "s1.pt", tmp_path / "s2.pt", tmp_path / "eval.json"
    common = ["--data", str(data_dir), "--batch-size", "6", "--steps", "2", "--log-every", "1"]
    assert main(["reward", "train", "--out", str(s1), "--mode", "M1T0", "--noise-prob", "0.5", *common]) == 0
    assert main(["reward", "refine", "--init", str(s1), "--out", str(s2), *common]) == 0
    assert torch.load(s1, weights_only=True)["meta"]["train_config"]["lr"] == 5e-4  # tiny preset default
    meta = torch.load(s2, weights_only=True)["meta"]
    assert meta["stage"] == "spl" and meta["train_config"]["noise_prob"] == 0.5
    from easytune.training.reward_config import REFINE_DEFAULTS

    assert {k: meta["train_config"][k] for k in ("lr", "spl_weight", "spl_topk")} == {
        k: REFINE_DEFAULTS[k] for k in ("lr", "spl_weight", "spl_topk")
    }
    assert REFINE_DEFAULTS["lr"] == 1e-5 and REFINE_DEFAULTS["spl_weight"] == 1e-2
    with pytest.raises(SystemExit):  # the help states the same defaults (it is built without torch)
        main(["reward", "refine", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert (
        f"(default: {REFINE_DEFAULTS['spl_weight']})" in text
        and f"(default: {REFINE_DEFAULTS['spl_topk']})" in text
        and "(default: the --init checkpoint's)" in text
    )
    assert (
        main(
            [
                "reward",
                "eval",
                "--ckpt",
                str(s2),
                "--data",
                str(data_dir),
                "--noise-t",
                "200",
                "--json",
                str(js),
            ]
        )
        == 0
    )
    result = json.loads(js.read_text())
    assert result["grouped"]["group_size"] == 12 and result["full"]["n"] == 12  # 12 test pairs < 32
    assert set(result["grouped"]["t2m"]) == {"R@1", "R@2", "R@3", "R@5", "R@10", "MedR"}
    assert "groups of 12" in capsys.readouterr().out
    assert main(["reward", "refine", "--init", str(s1), "--out", str(s2), "--spl-weight", "-1", *common]) == 2
    # export: weights, config and metadata only; --no-data-path drops the local data and init paths
    shipped = tmp_path / "shipped.pt"
    assert main(["export", str(s2), "--out", str(shipped), "--no-data-path", "--source", "test"]) == 0
    ckpt = torch.load(shipped, weights_only=True)
    assert set(ckpt) == {"state_dict", "config", "meta"}
    assert ckpt["meta"]["stage"] == "spl" and ckpt["meta"]["source"] == "test"
    assert not {"data", "init"} & set(ckpt["meta"]) and {"data", "init"} <= set(meta)
    full = torch.load(s2, weights_only=True)["state_dict"]
    assert all(torch.equal(full[k], v) for k, v in ckpt["state_dict"].items()) and len(full) == len(
        ckpt["state_dict"]
    )


def test_text_encoder_spec_option_builds_that_encoder(tmp_path, data_dir):
    spec = "builtin:token_dim=24,sentence_dim=16"
    assert build_reward_model("tiny", text_encoder=spec).config.text_dim == 24
    out = tmp_path / "r.pt"
    args = ["--data", str(data_dir), "--out", str(out), "--steps", "1", "--batch-size", "6"]
    args += ["--text-encoder", spec]
    assert main(["reward", "train", *args]) == 0
    config = torch.load(out, weights_only=True)["config"]
    assert (config["text_encoder"], config["text_dim"]) == (build_text_encoder(spec).spec, 24)
    assert main(["evaluator", "train", *[a if a != str(out) else str(tmp_path / "e.pt") for a in args]]) == 0
    config = torch.load(tmp_path / "e.pt", weights_only=True)["config"]
    assert (config["text_encoder"], config["text_dim"]) == (build_text_encoder(spec).spec, 24)


def test_reward_and_evaluator_training_refuse_unsafe_outputs_before_training(tmp_path, data_dir, capsys):
    common = ["--data", str(data_dir), "--batch-size", "6", "--steps", "1"]
    existing = tmp_path / "r.pt"
    existing.write_bytes(b"a previous model")
    for command in (["reward", "train"], ["evaluator", "train"]):
        assert main([*command, "--out", str(existing), *common]) == 2
        assert "exists: pass --resume to continue it or --overwrite" in capsys.readouterr().err
        assert main([*command, "--out", str(existing / "under-a-file.pt"), *common]) == 2
        assert "cannot write there" in capsys.readouterr().err
        assert main([*command, "--out", str(tmp_path / "new.pt"), "--lr", "inf", *common]) == 2
        assert "lr" in capsys.readouterr().err and not (tmp_path / "new.pt").exists()
    assert existing.read_bytes() == b"a previous model"
    assert main(["reward", "train", "--out", str(existing), "--overwrite", *common]) == 0


def test_non_finite_weights_after_a_step_stop_reward_and_evaluator_training(
    tmp_path, data_dir, text_encoder, monkeypatch
):
    """Issue 18: an update that makes a weight inf stops the run at that step, naming the tensor."""
    from easytune.errors import NonFiniteError
    from easytune.training.evaluator import EvaluatorTrainConfig, train_evaluator

    for cls in (torch.optim.Adam, torch.optim.AdamW):

        def overflowing_step(self, *args, _real=cls.step, **kwargs):
            out = _real(self, *args, **kwargs)
            with torch.no_grad():
                self.param_groups[0]["params"][-1].fill_(float("nan"))
            return out

        monkeypatch.setattr(cls, "step", overflowing_step)
    ds = MotionDataset(data_dir, "train")
    cfg = RewardTrainConfig(steps=3, batch_size=6, ckpt_every=1, log_every=1)
    with pytest.raises(NonFiniteError, match=r"weight \S+ is not finite after spl reward training step 1\b"):
        train_reward_model(_tiny(text_encoder), ds, cfg, tmp_path / "r.pt", stage="spl")
    assert not (tmp_path / "r.pt").exists()
    ev_cfg = EvaluatorTrainConfig(steps=2, batch_size=6, text_encoder="builtin:token_dim=16,sentence_dim=16")
    with pytest.raises(NonFiniteError, match=r"not finite after evaluator training step 1\b"):
        train_evaluator(data_dir, tmp_path / "e.pt", ev_cfg, train_set=ds)
    assert not (tmp_path / "e.pt").exists()
