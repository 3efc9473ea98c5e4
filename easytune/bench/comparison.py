"""``easytune compare``: the paper's main comparison over seeds, with 95% intervals and paired differences.

For every method and training seed ``s``: fine-tune the base model for the same budget (trajectories or
training seconds), export, and evaluate the fine-tuned model with the independent evaluator (R-Precision
top 1/2/3, FID, MM-Dist, Diversity, the motion-quality metrics when the features are HumanML3D's 263) and
the reward model, on the test prompts with the evaluation noise of seed ``s``. The base model is evaluated
with the same prompts and noise for every seed, so each method's difference to the base, and to the
reference method (DRaFT-50 by default), is paired seed by seed. Memory (the bytes autograd keeps for
backward during one trajectory; the CUDA peak on a GPU) and seconds per update come from the same runs.
Time to reward: every run logs the reward of each trajectory; the time each method needs to reach common
reward levels, and the ratio to the reference, get intervals over the seeds too.

Outputs in ``out``: ``compare.json`` (every run and every summary), ``compare.md`` (the table in the
papers' layout with intervals, the paired differences and, in words, which are significant) and the plots
``reward_time.png`` (reward against training time, mean and 95% band) and ``memory.png``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from easytune.bench.comparison_config import CompareConfig
from easytune.bench.stats import curve_band, format_interval, interval, paired_difference, time_to_level
from easytune.errors import ConfigError

log = logging.getLogger(__name__)

# (result key, column title, better: +1 higher, -1 lower, 0 closer to the ground truth)
COLUMNS = (
    ("R@1", "Top 1 ↑", 1, ".3f"),
    ("R@2", "Top 2 ↑", 1, ".3f"),
    ("R@3", "Top 3 ↑", 1, ".3f"),
    ("FID", "FID ↓", -1, ".3f"),
    ("MM-Dist", "MM Dist ↓", -1, ".3f"),
    ("Diversity", "Diversity →", 0, ".3f"),
    ("Skating", "Skating ↓", -1, ".3f"),
    ("Jitter", "Jitter ↓", -1, ".4f"),
    ("reward", "Reward ↑", 1, ".3f"),
)
COST_COLUMNS = (
    ("seconds_per_update", "s / update", ".3f"),
    ("activation_mib", "backward MiB", ".1f"),
    ("peak_gib", "peak GiB", ".2f"),
    ("updates", "updates", ".0f"),
    ("trajectories", "trajectories", ".0f"),
)
FORMATS = {key: fmt for key, *_, fmt in COLUMNS + COST_COLUMNS}
VERDICT_METRICS = ("reward", "R@1", "FID", "MM-Dist", "Skating")
SMOOTHING = 5  # trajectories in the moving average of the reward curves


class _Subset:
    """``indices`` of ``dataset`` (items and its Mean/Std, which the quality metrics read)."""

    def __init__(self, dataset: Any, indices: list[int]) -> None:
        self.dataset, self.indices = dataset, indices
        self.mean, self.std = dataset.mean, dataset.std

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.dataset[self.indices[i]]


def _evaluate(pipe, reward_model, evaluator, test, cfg: CompareConfig, seed: int) -> dict[str, Any]:
    """``{"metrics", "ground_truth"}``: metric means (and the mean reward) of one model at evaluation seed
    ``seed`` (its replications, prompts and noise are fixed by the seed)."""
    from easytune.training.evaluate import EvalSizes, evaluate_generation, pipeline_fn

    rewards: list[float] = []

    def on_sample(feats: torch.Tensor, lengths: list[int], captions: list[str]) -> None:
        with torch.no_grad():
            r = reward_model.reward(feats, torch.tensor(lengths, device=feats.device), captions)
        rewards.extend(r.float().cpu().tolist())

    generate = pipeline_fn(pipe, test, steps=cfg.inference_steps, on_sample=on_sample)
    sizes = EvalSizes(replications=cfg.eval_replications, mm_prompts=0)
    result = evaluate_generation(generate, evaluator, test, sizes, seed=seed)
    out = {k: v["mean"] for k, v in result["generated"].items()}
    out["reward"] = float(np.mean(rewards))
    return {"metrics": out, "ground_truth": {k: v["mean"] for k, v in result["ground_truth"].items()}}


def _finetune_config(cfg: CompareConfig, case: Any, seed: int, data: Path, out: Path):
    from easytune.methods import registry
    from easytune.training.finetune import FinetuneConfig

    entry = registry.info(case.method)
    options = dict(case.options)
    if case.k is not None:
        options[entry.count] = case.k
    return FinetuneConfig(
        method=entry.name,
        method_options=options,
        base=cfg.base,
        reward=cfg.reward,
        data=str(data),
        out=str(out),
        steps=cfg.trajectories if cfg.trajectories is not None else 10**6,
        time_budget=cfg.budget_s,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        warmup=cfg.warmup,
        num_inference_steps=cfg.inference_steps,
        ckpt_every=0,
        seed=seed,
        device=cfg.device,
        progress=False,
        overwrite=True,
    )


RUN_RECORD = "compare_run.json"


def _fingerprint(cfg: CompareConfig, ft: Any) -> dict[str, Any]:
    """What a finished run's record must match to be reused: its fine-tuning config and the evaluation."""
    from dataclasses import asdict

    run = {k: v for k, v in asdict(ft).items() if k not in ("out", "progress", "overwrite")}
    evaluation = {
        k: getattr(cfg, k) for k in ("evaluator", "eval_samples", "eval_replications", "inference_steps")
    }
    return json.loads(json.dumps({"finetune": run, "evaluation": evaluation}, default=str))


def _train_and_evaluate(cfg, case, seed, data, models, out: Path) -> dict[str, Any]:
    """One run: fine-tune, measure the backward memory of one more trajectory, export, evaluate. A run
    whose record (``out/compare_run.json``) was written with the same fine-tuning and evaluation settings
    is read back instead (a killed comparison re-run picks up where it stopped)."""
    ft = _finetune_config(cfg, case, seed, data, out)
    fingerprint = _fingerprint(cfg, ft)
    record_path = out / RUN_RECORD
    if record_path.is_file():
        saved = json.loads(record_path.read_text())
        if saved.get("fingerprint") == fingerprint and Path(saved["result"]["model"]).exists():
            log.info("compare: %s seed %d already done (%s)", case.label, seed, record_path)
            return saved["result"]
    result = _run_once(cfg, case, seed, data, models, ft)
    tmp = record_path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"fingerprint": fingerprint, "result": result}, default=float))
    tmp.replace(record_path)
    return result


def _run_once(cfg, case, seed, data, models, ft) -> dict[str, Any]:
    from easytune.bench.memory import trajectory_activation_bytes
    from easytune.generation import load_pipeline
    from easytune.training.finetune import Run

    run = Run(ft)
    history = run.train()
    updates = sum(h["updates"] for h in history)
    activation = trajectory_activation_bytes(run, cfg.batch_size)
    model_path = run.export()
    tuned = load_pipeline(model_path, data=data, device=cfg.device)
    ev = _evaluate(tuned, models["reward"], models["evaluator"], models["test"], cfg, seed)
    peaks = [h["peak_memory_gb"] for h in history if "peak_memory_gb" in h]
    return {
        "method": case.label,
        "seed": seed,
        "model": str(model_path),
        "metrics": ev["metrics"],
        "trajectories": len(history),
        "updates": int(updates),
        "train_seconds": run.elapsed,
        "seconds_per_update": run.elapsed / max(updates, 1),
        "activation_mib": activation / 2**20,
        "peak_gib": max(peaks) if peaks else None,
        "curve": {
            "time": [float(h["time"]) for h in history],
            "reward": [float(h["reward_last"]) for h in history],
        },
    }


def _levels(runs: list[dict[str, Any]], count: int) -> list[float]:
    """``count`` reward levels evenly between the mean start reward (first 5 trajectories of every run) and
    the best method's mean final reward (last 5): 25 / 50 / 75% of the way for 3 levels; a method that
    never gets there says so (reached 0/N)."""
    if not count or not runs:
        return []
    start = float(np.mean([np.mean(r["curve"]["reward"][:SMOOTHING]) for r in runs]))
    by_method: dict[str, list[float]] = {}
    for r in runs:
        by_method.setdefault(r["method"], []).append(float(np.mean(r["curve"]["reward"][-SMOOTHING:])))
    final = max(float(np.mean(v)) for v in by_method.values())
    if final <= start:
        return []
    return [round(start + (j + 1) / (count + 1) * (final - start), 4) for j in range(count)]


def _value(run: dict[str, Any] | None, key: str) -> float | None:
    """A metric (``run["metrics"]``) or a cost (``run[key]``) of one run; None for a missing run."""
    if run is None:
        return None
    return run["metrics"].get(key) if key in run["metrics"] else run.get(key)


def summarize(runs: list[dict[str, Any]], base: list[dict[str, Any]], reference: str, levels: int) -> dict:
    """Intervals per method, paired differences against the base and the reference, time to reward."""
    methods = list(dict.fromkeys(r["method"] for r in runs))
    seeds = sorted({r["seed"] for r in runs})
    base_by_seed = {b["seed"]: b for b in base}
    metric_keys = [k for k, *_ in COLUMNS]
    cost_keys = [k for k, *_ in COST_COLUMNS]
    runs_of = {m: {r["seed"]: r for r in runs if r["method"] == m} for m in methods}

    def values(by_seed: dict[int, dict[str, Any]], key: str) -> list[float | None]:
        return [_value(by_seed.get(s), key) for s in seeds]

    summary: dict[str, Any] = {"methods": methods, "seeds": seeds, "reference": reference}
    summary["base"] = {k: interval(values(base_by_seed, k)) for k in metric_keys}
    summary["ground_truth"] = {
        k: interval([b["ground_truth"].get(k) for b in base]) for k in metric_keys if k != "reward"
    }
    ref = runs_of.get(reference)
    summary["rows"], summary["vs_base"], summary["vs_reference"] = {}, {}, {}
    for m in methods:
        mine = runs_of[m]
        summary["rows"][m] = {k: interval(values(mine, k)) for k in metric_keys + cost_keys}
        summary["vs_base"][m] = {
            k: paired_difference(values(mine, k), values(base_by_seed, k)) for k in metric_keys
        }
        if ref is not None and m != reference:
            summary["vs_reference"][m] = {
                k: paired_difference(values(mine, k), values(ref, k))
                for k in metric_keys + ["seconds_per_update", "activation_mib"]
            }
    summary["levels"] = _levels(runs, levels)
    summary["time_to_reward"] = {
        m: _time_to_reward(runs_of[m], ref, summary["levels"], m == reference) for m in methods
    }
    end = min(max(r["curve"]["time"]) for r in runs) if runs else 0.0
    grid = list(np.linspace(0.0, end, 40)) if end > 0 else []
    summary["curves"] = {
        m: curve_band(
            [(r["curve"]["time"], r["curve"]["reward"]) for r in runs_of[m].values()], grid, SMOOTHING
        )
        for m in methods
    }
    return summary


def _reach(run: dict[str, Any] | None, level: float) -> float | None:
    if run is None:
        return None
    return time_to_level(run["curve"]["time"], run["curve"]["reward"], level, SMOOTHING)


def _time_to_reward(mine: dict, ref: dict | None, levels: list[float], is_reference: bool) -> list[dict]:
    """Per level: seconds to reach it (interval over the seeds that did), how many did, and the paired
    ratio to the reference method's time (seeds where both did)."""
    cells = []
    for level in levels:
        times = {s: _reach(r, level) for s, r in mine.items()}
        cell = {
            "level": level,
            "reached": sum(t is not None for t in times.values()),
            "of": len(times),
            "seconds": interval(list(times.values())),
        }
        if ref is not None and not is_reference:
            ratios = []
            for s, t in times.items():
                t_ref = _reach(ref.get(s), level)
                ratios.append(t / t_ref if t is not None and t_ref else None)
            cell["ratio_to_reference"] = interval(ratios)
        cells.append(cell)
    return cells


# ------------------------------------------------------------------------------------------ report
def _verdict(diff: dict[str, Any], better: int, what: str, against: str) -> str | None:
    """One sentence on a paired difference: significant or not, and which way is better."""
    if diff.get("mean") is None:
        return None
    cell = format_interval(diff, FORMATS[what])
    if not diff["significant"]:
        return f"{what}: no significant difference from {against} ({cell})"
    if better == 0:
        return f"{what}: significantly different from {against} ({cell})"
    good = (diff["mean"] > 0) == (better > 0)
    return f"{what}: significantly {'better' if good else 'worse'} than {against} ({cell})"


def verdicts(summary: dict[str, Any]) -> list[str]:
    """What the paired differences say, in words (95% intervals over the seeds)."""
    better = {k: b for k, _, b, _ in COLUMNS}
    lines = []
    for m in summary["methods"]:
        for against, table in (
            ("the base", summary["vs_base"]),
            (summary["reference"], summary["vs_reference"]),
        ):
            if m not in table:
                continue
            said = [_verdict(table[m][k], better[k], k, against) for k in VERDICT_METRICS if k in table[m]]
            lines.append(f"- **{m}** vs {against}: " + "; ".join(s for s in said if s))
        if m in summary["vs_reference"]:
            for key, label in (
                ("seconds_per_update", "seconds per update"),
                ("activation_mib", "backward memory"),
            ):
                d = summary["vs_reference"][m][key]
                ref = summary["rows"][summary["reference"]][key]["mean"]
                if d["mean"] is not None and ref:
                    if d["significant"]:
                        how = ", significant"
                    elif d["spread"] is False:
                        how = ", the same in every seed"
                    else:
                        how = ", not significant"
                    lines.append(
                        f"  - {label}: {format_interval(d, '.3g')} against {summary['reference']} "
                        f"({100 * d['mean'] / ref:+.0f}%{how})"
                    )
    return lines


def to_markdown(summary: dict[str, Any], cfg: dict[str, Any], command: str) -> str:
    """The comparison in the papers' layout: mean ± 95% half-width over the seeds."""
    metric_cols = [
        (k, title)
        for k, title, *_ in COLUMNS
        if any(summary["rows"][m][k]["mean"] is not None for m in summary["methods"])
    ]
    cost_cols = [
        (k, title)
        for k, title, _ in COST_COLUMNS
        if any(summary["rows"][m][k]["mean"] is not None for m in summary["methods"])
    ]
    head = ["method"] + [t for _, t in metric_cols + cost_cols]
    lines = [
        f"# Method comparison ({len(summary['seeds'])} seeds, 95% intervals)",
        "",
        f"`{command}`",
        "",
        "Budget per run: "
        + (
            f"{cfg['trajectories']} trajectories"
            if cfg.get("trajectories")
            else f"{cfg['budget_s']} training seconds"
        )
        + f"; batch {cfg['batch_size']}, lr {cfg['lr']}, {cfg['inference_steps']} sampling steps; evaluator "
        f"`{cfg['evaluator']}`, {cfg['eval_replications']} replication(s) per run. Each cell: mean ± 95% "
        "half-width over the training seeds (Student's t). The base row is the untuned model on the same "
        "evaluation seeds.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    gt = summary["ground_truth"]
    lines.append(
        "| ground truth | "
        + " | ".join(format_interval(gt.get(k, {}), FORMATS[k]) for k, _ in metric_cols)
        + " |"
        + " - |" * len(cost_cols)
    )
    lines.append(
        "| base | "
        + " | ".join(format_interval(summary["base"][k], FORMATS[k]) for k, _ in metric_cols)
        + " |"
        + " - |" * len(cost_cols)
    )
    for m in summary["methods"]:
        row = summary["rows"][m]
        costs = [format_interval(row[k], FORMATS[k]) for k, _ in cost_cols]
        lines.append(
            f"| {m} | "
            + " | ".join(format_interval(row[k], FORMATS[k]) for k, _ in metric_cols)
            + " | "
            + " | ".join(costs)
            + " |"
        )
    for title, table in (("base", summary["vs_base"]), (summary["reference"], summary["vs_reference"])):
        if not table:
            continue
        lines += [
            "",
            f"## Paired differences against {title} (method - {title}; * the interval excludes 0)",
            "",
        ]
        keys = [k for k, _ in metric_cols] + [
            k for k in ("seconds_per_update", "activation_mib") if k in next(iter(table.values()))
        ]
        lines += ["| method | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]
        for m, diffs in table.items():
            cells = [
                format_interval(diffs[k], FORMATS[k]) + ("*" if diffs[k]["significant"] else "") for k in keys
            ]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    if summary["levels"]:
        lines += ["", "## Time to reward (training seconds; reward = trailing mean of 5 trajectories)", ""]
        head = ["method"] + [f"reward {lv:.3f}" for lv in summary["levels"]]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for m, cells in summary["time_to_reward"].items():
            out = []
            for c in cells:
                text = f"{format_interval(c['seconds'], '.1f')} ({c['reached']}/{c['of']})"
                ratio = c.get("ratio_to_reference")
                if ratio and ratio["mean"] is not None:
                    text += f", x{format_interval(ratio, '.2f')} of {summary['reference']}"
                out.append(text)
            lines.append(f"| {m} | " + " | ".join(out) + " |")
    lines += ["", "## What the intervals say", "", *verdicts(summary), ""]
    return "\n".join(lines)


def write_plots(summary: dict[str, Any], out: Path) -> list[Path]:
    """``reward_time.png`` (mean and 95% band of each method's reward curve) and ``memory.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    names = list(summary["curves"])
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.4 * cols, 2.6 * rows), sharex=True, sharey=True, squeeze=False
    )
    reference = summary["curves"].get(summary["reference"])
    for ax, m in zip(axes.flat, names):
        band = summary["curves"][m]
        keep = [i for i, v in enumerate(band["mean"]) if v is not None]
        t = [band["time"][i] for i in keep]
        mean = [band["mean"][i] for i in keep]
        lo = [band["low"][i] if band["low"][i] is not None else band["mean"][i] for i in keep]
        hi = [band["high"][i] if band["high"][i] is not None else band["mean"][i] for i in keep]
        if reference is not None and m != summary["reference"]:
            ax.plot(
                reference["time"], reference["mean"], color="gray", ls="--", lw=1, label=summary["reference"]
            )
        ax.plot(t, mean, color="C0", label=m)
        ax.fill_between(t, lo, hi, color="C0", alpha=0.25)
        ax.set_title(m, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.supxlabel("training seconds", fontsize=8)
    fig.supylabel(f"reward (trailing mean of {SMOOTHING}); band: 95% over seeds", fontsize=8)
    if reference is not None and len(names) > 1:
        axes.flat[0 if names[0] != summary["reference"] else min(1, len(names) - 1)].legend(fontsize=6)
    fig.tight_layout()
    written.append(out / "reward_time.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = summary["methods"]
    means = [summary["rows"][m]["activation_mib"]["mean"] or 0.0 for m in names]
    halves = [summary["rows"][m]["activation_mib"]["half"] or 0.0 for m in names]
    ax.bar(range(len(names)), means, yerr=halves, capsize=3)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("MiB kept for backward (one trajectory)")
    fig.tight_layout()
    written.append(out / "memory.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)
    return written


# ------------------------------------------------------------------------------------------ the run
def run_comparison(cfg: CompareConfig, command: str = "easytune compare") -> dict[str, Any]:
    """Run every (method, seed), evaluate, summarise; write compare.json / compare.md / plots into
    ``cfg.out``. Returns ``{"config", "runs", "base", "summary", "markdown"}``."""
    from dataclasses import asdict

    from easytune.bench.methods import parse_cases
    from easytune.data.humanml import MotionDataset
    from easytune.data.synthetic import ensure_dataset
    from easytune.device import resolve_device
    from easytune.generation import load_pipeline
    from easytune.models.evaluator import load_evaluator
    from easytune.models.reward import RewardModel
    from easytune.progress import progress

    cfg.device = str(resolve_device(cfg.device))
    cases = parse_cases(cfg.methods)
    labels = [c.label for c in cases]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"--methods: a method is listed twice ({labels})")
    reference = parse_cases(cfg.reference)[0].label
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    data = ensure_dataset(cfg.data)
    test = MotionDataset(data, "test", caption_mode="first", crop="floor")
    if cfg.eval_samples is not None and cfg.eval_samples < len(test):
        pick = np.random.default_rng(0).permutation(len(test))[: cfg.eval_samples]
        test = _Subset(test, sorted(int(i) for i in pick))
    models = {
        "reward": RewardModel.from_checkpoint(cfg.reward).to(cfg.device),
        "evaluator": load_evaluator(
            cfg.evaluator, dataset_mean=test.mean, dataset_std=test.std, device=cfg.device
        ),
        "test": test,
    }
    seeds = list(range(cfg.seeds))
    started = time.time()
    base_pipe = load_pipeline(cfg.base, data=data, device=cfg.device)
    base = []
    for s in progress(seeds, total=len(seeds), desc="base", unit="seed", enabled=cfg.show_progress):
        base.append({"seed": s, **_evaluate(base_pipe, models["reward"], models["evaluator"], test, cfg, s)})
    runs = []
    jobs = [(c, s) for c in cases for s in seeds]
    for case, s in progress(jobs, total=len(jobs), desc="compare", unit="run", enabled=cfg.show_progress):
        log.info("compare: %s seed %d", case.label, s)
        runs.append(
            _train_and_evaluate(cfg, case, s, data, models, out / "runs" / _slug(case.label) / f"seed{s}")
        )
        _write_json(out / "compare.json", cfg, runs, base, None, started)  # partial results survive a kill
    summary = summarize(runs, base, reference, cfg.time_levels)
    markdown = to_markdown(summary, asdict(cfg), command)
    _write_json(out / "compare.json", cfg, runs, base, summary, started)
    (out / "compare.md").write_text(markdown)
    if cfg.plots:
        write_plots(summary, out)
    return {"config": asdict(cfg), "runs": runs, "base": base, "summary": summary, "markdown": markdown}


def _slug(label: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in label)


def _write_json(path: Path, cfg: CompareConfig, runs, base, summary, started: float) -> None:
    from dataclasses import asdict

    from easytune.bench.env import environment

    doc = {
        "what": "easytune compare: methods x seeds at an equal budget, evaluated on the same prompts, noise",
        "date": time.strftime("%Y-%m-%d"),
        "wall_seconds": round(time.time() - started, 1),
        "environment": environment(),
        "config": asdict(cfg),
        "base": base,
        "runs": runs,
        "summary": summary,
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=float))
    tmp.replace(path)
