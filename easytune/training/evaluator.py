"""Training of the independent evaluator (``easytune evaluator train``) and its ground-truth metrics.

Loss (T2M co-embedding style, Euclidean): for a batch of B matched (caption, motion) pairs with
embeddings t_i, m_j and distances d_ij = |t_i - m_j|,

    mean_i d_ii^2  +  mean_{i != j, kept} max(0, margin - d_ij)^2

over all in-batch negatives (the official evaluator uses one shifted negative per pair); negatives whose
captions are near-duplicates (sentence-embedding cosine > ``2 * filter_threshold - 1``) are not used.
Nothing here shares weights, architecture or loss with the reward model.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from easytune import metrics
from easytune.checkpoint import (
    check_output_file,
)
from easytune.models.evaluator import MotionTextEvaluator, build_evaluator
from easytune.train_utils import seed_everything
from easytune.training.evaluator_config import EvaluatorTrainConfig
from easytune.training.loop import SeededBatches, fit, resume_training, save_training, update
from easytune.training.tracking import run_dir_of

log = logging.getLogger(__name__)


def margin_loss(
    text: torch.Tensor, motion: torch.Tensor, margin: float, negative_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Contrastive margin loss on embeddings [B, E]: positives pulled to distance 0, negatives pushed beyond
    ``margin``. ``negative_mask`` [B, B] bool: True where (i, j), i != j, may serve as a negative."""
    d = torch.cdist(text, motion)
    b = d.shape[0]
    eye = torch.eye(b, dtype=torch.bool, device=d.device)
    neg = ~eye if negative_mask is None else negative_mask & ~eye
    pos = d.diagonal().pow(2).mean()
    hinge = (margin - d).clamp_min(0).pow(2)
    return pos + (hinge * neg).sum() / neg.sum().clamp_min(1)


def train_evaluator(
    data: str | os.PathLike,
    out: str | os.PathLike,
    cfg: EvaluatorTrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    device: str | torch.device = "cpu",
    train_set: Any = None,
    collate: Any = None,
    show_progress: bool = False,
    on_step: Any = None,
    wandb: str | None = None,
) -> MotionTextEvaluator:
    """Train a fresh ``cfg.preset`` evaluator on the train split of ``data`` (or ``train_set``) and write
    ``out`` (atomically, every ``ckpt_every`` steps, with optimizer/step/rng so ``resume`` continues exactly).
    ``on_step(step, {"loss": ...})`` runs after every step (from 1), before its checkpoint."""
    out, device = check_output_file(out, resume=resume, overwrite=overwrite), torch.device(device)
    seed_everything(cfg.seed)
    overrides = {} if cfg.text_encoder is None else {"text_encoder": cfg.text_encoder}
    model = build_evaluator(cfg.preset, **overrides).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    if train_set is None:
        from easytune.data.humanml import MotionDataset

        train_set = MotionDataset(data, "train", seed=cfg.seed)
    start = resume_training(out, model, opt, {}, asdict(cfg)) if resume and out.is_file() else 0
    meta = {"stage": "evaluator", "train_config": asdict(cfg), "data": str(data)}

    def save(step: int) -> None:
        save_training(out, model, opt, {}, meta, step)

    batches = SeededBatches(train_set, cfg.batch_size, cfg.seed, collate=collate, bucket_pool=cfg.bucket_pool)

    def step(s: int) -> dict[str, torch.Tensor]:
        batch = batches(s - 1)
        emb = model.text_model.encode(batch["caption"], device=device)
        text = model.encode_text_tokens(emb.tokens, emb.mask)
        motion = model.encode_motion(batch["motion"].to(device), batch["lengths"].to(device))
        keep = None
        if cfg.filter_threshold is not None:
            s_emb = torch.nn.functional.normalize(emb.sentence.float(), dim=-1)
            keep = (s_emb @ s_emb.T) <= 2 * cfg.filter_threshold - 1
        loss = margin_loss(text, motion, cfg.margin, keep)
        update(loss, opt, model, what="evaluator training", step=s, max_grad_norm=cfg.max_grad_norm)
        return {"loss": loss.detach()}

    fit(
        step,
        start=start,
        steps=cfg.steps,
        save=save,
        ckpt_every=cfg.ckpt_every,
        log=log,
        desc="evaluator",
        log_every=cfg.log_every,
        show_progress=show_progress,
        on_step=on_step,
        run_dir=run_dir_of(out),
        run_config=cfg,
        wandb=wandb,
        keep=(),  # the rows go to the run log; a long run holds none in memory
    )
    return model.freeze()


@torch.no_grad()
def embed_pairs(
    evaluator: MotionTextEvaluator,
    dataset: Any,
    *,
    batch_size: int = 64,
    collate: Any = None,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Evaluator embeddings of every (caption, motion) item: (text [N, E], motion [N, E])."""
    if collate is None:
        from easytune.data.humanml import collate_motion as collate
    texts, motions = [], []
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        texts.append(evaluator.encode_text(evaluator.text_inputs(batch["caption"], batch["tokens"])).cpu())
        motions.append(evaluator.encode_motion(batch["motion"].to(device), batch["lengths"].to(device)).cpu())
    return torch.cat(texts).numpy(), torch.cat(motions).numpy()


def ground_truth_metrics(
    text: np.ndarray, motion: np.ndarray, *, group_size: int = 32, diversity_pairs: int = 300, seed: int = 0
) -> dict[str, Any]:
    """Evaluator metrics of the ground truth itself: R-Precision top-1/2/3 (groups of ``group_size``),
    MM-Dist and Diversity; sizes shrink to the data (with a log line) instead of failing."""
    n = len(text)
    g = min(group_size, n)
    p = min(diversity_pairs, n)
    if g < group_size or p < diversity_pairs:
        log.warning("%d pairs: using groups of %d and %d diversity pairs", n, g, p)
    rp = metrics.r_precision(text, motion, group_size=g, top_k=min(3, g), seed=seed)
    return {
        "r_precision": rp,
        "mm_dist": metrics.matching_score(text, motion),
        "diversity": metrics.diversity(motion, pairs=p, seed=seed),
        "group_size": g,
        "diversity_pairs": p,
        "n": n,
    }
