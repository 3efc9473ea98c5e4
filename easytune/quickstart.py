"""``easytune quickstart``: EasyTune against DRaFT-K on the embedded tiny models, over seeds, in about ten
CPU minutes.

1. The synthetic dataset (``easytune data synth``, 600 clips, seed 0) is generated into a cache folder.
2. The embedded tiny MLD, SPL reward model and evaluator (``easytune/assets``; ``--from-scratch`` first
   rebuilds them with ``easytune/assets/build_assets.sh``) are loaded.
3. ``easytune compare`` with two methods: for each of ``--seeds`` training seeds the base model is
   fine-tuned twice from the same weights under the same training-time budget, EasyTune (K updates per
   trajectory on the one-step prediction) and DRaFT-K (back-propagation through the last K sampling steps,
   one update per trajectory), and every model (the base too) is evaluated on the same prompts and noise.
4. The table is printed with 95% intervals over the seeds (reward of the generated test motions under the
   SPL reward model, the independent evaluator's metrics, backward memory, seconds per update), the paired
   differences, the time each method needed to reach a common reward level and, in words, which
   differences are significant. Before/after GIFs of the seed-0 models are written.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from easytune.checkpoint import ASSETS
from easytune.data.synthetic import ensure_dataset
from easytune.generation import MotionPipeline, load_pipeline
from easytune.quickstart_config import QuickstartConfig

BUILD_SCRIPT = ASSETS / "build_assets.sh"


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


def run_quickstart(cfg: QuickstartConfig, from_scratch: bool = False) -> dict[str, Any]:
    """Run the comparison into ``cfg.out`` (``easytune.bench.comparison.run_comparison``'s result)."""
    from easytune.bench.comparison import run_comparison
    from easytune.bench.comparison_config import CompareConfig
    from easytune.render import render_motions

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    data = ensure_dataset(cfg.data)  # the cached synthetic set unless --data
    ckpts = {"base": cfg.base, "reward": cfg.reward, "evaluator": cfg.evaluator}
    if from_scratch:
        ckpts = build_assets(out / "assets", data, flow=cfg.base == "default-flow")
    print(f"dataset {data}; checkpoints {ckpts}")
    methods = f"easytune-{cfg.k},draft-{cfg.k}"
    compare = CompareConfig(
        out=str(out),
        methods=methods,
        reference=f"draft-{cfg.k}",
        seeds=cfg.seeds,
        budget_s=cfg.budget_s,
        base=ckpts["base"],
        reward=ckpts["reward"],
        evaluator=ckpts["evaluator"],
        data=str(data),
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        warmup=cfg.warmup,
        inference_steps=cfg.inference_steps,
        eval_replications=cfg.eval_replications,
        time_levels=1,
        show_progress=cfg.show_progress,
    )
    print(f"{methods} x {cfg.seeds} seeds, {cfg.budget_s:g} training seconds each ...")
    result = run_comparison(compare, command="easytune quickstart")
    models = {"base": load_pipeline(ckpts["base"], data=data)}
    for run in result["runs"]:
        if run["seed"] == 0:
            models[run["method"]] = load_pipeline(run["model"], data=data)
    _write_gifs(models, data, out, cfg, render_motions)
    return result


def _write_gifs(
    models: dict[str, MotionPipeline], data: Path, out: Path, cfg: QuickstartConfig, render
) -> None:
    from easytune.data.features import recover_from_ric
    from easytune.data.humanml import MotionDataset

    test = MotionDataset(data, "test", caption_mode="first", crop="floor")
    picks = np.random.default_rng(0).choice(len(test), min(cfg.gif_prompts, len(test)), replace=False)
    for j, i in enumerate(picks.tolist()):
        item = test[int(i)]
        joints, titles = [], []
        for name, pipe in models.items():
            feats = pipe.sample([item["caption"]], [item["length"]], steps=cfg.inference_steps, seed=0)
            joints.append(recover_from_ric(feats[0]))
            titles.append(name)
        path = out / f"prompt{j}.gif"
        render(joints, path, titles=titles)
        print(f"wrote {path}: {item['caption']!r} ({' | '.join(titles)})")
