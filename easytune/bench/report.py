"""``easytune bench report RESULTS... --out DIR``: a markdown report and PNG plots from result files.

Writes ``DIR/report.md`` (the environment of every input, the method table with the three targets
checked, time to reward, kernel timings with speed-ups and skip reasons) and, when the rows exist,
``memory_vs_k.png``, ``seconds_per_update.png``, ``kernel_speedups.png``, ``reward_curves.png``
(matplotlib is imported only here, with the non-interactive Agg backend).
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from easytune.bench.results import ResultSet

MiB = 1024**2
# Targets (docs/bench.md): EasyTune peak flat in K, additional memory and seconds/update vs DRaFT-50.
FLAT_IN_K = 0.05
ADDITIONAL_VS_DRAFT50 = 0.15
SECONDS_VS_DRAFT50 = 0.25


def _mib(value: Any) -> str:
    return "-" if value is None else f"{value / MiB:,.1f}"


def _num(value: Any, fmt: str = ".3g") -> str:
    return "-" if value is None else format(value, fmt)


def _rows(sets: list[ResultSet], kind: str) -> list[dict[str, Any]]:
    return [r for s in sets for r in s.rows if r.get("kind") == kind]


def _group_key(row: dict[str, Any]) -> tuple:
    return (
        row.get("preset"),
        row.get("device"),
        row.get("batch"),
        row.get("dtype"),
        bool(row.get("checkpoint_frozen")),
        row.get("frame_layout") or "padded",  # rows written before the option ran padded
    )


def method_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (preset, device, batch, dtype) group with EasyTune rows: the three targets, each with its
    measured value, threshold and verdict (``pass``, ``FAIL`` or ``n/a`` with what is missing)."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r.get("status") not in ("skipped", "failed"):
            groups[_group_key(r)].append(r)
    out = []
    for key, members in sorted(groups.items(), key=lambda kv: str(kv[0])):
        easy = [r for r in members if r.get("method") == "EasyTune"]
        if not easy:
            continue
        draft50 = next((r for r in members if r.get("method") == "DRaFT" and r.get("k") == 50), None)
        label = "preset={} device={} batch={} dtype={} checkpoint_frozen={} frame_layout={}".format(*key)
        peaks = [r["peak_bytes"] for r in easy if r.get("peak_bytes")]
        checks = []
        if len(peaks) >= 2:
            spread = (max(peaks) - min(peaks)) / min(peaks)
            checks.append(
                (
                    "EasyTune peak memory flat in K",
                    f"{spread:.1%} spread over K={sorted(r['k'] for r in easy)}",
                    f"<= {FLAT_IN_K:.0%}",
                    spread <= FLAT_IN_K,
                )
            )
        else:
            checks.append(("EasyTune peak memory flat in K", "needs >= 2 EasyTune K values", "", None))
        if draft50 and draft50.get("additional_bytes"):
            worst = max(easy, key=lambda r: r.get("additional_bytes") or 0)
            ratio = (worst.get("additional_bytes") or 0) / draft50["additional_bytes"]
            checks.append(
                (
                    "EasyTune additional memory / DRaFT-50's",
                    f"{ratio:.1%} (K={worst.get('k')})",
                    f"<= {ADDITIONAL_VS_DRAFT50:.0%}",
                    ratio <= ADDITIONAL_VS_DRAFT50,
                )
            )
            # Per K: EasyTune-1 makes one update per trajectory like DRaFT, so its ratio is reported,
            # not hidden behind the best K.
            for field, what in (("seconds_per_update", "wall"), ("cpu_seconds_per_update", "CPU")):
                if not draft50.get(field):
                    continue
                for r in sorted((r for r in easy if r.get(field)), key=lambda r: r.get("k") or 0):
                    ratio = r[field] / draft50[field]
                    checks.append(
                        (
                            f"EasyTune-{r.get('k')} {what} seconds/update / DRaFT-50's",
                            f"{ratio:.3f}",
                            f"<= {SECONDS_VS_DRAFT50:.2f}",
                            ratio <= SECONDS_VS_DRAFT50,
                        )
                    )
        else:
            checks.append(("EasyTune vs DRaFT-50", "no DRaFT-50 row with additional memory", "", None))
        for name, value, threshold, ok in checks:
            verdict = "n/a" if ok is None else "pass" if ok else "FAIL"
            out.append(
                {
                    "group": label,
                    "target": name,
                    "measured": value,
                    "threshold": threshold,
                    "verdict": verdict,
                }
            )
    return out


def _environment_md(sets: list[ResultSet]) -> list[str]:
    lines = ["## Environment", ""]
    keys = (
        "date",
        "device",
        "gpu_name",
        "driver",
        "cpu",
        "cpu_count",
        "torch_threads",
        "torch",
        "triton",
        "cuda_runtime",
        "commit",
        "dirty",
    )
    for s in sets:
        env = s.environment
        lines.append(
            f"- `{os.path.basename(s.path)}`: "
            + ", ".join(f"{k}={env[k]}" for k in keys if env.get(k) is not None)
        )
        if env.get("config"):
            lines.append(f"  - config: `{env['config']}`")
    return lines + [""]


def _methods_md(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    lines = [
        "## Methods (one trainer step = one sampled trajectory)",
        "",
        "| method | K | preset | device | batch | peak MiB | no-grad peak MiB | additional MiB | saved MiB "
        "| s/step | updates/step | s/update | samples/s | CPU s/update |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (str(_group_key(r)), str(r.get("method")), r.get("k") or 0)):
        preset = f"{r.get('preset')}" + (" (ckpt)" if r.get("checkpoint_frozen") else "")
        preset += " (packed)" if r.get("frame_layout") == "packed" else ""
        cells = [r.get("method"), _num(r.get("k"), "d"), preset, r.get("device"), r.get("batch")]
        if r.get("status") in ("skipped", "failed"):
            lines.append(
                "| " + " | ".join(map(str, cells)) + f" | {r['status']}: {r.get('reason')} |||||||||"
            )
            continue
        cells += [
            _mib(r.get(f)) for f in ("peak_bytes", "nograd_peak_bytes", "additional_bytes", "saved_bytes")
        ]
        cells += [
            _num(r.get(f))
            for f in (
                "seconds_per_step",
                "updates_per_step",
                "seconds_per_update",
                "samples_per_second",
                "cpu_seconds_per_update",
            )
        ]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    memory_method = sorted({str(r.get("memory_method")) for r in rows if r.get("memory_method")})
    lines += [
        "",
        f"Peak memory measured by: {', '.join(memory_method) or '-'}; saved = peak bytes held by "
        "autograd for backward (saved_tensors_hooks, parameters excluded). s = wall seconds; CPU s = "
        "process CPU seconds (CPU runs only; unaffected by other processes sharing the cores). (ckpt): "
        "activation checkpointing of the frozen VAE and reward model, whose recomputed activations the "
        "saved column does not see.",
        "",
    ]
    targets = method_targets(rows)
    if targets:
        lines += [
            "### Targets",
            "",
            "| group | target | measured | threshold | verdict |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {t['group']} | {t['target']} | {t['measured']} | {t['threshold']} | {t['verdict']} |"
            for t in targets
        ]
        lines.append("")
    return lines


def _ttr_label(row: dict[str, Any]) -> str:
    """Method, preset and batch of a time-to-reward or reward-curve row, with its learning rate."""
    lr = row.get("lr")
    return f"{row['method']}/{row.get('preset')}/b{row.get('batch')}" + ("" if lr is None else f" lr {lr:g}")


def _time_to_reward_md(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    levels = sorted({r["level"] for r in rows})
    methods = sorted({_ttr_label(r) for r in rows})
    cell = {(_ttr_label(r), r["level"]): r for r in rows}
    lines = [
        "## Time to reward",
        "",
        "Training seconds (clock paused during evaluation; clock: "
        + ", ".join(sorted({str(r.get("clock", "wall")) for r in rows}))
        + ", cpu = process CPU seconds) until the evaluation reward (fixed noise, same captions) first "
        "reaches the level; wall seconds in parentheses.",
        "",
        "| method | " + " | ".join(f"{lv:g}" for lv in levels) + " |",
        "|---|" + "---|" * len(levels),
    ]
    for m in methods:
        vals = []
        for lv in levels:
            r = cell.get((m, lv))
            t = None if r is None else r.get("time_to_reward_s")
            wall = None if r is None else r.get("wall_time_to_reward_s")
            text = "not reached" if r is not None and t is None else _num(t, ".1f")
            vals.append(text if wall is None or wall == t else f"{text} ({wall:.1f})")
        lines.append(f"| {m} | " + " | ".join(vals) + " |")
    return lines + [""]


def _us(value: Any) -> str:
    return "-" if value is None else f"{value * 1e6:,.1f}"


def _spread(row: dict[str, Any]) -> str:
    """p20-p80 in µs (pytest-benchmark rows have quartiles instead: shown as q1-q3)."""
    if row.get("p20_s") is not None:
        return f"{_us(row['p20_s'])}-{_us(row.get('p80_s'))}"
    if row.get("q1_s") is not None:
        return f"q1-q3 {_us(row['q1_s'])}-{_us(row.get('q3_s'))}"
    return "-"


def _kernels_md(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    lines = [
        "## Kernels",
        "",
        "Median and 20th-80th percentile of one call; speed-up = baseline median / median "
        "(same op, shape, dtype, device, pass); max abs err = forward output vs a float64 reference.",
        "",
        "| op | pass | shape | dtype | device | impl | median µs | p20-p80 µs | speed-up | TFLOP/s | GB/s "
        "| max abs err | timer |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    timed = [r for r in rows if r.get("status") != "skipped"]
    for r in sorted(
        timed, key=lambda r: tuple(str(r.get(f)) for f in ("op", "shape", "device", "pass", "impl"))
    ):
        lines.append(
            f"| {r.get('op')} | {r.get('pass')} | {r.get('shape')} | {r.get('dtype')} | {r.get('device')} "
            f"| {r.get('impl')} | {_us(r.get('median_s'))} | {_spread(r)} "
            f"| {_num(r.get('speedup'), '.2f')} (vs {r.get('baseline_impl')}) | {_num(r.get('tflops'))} "
            f"| {_num(r.get('gbps'))} | {_num(r.get('max_abs_err'), '.1e')} | {r.get('timer')} |"
        )
    skipped: dict[tuple, list[str]] = defaultdict(list)
    for r in rows:
        if r.get("status") == "skipped":
            skipped[(r.get("op"), r.get("shape"), r.get("device"), r.get("impl"), r.get("reason"))].append(
                r["pass"]
            )
    if skipped:
        lines += ["", "Skipped:", ""]
        lines += [
            f"- {op} {shape} {device} `{impl}` ({', '.join(passes)}): {reason}"
            for (op, shape, device, impl, reason), passes in sorted(
                skipped.items(), key=lambda kv: str(kv[0])
            )
        ]
    return lines + [""]


def _plot_memory_vs_k(plt: Any, rows: list[dict[str, Any]], path: Path) -> bool:
    series: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r.get("peak_bytes") and r.get("k") is not None and r.get("method") in ("EasyTune", "DRaFT"):
            series[(r["method"], *_group_key(r))].append(r)
    if not series:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for (method, preset, device, batch, _, ckpt, layout), members in sorted(
        series.items(), key=lambda kv: str(kv[0])
    ):
        members.sort(key=lambda r: r["k"])
        ks = [r["k"] for r in members]
        for ax, field in zip(axes, ("peak_bytes", "additional_bytes")):
            ax.plot(
                ks,
                [(r.get(field) or 0) / MiB for r in members],
                marker="o",
                label=f"{method} {preset} {device} b{batch}"
                + (" ckpt" if ckpt else "")
                + (" packed" if layout == "packed" else ""),
            )
    for ax, title in zip(axes, ("peak memory (MiB)", "additional over no-grad sampling (MiB)")):
        ax.set_yscale("log")  # batch sizes 2..64 share the axes
        ax.set_xlabel("K (steps with gradients)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _plot_bars(
    plt: Any, labels: list[str], values: list[float], title: str, path: Path, ref: float | None
) -> None:
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(labels) + 2), 4.5))
    ax.bar(range(len(values)), values)
    ax.set_xticks(range(len(values)), labels, rotation=70, ha="right", fontsize=7)
    if ref is not None:
        ax.axhline(ref, color="k", lw=0.8)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_reward_curves(plt: Any, rows: list[dict[str, Any]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    clocks = sorted({r.get("clock", "wall") for r in rows})
    for r in rows:
        ax.plot(r[f"{r.get('clock', 'wall')}_s"], r["reward"], label=_ttr_label(r))
    ax.set_xlabel(f"training seconds ({', '.join(clocks)} clock)")
    ax.set_ylabel("evaluation reward (batch mean, fixed noise)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _overhead_md(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    lines = ["## Overhead (`easytune bench overhead`)", ""]
    ops = [r for r in rows if "op" in r]
    if ops:
        lines += [
            "| op | backend | auto us | bare us | overhead us | dispatch us (backend stubbed) | target |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['op']} | {r['backend']} | {_num(r['auto_us'])} | {_num(r['bare_us'])} | "
            f"{_num(r['overhead_us'])} | {_num(r.get('dispatch_us'))} | {r.get('target_us') or '-'} |"
            for r in ops
        ]
    for r in rows:
        if "ratio" in r:
            compiled = f", compiled ratio {_num(r['compiled_ratio'])}" if r.get("compiled_ratio") else ""
            lines += [
                "",
                f"- {r['case']}: easytune {_num(r['easytune_s'] * 1e3)} ms, hand-written "
                f"{_num(r['hand_s'] * 1e3)} ms, ratio {_num(r['ratio'])} "
                f"(target {r['target_ratio']}){compiled}",
            ]
    return lines + [""]


def _profile_md(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    lines = ["## Profile of EasyTune updates", ""]
    for r in rows:
        busy = r.get("busy_fraction")
        lines.append(
            f"- {r['case']}: {_num(r['kernels_per_update'])} {r['what']} per update, "
            f"{_num(r['seconds_per_update'])} s per update, "
            f"GPU busy {'n/a' if busy is None else _num(busy)}; top: "
            + ", ".join(f"{k['name'][:48]} {_num(k['total_ms'])} ms" for k in r.get("top_kernels", [])[:5])
        )
    return lines + [""]


def write_report(
    sets: list[ResultSet], out_dir: str | os.PathLike, levels: list[float] | None = None
) -> list[Path]:
    """Write ``report.md`` and the plots the rows allow into ``out_dir``; returns the written paths.
    ``levels``: time to reward at these reward levels, recomputed from the stored reward curves (instead
    of the levels chosen at run time)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    methods, kernels = _rows(sets, "method"), _rows(sets, "kernel")
    ttr, curves = _rows(sets, "time_to_reward"), _rows(sets, "reward_curve")
    if levels:
        from easytune.bench.reward_time import level_rows

        ttr = [row for curve in curves for row in level_rows(curve, levels)]
    ceilings = _rows(sets, "ceilings")
    lines = ["# easytune benchmark report", "", *_environment_md(sets)]
    if ceilings:
        lines += ["## Measured ceilings", ""]
        lines += [
            f"- {c.get('device')}: copy {c.get('copy_bytes_per_s', 0) / 1e9:.1f} GB/s; "
            + ", ".join(
                f"matmul {k.removeprefix('matmul_flops_per_s_')} {v / 1e12:.2f} TFLOP/s"
                for k, v in c.items()
                if k.startswith("matmul_flops_per_s_")
            )
            for c in ceilings
        ]
        lines.append("")
    lines += _methods_md(methods) + _time_to_reward_md(ttr) + _kernels_md(kernels)
    lines += _overhead_md(_rows(sets, "overhead")) + _profile_md(_rows(sets, "profile"))
    written = [out / "report.md"]
    written[0].write_text("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if _plot_memory_vs_k(plt, methods, out / "memory_vs_k.png"):
        written.append(out / "memory_vs_k.png")
    timed = [r for r in methods if r.get("seconds_per_update")]
    if timed:
        _plot_bars(
            plt,
            [f"{r['case']}" for r in timed],
            [r["seconds_per_update"] for r in timed],
            "seconds per optimizer update",
            out / "seconds_per_update.png",
            None,
        )
        written.append(out / "seconds_per_update.png")
    fast = [r for r in kernels if r.get("speedup") and r.get("impl") != r.get("baseline_impl")]
    if fast:
        _plot_bars(
            plt,
            [f"{r['op']}/{r['shape']}/{r['impl']}/{r['pass']}" for r in fast],
            [r["speedup"] for r in fast],
            "kernel speed-up over the baseline (1 = same)",
            out / "kernel_speedups.png",
            1.0,
        )
        written.append(out / "kernel_speedups.png")
    if curves:
        _plot_reward_curves(plt, curves, out / "reward_curves.png")
        written.append(out / "reward_curves.png")
    return written
