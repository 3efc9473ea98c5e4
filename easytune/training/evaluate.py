"""Generation evaluation (T2M protocol) with the independent evaluator: R-Precision, FID, MM-Dist,
Diversity, MultiModality, each as mean +- 1.96 sd / sqrt(n) over replications, plus the ground-truth row.

Per replication ``r`` (seeded): the test items are shuffled and generated in batches with their
ground-truth captions and lengths; R-Precision is computed in groups of ``group_size`` of that shuffle,
MM-Dist over all pairs, FID between the generated and ground-truth motion embeddings, Diversity over
``diversity_pairs`` random pairs; MultiModality over ``mm_prompts`` captions generated ``mm_repeats``
times each (``mm_pairs`` pairs per caption). Sizes larger than the test split are scaled down with a
logged message (and recorded in the result) instead of failing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from easytune import metrics
from easytune.errors import ConfigError
from easytune.models.evaluator import MotionTextEvaluator, load_evaluator
from easytune.progress import progress

log = logging.getLogger(__name__)

# generate_fn(captions, lengths, seed) -> list of normalised motion features float32 [lengths[i], nfeats]
GenerateFn = Callable[[list[str], list[int], int], list[torch.Tensor]]
METRIC_NAMES = ("R@1", "R@2", "R@3", "FID", "MM-Dist", "Diversity", "MultiModality")
QUALITY_NAMES = ("Skating", "Penetration", "Floating", "Jitter")  # easytune.rewards.quality_metrics
# Column titles of the papers' tables (Guo et al. 2022 and after); the arrow says which way is better.
PAPER_COLUMNS = {
    "R@1": "Top 1 ↑",
    "R@2": "Top 2 ↑",
    "R@3": "Top 3 ↑",
    "FID": "FID ↓",
    "MM-Dist": "MM Dist ↓",
    "Diversity": "Diversity →",
    "MultiModality": "MModality ↑",
    "Skating": "Skating ↓",
    "Penetration": "Penetr. cm ↓",
    "Floating": "Float cm ↓",
    "Jitter": "Jitter ↓",
}


@dataclass
class EvalSizes:
    """Protocol sizes (T2M defaults); ``scaled_to(n)`` shrinks them to a test split of ``n`` items."""

    replications: int = 20
    group_size: int = 32
    diversity_pairs: int = 300
    mm_prompts: int = 100
    mm_repeats: int = 30
    mm_pairs: int = 10

    def scaled_to(self, n: int) -> tuple[EvalSizes, list[str]]:
        if n < 2:
            raise ConfigError(f"the test split has {n} item(s); generation metrics need at least 2")
        notes = []
        out = EvalSizes(**asdict(self))
        for name, limit in (("group_size", n), ("diversity_pairs", n), ("mm_prompts", n)):
            if getattr(out, name) > limit:
                notes.append(f"{name} {getattr(out, name)} -> {limit} (the test split has {n} items)")
                setattr(out, name, limit)
        if out.mm_prompts and out.mm_repeats < out.mm_pairs:
            notes.append(f"mm_pairs {out.mm_pairs} -> {out.mm_repeats} (only {out.mm_repeats} repeats)")
            out.mm_pairs = out.mm_repeats
        return out, notes


def _embed(evaluator: MotionTextEvaluator, motions: list[torch.Tensor], batch_size: int) -> np.ndarray:
    out = []
    device = evaluator.input_scale.device
    for s in range(0, len(motions), batch_size):
        chunk = motions[s : s + batch_size]
        lengths = torch.tensor([m.shape[0] for m in chunk], device=device)
        x = torch.nn.utils.rnn.pad_sequence([m.to(device).float() for m in chunk], batch_first=True)
        out.append(evaluator.encode_motion(x, lengths).cpu())
    return torch.cat(out).numpy()


def _embed_texts(evaluator: MotionTextEvaluator, captions: list[str], batch_size: int) -> np.ndarray:
    return torch.cat(
        [
            evaluator.encode_text(captions[s : s + batch_size]).cpu()
            for s in range(0, len(captions), batch_size)
        ]
    ).numpy()


def _stats_of(dataset: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The dataset's Mean/Std (what its motions are normalised with), None when it does not say."""
    mean, std = getattr(dataset, "mean", None), getattr(dataset, "std", None)
    if mean is None or std is None:
        return None
    return torch.as_tensor(np.asarray(mean)).float(), torch.as_tensor(np.asarray(std)).float()


def _quality(
    motions: list[torch.Tensor], stats: tuple[torch.Tensor, torch.Tensor] | None
) -> dict[str, float]:
    """Motion-quality metrics (``easytune.rewards.quality_metrics``) of normalised 263-d motions; none
    without the dataset statistics or for other feature widths."""
    if stats is None or any(m.shape[-1] != 263 for m in motions):
        return {}
    from easytune.data.features import recover_from_ric
    from easytune.rewards import quality_metrics

    return quality_metrics([recover_from_ric(m.float().cpu() * stats[1] + stats[0]) for m in motions])


def _metrics(
    text: np.ndarray, motion: np.ndarray, gt_motion: np.ndarray | None, sizes: EvalSizes, seed: int
) -> dict[str, float]:
    rp = metrics.r_precision(
        text, motion, group_size=sizes.group_size, top_k=min(3, sizes.group_size), seed=seed
    )
    out = {f"R@{k}": rp[f"top{k}"] for k in range(1, 4) if f"top{k}" in rp}
    if gt_motion is not None:
        out["FID"] = metrics.fid(gt_motion, motion)
    out["MM-Dist"] = metrics.matching_score(text, motion)
    out["Diversity"] = metrics.diversity(motion, pairs=sizes.diversity_pairs, seed=seed)
    return out


@torch.no_grad()
def evaluate_generation(
    generate_fn: GenerateFn,
    evaluator: MotionTextEvaluator,
    dataset: Any,
    sizes: EvalSizes | None = None,
    *,
    batch_size: int = 32,
    seed: int = 0,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Ground-truth and generated metrics over ``sizes.replications`` seeded replications (a progress bar
    over them with ``show_progress``).

    ``dataset`` items give ``motion`` (normalised [T, D]), ``length`` and ``caption`` (use a deterministic
    caption mode). Returns ``{"ground_truth": {metric: {mean, ci95, n}}, "generated": {...},
    "runs": [...], "sizes": {...}, "notes": [...], "n": N}``.
    """
    items = [dataset[i] for i in range(len(dataset))]
    n = len(items)
    sizes, notes = (sizes or EvalSizes()).scaled_to(n)
    for note in notes:
        log.warning("small test split: %s", note)
    captions = [it["caption"] for it in items]
    lengths = [int(it["length"]) for it in items]
    texts = evaluator.text_inputs(captions, [it.get("tokens", "") for it in items])
    gt_text = _embed_texts(evaluator, texts, batch_size)
    gt_motion = _embed(evaluator, [it["motion"] for it in items], batch_size)
    stats = _stats_of(dataset)
    gt_quality = _quality([it["motion"] for it in items], stats)
    gt_runs, gen_runs = [], []
    reps = range(sizes.replications)
    for r in progress(reps, total=len(reps), desc="eval", unit="replication", enabled=show_progress):
        rseed = seed * 1000 + r
        order = np.random.default_rng(rseed).permutation(n)
        motions: list[torch.Tensor | None] = [None] * n
        for b, s in enumerate(range(0, n, batch_size)):
            idx = order[s : s + batch_size].tolist()
            out = generate_fn([captions[i] for i in idx], [lengths[i] for i in idx], rseed * 100003 + b)
            for i, m in zip(idx, out):
                motions[i] = m
        gen_motion = _embed(evaluator, motions, batch_size)
        gt_runs.append({**_metrics(gt_text, gt_motion, None, sizes, rseed), **gt_quality})
        run = {**_metrics(gt_text, gen_motion, gt_motion, sizes, rseed), **_quality(motions, stats)}
        if sizes.mm_prompts:
            run["MultiModality"] = _multimodality(
                generate_fn, evaluator, captions, lengths, sizes, rseed, batch_size
            )
        gen_runs.append(run)
        log.info(
            "replication %d/%d: %s",
            r + 1,
            sizes.replications,
            " ".join(f"{k}={v:.4f}" for k, v in run.items()),
        )
    return {
        "ground_truth": metrics.summarize_replications(gt_runs),
        "generated": metrics.summarize_replications(gen_runs),
        "runs": gen_runs,
        "sizes": asdict(sizes),
        "notes": notes,
        "n": n,
    }


def _multimodality(
    generate_fn: GenerateFn,
    evaluator: MotionTextEvaluator,
    captions: list[str],
    lengths: list[int],
    sizes: EvalSizes,
    seed: int,
    batch_size: int,
) -> float:
    rng = np.random.default_rng(seed + 7)
    prompts = rng.choice(len(captions), sizes.mm_prompts, replace=False).tolist()
    flat = [i for i in prompts for _ in range(sizes.mm_repeats)]
    motions: list[torch.Tensor] = []
    for b, s in enumerate(range(0, len(flat), batch_size)):
        idx = flat[s : s + batch_size]
        motions += generate_fn([captions[i] for i in idx], [lengths[i] for i in idx], seed * 7919 + b)
    emb = _embed(evaluator, motions, batch_size).reshape(sizes.mm_prompts, sizes.mm_repeats, -1)
    return metrics.multimodality(emb, pairs=sizes.mm_pairs, seed=seed)


def pipeline_fn(
    pipe: Any,
    dataset: Any,
    *,
    steps: int = 50,
    guidance_scale: float | None = None,
    on_sample: Callable[[torch.Tensor, list[int], list[str]], None] | None = None,
) -> GenerateFn:
    """A ``GenerateFn`` from an ``easytune.generation.MotionPipeline``: samples in the model's own
    normalisation (``pipe.mean`` / ``pipe.std``), re-normalised with ``dataset.mean`` / ``dataset.std`` (what
    the evaluator reads). ``on_sample(feats, lengths, captions)`` sees each batch first, in the model's
    normalisation [B, T, D] (e.g. to score it with the reward model the model was tuned with)."""
    from easytune.data.humanml import denormalize, normalize

    def generate(captions: list[str], lengths: list[int], seed: int) -> list[torch.Tensor]:
        feats = pipe.sample_normalised(
            captions, lengths, steps=steps, guidance_scale=guidance_scale, seed=seed
        )
        if on_sample is not None:
            on_sample(feats, lengths, captions)
        feats = denormalize(feats.float().cpu(), pipe.mean, pipe.std)
        return [normalize(f[:n], dataset.mean, dataset.std) for f, n in zip(feats, lengths)]

    return generate


def periodic_evaluator(
    evaluator: str, data: str, *, samples: int = 64, steps: int = 50, seed: int = 0, split: str = "test"
) -> Callable[[Any, int], dict[str, float]]:
    """For fine-tuning runs: ``fn(pipe, step) -> {metric: value}`` on a fixed seeded subset of ``samples``
    items of ``split`` (one replication, no MultiModality, sizes scaled to the subset), evaluator
    ``evaluator`` (a checkpoint path or ``"default"``)."""
    from easytune.data.humanml import MotionDataset

    dataset = MotionDataset(data, split, caption_mode="first", crop="floor")
    model = load_evaluator(evaluator, dataset_mean=dataset.mean, dataset_std=dataset.std)
    if samples < 2:
        raise ConfigError(f"periodic evaluation needs samples >= 2, got {samples}")
    pick = np.random.default_rng(seed).permutation(len(dataset))[: min(samples, len(dataset))]
    subset = [dataset[int(i)] for i in pick]

    def evaluate(pipe: Any, step: int) -> dict[str, float]:
        model.to(pipe.device)
        result = evaluate_generation(
            pipeline_fn(pipe, dataset, steps=steps),
            model,
            subset,
            EvalSizes(replications=1, mm_prompts=0),
            seed=seed,
        )
        return {k: v["mean"] for k, v in result["generated"].items()}

    return evaluate


def format_table(result: dict[str, Any], name: str = "model") -> str:
    """The papers' table: rows ground truth and ``name``, columns R-Precision Top 1/2/3, FID, MM Dist,
    Diversity, MModality (arrows: better direction), cells ``mean±ci95`` ('-' if absent)."""
    names = METRIC_NAMES + tuple(m for m in QUALITY_NAMES if m in result["generated"])
    head = f"{'method':<16}" + "".join(f"{PAPER_COLUMNS[m]:>16}" for m in names)
    group = f"{'':<16}{'R-Precision':^48}"
    lines = [group, head, "-" * len(head)]
    for label, key in (("ground truth", "ground_truth"), (name, "generated")):
        cells = []
        for m in names:
            s = result[key].get(m)
            cell = "-" if s is None else f"{s['mean']:.3f}±{s['ci95']:.3f}".replace("±0.", "±.")
            cells.append(f"{cell:>16}")
        lines.append(f"{label[:16]:<16}" + "".join(cells))
    return "\n".join(lines)
