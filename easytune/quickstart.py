"""``easytune quickstart``: EasyTune against DRaFT-K on the embedded tiny models, in about ten CPU minutes.

1. The synthetic dataset (``easytune data synth``, 600 clips, seed 0) is generated into a cache folder.
2. The embedded tiny MLD, SPL reward model and evaluator (``easytune/assets``; ``--from-scratch`` first
   rebuilds them with ``easytune/assets/build_assets.sh``) are loaded.
3. The base model is evaluated, then fine-tuned twice from the same weights under the same wall-clock
   budget: EasyTune (K updates per trajectory on the one-step prediction) and DRaFT-K (back-propagation
   through the last K sampling steps, one update per trajectory). Each fine-tuned model is evaluated.
4. A paper-style table is printed: reward of the generated test motions under the SPL reward model,
   the independent evaluator's R@1 / R@3 / FID / MM-Dist / Diversity, activation memory (bytes autograd
   saves for backward at the peak of one trajectory), seconds per update, updates made, and the training
   time each method needed to reach a common reward level. Before/after GIFs are written.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from easytune.checkpoint import ASSETS
from easytune.generation import MotionPipeline, load_pipeline
from easytune.quickstart_config import QuickstartConfig

log = logging.getLogger("easytune.quickstart")

BUILD_SCRIPT = ASSETS / "build_assets.sh"


def cache_dir() -> Path:
    return Path(os.environ.get("EASYTUNE_CACHE", Path.home() / ".cache" / "easytune"))


def ensure_dataset(path: str | None, clips: int = 600, seed: int = 0) -> Path:
    """The dataset folder: ``path`` when given, else the cached synthetic set (generated when missing)."""
    if path is not None:
        return Path(path)
    root = cache_dir() / f"synth-{clips}-seed{seed}"
    if not (root / "Mean.npy").is_file():
        from easytune.data.synthetic import generate_dataset

        log.info("generating the synthetic dataset (%d clips, seed %d) in %s", clips, seed, root)
        generate_dataset(root, clips, seed)
    return root


def build_assets(out: Path, data: Path, flow: bool = False) -> dict[str, str]:
    """Replay ``build_assets.sh`` into ``out`` (``flow``: the base is the flow-matching twin, built too);
    returns the checkpoint paths it wrote: ``base``, ``reward``, ``evaluator``."""
    out.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "OUT": str(out),
        "DATA": str(data),
        "EASYTUNE": f"{sys.executable} -m easytune.cli",
        "FLOW": "1" if flow else "0",
    }
    subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, env=env)
    base = "mld_tiny_flow" if flow else "mld_tiny"
    return {
        key: str(out / f"{name}.pt")
        for key, name in (("base", base), ("reward", "reward"), ("evaluator", "evaluator"))
    }


def _evaluate(
    pipe: MotionPipeline, reward_model: Any, evaluator: Any, data: Path, cfg: QuickstartConfig
) -> dict:
    """The evaluator's metrics on the test split plus the mean SPL reward of the generated motions."""
    from easytune.data.humanml import MotionDataset
    from easytune.training.evaluate import EvalSizes, evaluate_generation

    rewards: list[float] = []

    def generate(captions: list[str], lengths: list[int], seed: int) -> list[torch.Tensor]:
        feats = pipe.sample_normalised(captions, lengths, steps=cfg.inference_steps, seed=seed)
        with torch.no_grad():
            r = reward_model.reward(feats, torch.tensor(lengths, device=feats.device), captions)
        rewards.extend(r.tolist())
        return [f[:n].cpu() for f, n in zip(feats, lengths)]

    test = MotionDataset(data, "test", caption_mode="first", crop="floor")
    sizes = EvalSizes(replications=cfg.eval_replications, mm_prompts=0)
    result = evaluate_generation(generate, evaluator, test, sizes, seed=cfg.seed)
    gen_metrics = {k: v["mean"] for k, v in result["generated"].items()}
    gt_metrics = {k: v["mean"] for k, v in result["ground_truth"].items()}
    return {"generated": gen_metrics, "ground_truth": gt_metrics, "reward": float(np.mean(rewards))}


def _row(method: str, ev: dict, **extra: Any) -> dict[str, Any]:
    m = ev["generated"]
    return {
        "method": method,
        "reward": ev["reward"],
        "r1": m.get("R@1"),
        "r3": m.get("R@3"),
        "fid": m.get("FID"),
        "mm_dist": m.get("MM-Dist"),
        "diversity": m.get("Diversity"),
        **extra,
    }


def _activation_bytes(run: Any, cfg: QuickstartConfig) -> int:
    """Peak bytes autograd holds for backward during one more trajectory of ``run`` (after export)."""
    from easytune.bench.memory import SavedTensorsMeter

    captions, lengths = run.prompts.draw(10**9, cfg.batch_size)
    batch = run.objective.batch(captions, lengths, run.info.device)
    with SavedTensorsMeter(exclude=list(run.pipe.model.parameters())) as meter:
        run.trainer.step(batch)
    return meter.peak_bytes


def time_to_level(history: list[dict[str, Any]], level: float, window: int = 5) -> float | None:
    """Training seconds until the moving average (``window`` trajectories) of the final-step reward
    (``reward_last``: the sample's reward for DRaFT-K, the last step's one-step prediction for EasyTune,
    the same quantity up to one DDIM step) reaches ``level``."""
    rewards = [h["reward_last"] for h in history]
    for i in range(len(rewards)):
        lo = max(0, i - window + 1)
        if np.mean(rewards[lo : i + 1]) >= level and i + 1 >= min(window, len(rewards)):
            return float(history[i]["time"])
    return None


def run_quickstart(cfg: QuickstartConfig, from_scratch: bool = False) -> list[dict[str, Any]]:
    """Run the comparison; returns one row per model (base, EasyTune, DRaFT-K). Writes into ``cfg.out``."""
    from easytune.models.evaluator import MotionTextEvaluator
    from easytune.models.reward import RewardModel
    from easytune.render import render_motions
    from easytune.training.finetune import FinetuneConfig, Run

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    data = ensure_dataset(cfg.data)
    ckpts = {"base": cfg.base, "reward": cfg.reward, "evaluator": cfg.evaluator}
    if from_scratch:
        ckpts = build_assets(out / "assets", data, flow=cfg.base == "default-flow")
    base = load_pipeline(ckpts["base"], data=data)
    reward_model = RewardModel.from_checkpoint(ckpts["reward"])
    evaluator = MotionTextEvaluator.from_checkpoint(ckpts["evaluator"])
    print(f"dataset {data}; checkpoints {ckpts}")

    print("evaluating the base model ...")
    base_eval = _evaluate(base, reward_model, evaluator, data, cfg)
    rows = [_row("base", base_eval)]
    gt = base_eval["ground_truth"]
    runs: dict[str, tuple[Run, list[dict[str, Any]]]] = {}
    models: dict[str, MotionPipeline] = {"base": base}
    for method in ("easytune", "draft"):
        print(f"fine-tuning with {method} (K={cfg.k}) for {cfg.budget_s:.0f} s ...")
        ft = FinetuneConfig(
            method=method,
            method_options={"k": cfg.k},
            base=ckpts["base"],
            reward=ckpts["reward"],
            data=str(data),
            out=str(out / method),
            steps=10**6,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            warmup=cfg.warmup,
            num_inference_steps=cfg.inference_steps,
            ckpt_every=0,
            time_budget=cfg.budget_s,
            seed=cfg.seed,
            device="cpu",
            progress=False,
            overwrite=True,
        )
        run = Run(ft)
        history = run.train()
        print(
            f"  {len(history)} trajectories, {sum(h['updates'] for h in history):.0f} updates, "
            f"final-step reward {history[0]['reward_last']:.3f} -> {history[-1]['reward_last']:.3f}"
        )
        model_path = run.export()
        peak = _activation_bytes(run, cfg)
        tuned = load_pipeline(model_path, data=data)
        models[method] = tuned
        runs[method] = (run, history)
        ev = _evaluate(tuned, reward_model, evaluator, data, cfg)
        updates = sum(h["updates"] for h in history)
        rows.append(
            _row(
                method,
                ev,
                k=cfg.k,
                trajectories=len(history),
                updates=int(updates),
                train_seconds=run.elapsed,
                seconds_per_update=run.elapsed / max(updates, 1),
                activation_bytes=peak,
            )
        )
    # A common level both methods' curves are compared at: halfway from the start to the lower final reward.
    start = np.mean([h["reward_last"] for _, hist in runs.values() for h in hist[:5]])
    finals = [np.mean([h["reward_last"] for h in hist[-5:]]) for _, hist in runs.values()]
    level = float(start + 0.5 * (min(finals) - start)) if min(finals) > start else float(max(finals))
    for row in rows[1:]:
        row["reward_level"] = level
        row["seconds_to_level"] = time_to_level(runs[row["method"]][1], level)
    rows.append(
        {
            "method": "ground truth",
            "r1": gt.get("R@1"),
            "r3": gt.get("R@3"),
            "fid": gt.get("FID"),
            "mm_dist": gt.get("MM-Dist"),
            "diversity": gt.get("Diversity"),
        }
    )
    _write_gifs(models, data, out, cfg, render_motions)
    return rows


def _write_gifs(
    models: dict[str, MotionPipeline], data: Path, out: Path, cfg: QuickstartConfig, render
) -> None:
    from easytune.data.features import recover_from_ric
    from easytune.data.humanml import MotionDataset

    test = MotionDataset(data, "test", caption_mode="first", crop="floor")
    picks = np.random.default_rng(cfg.seed).choice(len(test), min(cfg.gif_prompts, len(test)), replace=False)
    for j, i in enumerate(picks.tolist()):
        item = test[int(i)]
        joints, titles = [], []
        for name, pipe in models.items():
            feats = pipe.sample([item["caption"]], [item["length"]], steps=cfg.inference_steps, seed=cfg.seed)
            joints.append(recover_from_ric(feats[0]))
            titles.append(name)
        path = out / f"prompt{j}.gif"
        render(joints, path, titles=titles)
        print(f"wrote {path}: {item['caption']!r} ({' | '.join(titles)})")


def format_rows(rows: list[dict[str, Any]]) -> str:
    """The paper-style table of ``run_quickstart``'s rows."""
    cols = [
        ("method", "method", "{}"),
        ("reward", "reward", "{:.3f}"),
        ("R@1", "r1", "{:.3f}"),
        ("R@3", "r3", "{:.3f}"),
        ("FID", "fid", "{:.3f}"),
        ("MM-Dist", "mm_dist", "{:.3f}"),
        ("Div", "diversity", "{:.3f}"),
        ("act MB", "activation_bytes", "{:.1f}"),
        ("s/update", "seconds_per_update", "{:.2f}"),
        ("updates", "updates", "{}"),
        ("s to level", "seconds_to_level", "{:.0f}"),
    ]
    widths = [max(len(h), 12) for h, _, _ in cols]
    lines = ["".join(f"{h:>{w}}" for (h, _, _), w in zip(cols, widths))]
    for row in rows:
        cells = []
        for (_, key, fmt), w in zip(cols, widths):
            v = row.get(key)
            if key == "activation_bytes" and v is not None:
                v = v / 2**20
            cells.append(f"{'-' if v is None else fmt.format(v):>{w}}")
        lines.append("".join(cells))
    level = next((r["reward_level"] for r in rows if "reward_level" in r), None)
    if level is not None:
        lines.append(f"(s to level: training seconds until the 5-trajectory mean reward reaches {level:.3f})")
    return "\n".join(lines)


def write_json(rows: list[dict[str, Any]], path: str | Path) -> None:
    Path(path).write_text(json.dumps(rows, indent=2))
