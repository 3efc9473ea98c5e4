"""Reward model training: stage 1 (TMR-style retrieval training), stage 2 SPL, and retrieval evaluation.

Stage 1 loss (the SPM / TMR-style retrieval objective), per batch of (motion, caption) pairs:

    SmoothL1(decode(z_text), x) + SmoothL1(decode(z_motion), x)                     reconstructions
    + 1e-5 * [KL(q_t | q_m) + KL(q_m | q_t) + KL(q_m | N(0, I)) + KL(q_t | N(0, I))]
    + 1e-5 * SmoothL1(z_motion, z_text)                                              latent matching
    + 0.1 * symmetric InfoNCE(z_text, z_motion; temperature 0.1), negatives whose caption-embedding
      cosine exceeds 2 * 0.9 - 1 masked out

with ``z`` sampled latents. Reconstructions are averaged over VALID frames only and always target the
clean motion (the reference averages over padding too and reconstructs the noised input).
Noise augmentation: each sample is replaced, with probability ``noise_prob``, by the forward diffusion
q(x_t | x_0) (scaled_linear 0.00085..0.012, 1000 steps) at t ~ U{0..max_t}; a time-conditioned model
sees that t (clean samples: t = 0).

Stage 2 (SPL) adds ``spl_weight`` (1e-2) times the self-refinement preference loss (``spl_loss``).
Batches come from a seeded per-epoch permutation, so ``resume`` continues bit-for-bit.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from easytune import metrics
from easytune.checkpoint import (
    check_output_file,
)
from easytune.errors import ConfigError
from easytune.models.reward import RewardModel, build_reward_model
from easytune.train_utils import seed_everything
from easytune.training.loop import SeededBatches, fit, resume_training, save_training, update
from easytune.training.reward_config import (
    NOISE_SCHEDULE,
    RewardTrainConfig,
)
from easytune.training.tracking import run_dir_of

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ losses
def gaussian_kl(q: tuple[torch.Tensor, torch.Tensor], p: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean over elements of KL(N(mu_q, exp(lv_q)) || N(mu_p, exp(lv_p))) for diagonal Gaussians."""
    (mu_q, lv_q), (mu_p, lv_p) = q, p
    ratio = lv_q - lv_p
    return 0.5 * (ratio.exp() + (mu_p - mu_q).pow(2) / lv_p.exp() - 1.0 - ratio).mean()


def filtered_info_nce(
    text: torch.Tensor,
    motion: torch.Tensor,
    sentence: torch.Tensor | None,
    temperature: float,
    threshold: float | None,
) -> torch.Tensor:
    """Symmetric InfoNCE over cosine similarities [B, B] / temperature (text rows, motion columns).

    Off-diagonal pairs whose sentence-embedding cosine exceeds ``2 * threshold - 1`` (near-duplicate
    captions) are masked out as negatives; None disables the filter.
    """
    sim = F.normalize(text, dim=-1) @ F.normalize(motion, dim=-1).T / temperature
    if sentence is not None and threshold is not None:
        s = F.normalize(sentence.float(), dim=-1)
        selfsim = s @ s.T
        eye = torch.eye(len(sim), dtype=torch.bool, device=sim.device)
        sim = sim.masked_fill((selfsim > 2 * threshold - 1) & ~eye, float("-inf"))
    labels = torch.arange(len(sim), device=sim.device)
    return 0.5 * (F.cross_entropy(sim, labels) + F.cross_entropy(sim.T, labels))


def spl_loss(
    text_mu: torch.Tensor,
    motion_mu: torch.Tensor,
    *,
    topk: int = 10,
    temperature: float = 0.1,
    high_sim: float | None = None,
    double_temperature: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-refinement preference loss on latent means [B, D]; returns (loss, failed [B] bool).

    For text ``i``, retrieve over the batch's motions by cosine. ``failed``: the ground truth is not in
    the top ``min(topk, B)`` (and, with ``high_sim``, no similarity in the row exceeds it). Preference pair
    (ground truth, top-1 retrieved): the 2-way softmax of their similarities / temperature is pushed by
    KL(target || p) toward (1, 0) when failed and (0.5, 0.5) otherwise; mean over texts.
    """
    sim = F.normalize(text_mu, dim=-1) @ F.normalize(motion_mu, dim=-1).T
    b = sim.shape[0]
    with torch.no_grad():
        top = sim.topk(min(topk, b), dim=1).indices
        gt = torch.arange(b, device=sim.device)
        correct = (top == gt[:, None]).any(1)
        if high_sim is not None:
            correct |= (sim > high_sim).any(1)
        failed = ~correct
        target = torch.where(failed[:, None], sim.new_tensor([1.0, 0.0]), sim.new_tensor([0.5, 0.5]))
    scale = 1.0 / temperature ** (2 if double_temperature else 1)
    logits = torch.stack([sim.diagonal(), sim.gather(1, top[:, :1]).squeeze(1)], dim=1) * scale
    loss = F.kl_div(F.log_softmax(logits, dim=1), target, reduction="none").sum(1).mean()
    return loss, failed


def _masked_smooth_l1(pred: torch.Tensor, target: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    valid = (torch.arange(target.shape[1], device=target.device)[None] < lengths[:, None]).to(target.dtype)
    per = F.smooth_l1_loss(pred, target, reduction="none").mean(-1)
    return (per * valid).sum() / valid.sum()


def reward_losses(
    model: RewardModel,
    clean: torch.Tensor,
    noisy: torch.Tensor,
    lengths: torch.Tensor,
    text_emb: Any,
    timesteps: torch.Tensor,
    cfg: RewardTrainConfig,
) -> dict[str, torch.Tensor]:
    """All loss terms for one batch (model in train mode); ``"total"`` is the weighted sum.

    ``clean`` / ``noisy``: [B, T, nfeats] (equal when not augmented); ``timesteps`` int64 [B] of ``noisy``;
    ``text_emb``: the text encoder's ``TextEmbedding`` of the captions.
    """
    c = model.config
    m_mu, m_lv = model.encode_motion(noisy, lengths, timesteps if c.motion_time else None)
    t_mu, t_lv = model.encode_text_tokens(text_emb.tokens, text_emb.mask, timesteps if c.text_time else None)
    m_z = m_mu + cfg.sample_scale * torch.randn_like(m_mu) * (0.5 * m_lv).exp()
    t_z = t_mu + cfg.sample_scale * torch.randn_like(t_mu) * (0.5 * t_lv).exp()
    frames = clean.shape[1]
    recons = _masked_smooth_l1(model.decode(t_z, lengths, frames), clean, lengths) + _masked_smooth_l1(
        model.decode(m_z, lengths, frames), clean, lengths
    )
    ref = (torch.zeros_like(m_mu), torch.zeros_like(m_lv))
    kl = (
        gaussian_kl((t_mu, t_lv), (m_mu, m_lv))
        + gaussian_kl((m_mu, m_lv), (t_mu, t_lv))
        + gaussian_kl((m_mu, m_lv), ref)
        + gaussian_kl((t_mu, t_lv), ref)
    )
    latent = F.smooth_l1_loss(m_z, t_z)
    contrastive = filtered_info_nce(t_z, m_z, text_emb.sentence, cfg.temperature, cfg.filter_threshold)
    total = (
        cfg.lambda_recons * recons
        + cfg.lambda_kl * kl
        + cfg.lambda_latent * latent
        + cfg.lambda_contrastive * contrastive
    )
    out = {"recons": recons, "kl": kl, "latent": latent, "contrastive": contrastive}
    if cfg.spl_weight > 0:
        spl, failed = spl_loss(
            t_mu,
            m_mu,
            topk=cfg.spl_topk,
            temperature=cfg.temperature,
            high_sim=cfg.spl_high_sim,
            double_temperature=cfg.spl_double_temperature,
        )
        total = total + cfg.spl_weight * spl
        out.update(spl=spl, spl_failed=failed.float().mean())
    out["total"] = total
    return out


# ------------------------------------------------------------------------------------------------ data
def noise_augment(
    motion: torch.Tensor, prob: float, max_t: int, generator: torch.Generator, scheduler: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, with probability ``prob``, forward-diffuse to t ~ U{0..max_t}; returns (motion', t [B]),
    t = 0 for untouched samples."""
    b = motion.shape[0]
    pick = torch.rand(b, generator=generator) < prob
    t = torch.randint(0, max_t + 1, (b,), generator=generator) * pick
    noise = torch.randn(motion.shape, generator=generator).to(motion)
    noisy = scheduler.add_noise(motion, noise, t.to(motion.device))
    return torch.where(pick.to(motion.device)[:, None, None], noisy, motion), t.to(motion.device)


def noise_scheduler():
    from easytune.diffusion import DDPMScheduler

    return DDPMScheduler(**NOISE_SCHEDULE)


def train_reward_model(
    model: RewardModel,
    train_set: Any,
    cfg: RewardTrainConfig,
    out: str | os.PathLike,
    *,
    stage: str,
    resume: bool = False,
    meta: dict[str, Any] | None = None,
    collate: Callable | None = None,
    device: str | torch.device = "cpu",
    show_progress: bool = False,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    wandb: str | None = None,
) -> RewardModel:
    """Run the training loop on ``model`` (stage 1 or SPL per ``cfg``) and write ``out`` atomically.

    ``out`` holds the easytune reward checkpoint plus ``optimizer``, ``step``, ``rng`` and the training
    config, rewritten every ``ckpt_every`` steps; with ``resume`` an existing ``out`` is continued
    (same config required, ``steps`` may grow). ``on_step(step, losses)`` runs after every step (steps
    count from 1), before its checkpoint. The run's metrics, TensorBoard events and config go to
    ``OUT.logs/`` (``easytune.training.tracking``; ``wandb``: a project). Raises ``NonFiniteLossError`` on a
    NaN/inf loss.
    """
    out = Path(out)
    device = torch.device(device)
    seed_everything(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = 0
    if resume and out.is_file():
        start = resume_training(out, model, opt, {"noise": gen}, asdict(cfg), stage)
        log.info("resuming %s from step %d", out, start)
    sched = noise_scheduler()
    meta = {**(meta or {}), "stage": stage, "train_config": asdict(cfg)}

    def save(step: int) -> None:
        save_training(out, model, opt, {"noise": gen}, meta, step)

    batches = SeededBatches(train_set, cfg.batch_size, cfg.seed, collate=collate, bucket_pool=cfg.bucket_pool)

    def step(s: int) -> dict[str, torch.Tensor]:
        batch = batches(s - 1)
        clean = batch["motion"].to(device)
        lengths = batch["lengths"].to(device)
        noisy, t = noise_augment(clean, cfg.noise_prob, cfg.max_t, gen, sched)
        emb = model.embed_captions(batch["caption"], device=device)
        losses = reward_losses(model, clean, noisy, lengths, emb, t, cfg)
        what = f"{stage} reward training"
        update(losses["total"], opt, model, what=what, step=s, max_grad_norm=cfg.max_grad_norm)
        return {k: v.detach() for k, v in losses.items()}

    fit(
        step,
        start=start,
        steps=cfg.steps,
        save=save,
        ckpt_every=cfg.ckpt_every,
        log=log,
        desc=f"reward {stage}",
        log_every=cfg.log_every,
        show_progress=show_progress,
        on_step=on_step,
        run_dir=run_dir_of(out),
        run_config=cfg,
        wandb=wandb,
        keep=(),  # the rows go to the run log; a long run holds none in memory
    )
    return model


def train_stage1(
    data: str | os.PathLike,
    out: str | os.PathLike,
    cfg: RewardTrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    device: str | torch.device = "cpu",
    show_progress: bool = False,
    wandb: str | None = None,
) -> RewardModel:
    """``easytune reward train``: a fresh ``cfg.preset`` model trained with the stage-1 loss on ``data``."""
    if cfg.spl_weight:
        raise ConfigError("stage 1 (reward train) takes no SPL term; use `easytune reward refine`")
    check_output_file(out, resume=resume, overwrite=overwrite)
    overrides = {} if cfg.text_encoder is None else {"text_encoder": cfg.text_encoder}
    seed_everything(cfg.seed)
    model = build_reward_model(cfg.preset, mode=cfg.mode, **overrides)
    from easytune.data.humanml import MotionDataset

    train = MotionDataset(data, "train", seed=cfg.seed)
    return train_reward_model(
        model,
        train,
        cfg,
        out,
        stage="stage1",
        resume=resume,
        meta={"data": str(data)},
        device=device,
        show_progress=show_progress,
        wandb=wandb,
    )


def refine_spl(
    init: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    cfg: RewardTrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    device: str | torch.device = "cpu",
    show_progress: bool = False,
    wandb: str | None = None,
) -> RewardModel:
    """``easytune reward refine``: SPL stage 2 from the stage-1 checkpoint ``init`` (its architecture is
    kept; ``cfg.mode`` and ``cfg.text_encoder`` are taken from it)."""
    check_output_file(out, resume=resume, overwrite=overwrite)
    if cfg.spl_weight == 0:
        log.warning("spl_weight=0: no SPL term, a plain stage-1 continuation (the control run for SPL)")
    model = RewardModel.from_checkpoint(init, freeze=False)
    cfg = dataclasses.replace(cfg, mode=model.config.mode, text_encoder=model.config.text_encoder)
    from easytune.data.humanml import MotionDataset

    train = MotionDataset(data, "train", seed=cfg.seed)
    return train_reward_model(
        model,
        train,
        cfg,
        out,
        stage="spl",
        resume=resume,
        meta={"data": str(data), "init": str(init)},
        device=device,
        show_progress=show_progress,
        wandb=wandb,
    )


# ------------------------------------------------------------------------------------------------ eval
@torch.no_grad()
def encode_split(
    model: RewardModel,
    dataset: Any,
    *,
    noise_t: int | None = None,
    batch_size: int = 64,
    seed: int = 0,
    collate: Callable | None = None,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Latent means of every (caption, motion) of ``dataset``: (text [N, D], motion [N, D], captions).

    ``noise_t``: forward-diffuse every motion to step ``noise_t`` (seeded) before encoding; a
    time-conditioned model is told that step.
    """
    if collate is None:
        from easytune.data.humanml import collate_motion as collate
    was_training = model.training
    model.eval()
    sched = noise_scheduler()
    gen = torch.Generator().manual_seed(seed)
    c = model.config
    texts, motions, captions = [], [], []
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        x = batch["motion"].to(device)
        lengths = batch["lengths"].to(device)
        t = None
        if noise_t is not None:
            t = torch.full((x.shape[0],), int(noise_t), dtype=torch.long)
            x = sched.add_noise(x, torch.randn(x.shape, generator=gen).to(x), t.to(device))
        emb = model.embed_captions(batch["caption"], device=device)
        motions.append(model.encode_motion(x, lengths, t if c.motion_time else None)[0].cpu())
        texts.append(model.encode_text_tokens(emb.tokens, emb.mask, t if c.text_time else None)[0].cpu())
        captions.extend(batch["caption"])
    model.train(was_training)
    return torch.cat(texts).numpy(), torch.cat(motions).numpy(), captions


def evaluate_retrieval(
    text: np.ndarray, motion: np.ndarray, *, group_size: int = 32, shuffles: int = 1, seed: int = 0
) -> dict[str, Any]:
    """``{"full": retrieval over all pairs, "grouped": within seeded groups of ``group_size``, pooled over
    ``shuffles`` shuffles}``; the group size shrinks to the number of pairs (with a log line) when the
    split is smaller."""
    n = len(text)
    if n < group_size:
        log.warning("test split has %d pairs, fewer than a group of %d: using groups of %d", n, group_size, n)
        group_size = n
    return {
        "full": metrics.retrieval_metrics(text, motion),
        "grouped": metrics.grouped_retrieval_metrics(
            text, motion, group_size=group_size, seed=seed, shuffles=shuffles
        ),
    }
