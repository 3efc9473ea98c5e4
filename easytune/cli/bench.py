"""``easytune bench env | ceilings | methods | overhead | time-to-reward | kernels | report | compare``.

Every measuring command writes an easytune result file (``--json``) whose rows carry the environment
record; ``report`` turns result files into markdown + PNG plots and ``compare`` exits 1 on regressions.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from easytune.cli._common import DEVICE_HELP
from easytune.methods.registry import DEFAULT_BENCH_CASES, TIME_TO_REWARD_CASES
from easytune.training.finetune_config import COMPILE_MODES, PRECISIONS

COMPILE_CHOICES = tuple(m for m in COMPILE_MODES if m)


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench", help="benchmarks: methods, kernels, time to reward; reports, comparisons"
    )
    sub = parser.add_subparsers(dest="bench_command", metavar="ACTION", required=True)

    env = sub.add_parser("env", help="print the environment record and whether NVML is available")
    env.add_argument("--device", default="auto", help=DEVICE_HELP)
    env.set_defaults(func=_env)

    ceil = sub.add_parser("ceilings", help="measure copy bandwidth and matmul throughput of the device")
    ceil.add_argument("--device", default="auto", help=DEVICE_HELP)
    ceil.add_argument(
        "--dtypes", default=None, help="comma-separated (default: float32 on CPU, +bfloat16 on GPU)"
    )
    ceil.add_argument("--json", default=None, help="write a result file here")
    ceil.set_defaults(func=_ceilings)

    m = sub.add_parser(
        "methods", help="memory and time per update of the fine-tuning methods (one row per case)"
    )
    m.add_argument("--preset", default="tiny", choices=("tiny", "mld"))
    m.add_argument("--device", default="auto", help=DEVICE_HELP)
    m.add_argument(
        "--batch", type=int, default=None, help="samples per trajectory (default: 4 on CPU, 64 on GPU)"
    )
    m.add_argument(
        "--cases",
        default=DEFAULT_BENCH_CASES,
        help="comma-separated method specs NAME[-K]: easytune-K, draft-K, draft-lv-N, refl-M, drtune-K, "
        "alignprop "
        f"(default: {DEFAULT_BENCH_CASES})",
    )
    m.add_argument("--steps", type=int, default=50, help="DDIM sampling steps (default 50)")
    m.add_argument("--repeats", type=int, default=2, help="timed trainer steps per case (median reported)")
    m.add_argument(
        "--warmup", type=int, default=1, help="untimed trainer steps first (optimizer state, caches)"
    )
    m.add_argument(
        "--no-isolate",
        action="store_true",
        help="run every case in this process (default: a fresh process per case, for clean peaks)",
    )
    m.add_argument("--seed", type=int, default=0)
    m.add_argument(
        "--checkpoint-frozen",
        action="store_true",
        help="per-layer activation checkpointing in the frozen VAE and reward model (all methods)",
    )
    m.add_argument(
        "--frame-layout",
        choices=("auto", "padded", "packed"),
        default="auto",
        help="frames in the frozen VAE decoder and reward model: padded, or packed (valid frames only); "
        "auto: the measured default of the device type",
    )
    m.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="fp32 | tf32 (TF32 matmuls, CUDA) | bf16 (autocast of denoiser, VAE, reward model)",
    )
    m.add_argument(
        "--compile",
        choices=COMPILE_CHOICES,
        default=None,
        help="torch.compile the denoiser (compile time goes to the row's warmup_seconds)",
    )
    m.add_argument("--json", required=True, help="result file to write")
    m.add_argument("--no-progress", action="store_true", help="no progress bar over the cases")
    m.set_defaults(func=_methods)

    o = sub.add_parser(
        "overhead", help="dispatch overhead per op and sampling-loop overhead against hand-written code"
    )
    o.add_argument("--device", default="auto", help=DEVICE_HELP)
    o.add_argument("--calls", type=int, default=1000, help="calls per timed block (per-op rows)")
    o.add_argument("--blocks", type=int, default=15, help="interleaved timed blocks per function")
    o.add_argument("--loop-blocks", type=int, default=21, help="timed sampling passes per loop")
    o.add_argument("--steps", type=int, default=50, help="DDIM steps of the sampling pass")
    o.add_argument(
        "--compile",
        choices=COMPILE_CHOICES,
        default=None,
        help="also time the sampling pass with the denoiser compiled in this mode",
    )
    o.add_argument("--json", required=True, help="result file to write")
    o.set_defaults(func=_overhead)

    t = sub.add_parser(
        "time-to-reward", help="wall time for each method to reach reward levels (synthetic task)"
    )
    t.add_argument("--preset", default="tiny", choices=("tiny", "mld"))
    t.add_argument("--device", default="auto", help=DEVICE_HELP)
    t.add_argument("--batch", type=int, default=8)
    t.add_argument(
        "--cases", default=TIME_TO_REWARD_CASES, help=f"method cases (default {TIME_TO_REWARD_CASES})"
    )
    t.add_argument(
        "--levels", default=None, help="comma-separated reward levels (default: from the start reward)"
    )
    t.add_argument(
        "--budget-s",
        type=float,
        default=120.0,
        help="training-time budget per method: process CPU seconds on a CPU device, wall seconds on CUDA",
    )
    t.add_argument("--steps", type=int, default=50)
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--checkpoint", default=None, help="MLD checkpoint to start from (default: fresh)")
    t.add_argument("--reward-checkpoint", default=None, help="reward model checkpoint or 'default'")
    t.add_argument("--json", required=True)
    t.add_argument("--no-progress", action="store_true", help="no progress bar over the methods")
    t.set_defaults(func=_time_to_reward)

    k = sub.add_parser(
        "kernels", help="attention, fused guidance+DDIM step and reward head against baselines"
    )
    k.add_argument("--device", default="auto", help=DEVICE_HELP)
    k.add_argument(
        "--dtype", default=None, help="float32 | bfloat16 | float16 (default: float32 CPU, bfloat16 GPU)"
    )
    k.add_argument("--ops", default="attention,guided_step,reward_head")
    k.add_argument("--passes", default="fwd,bwd,fwd+bwd")
    k.add_argument(
        "--attention-shape",
        action="append",
        default=None,
        help="B,H,T,D; repeat for several shapes (default: 4,4,64,32 CPU; 64,4,196,64 GPU)",
    )
    k.add_argument(
        "--flex-cpu", action="store_true", help="include FlexAttention's forward on CPU (slow compile)"
    )
    k.add_argument("--no-ceilings", action="store_true", help="skip measuring the device ceilings")
    k.add_argument("--json", required=True)
    k.add_argument("--no-progress", action="store_true", help="no progress bar over the shapes")
    k.set_defaults(func=_kernels)

    r = sub.add_parser("report", help="markdown table + PNG plots from result files")
    r.add_argument("results", nargs="+", help="easytune result files or pytest --benchmark-json files")
    r.add_argument("--out", required=True, help="folder for report.md and the plots")
    r.add_argument(
        "--levels",
        default=None,
        help="comma-separated reward levels: recompute time to reward from the stored reward curves",
    )
    r.set_defaults(func=_report)

    c = sub.add_parser("compare", help="flag regressions of NEW against a baseline (exit status 1 if any)")
    c.add_argument("new")
    c.add_argument("--baseline", required=True)
    c.add_argument("--tolerance", type=float, default=0.1, help="relative change allowed (0.1 = 10%%)")
    c.add_argument("--fail-on-missing", action="store_true", help="also fail when a baseline case is missing")
    c.add_argument("--out", default=None, help="also write the comparison as markdown here")
    c.set_defaults(func=_compare)


def _env(args: argparse.Namespace) -> int:
    from easytune.bench.env import environment
    from easytune.bench.nvml import nvml_status

    ok, reason = nvml_status()
    print(json.dumps({**environment(args.device), "nvml": "available" if ok else reason}, indent=1))
    return 0


def _write(path: str, rows: list[dict[str, Any]], device: str, config: dict[str, Any]) -> None:
    from easytune.bench.env import environment
    from easytune.bench.results import write_results

    written = write_results(path, rows, environment(device, config))
    print(f"wrote {len(rows)} row(s) to {written}", file=sys.stderr)


def _ceilings(args: argparse.Namespace) -> int:
    from easytune.bench.ceilings import measure_ceilings

    ceilings = measure_ceilings(args.device, tuple(_csv(args.dtypes)) if args.dtypes else None)
    print(json.dumps(ceilings, indent=1))
    if args.json:
        _write(
            args.json,
            [{"kind": "ceilings", "case": f"ceilings/{args.device}", **ceilings}],
            args.device,
            vars_config(args),
        )
    return 0


def vars_config(args: argparse.Namespace) -> dict[str, Any]:
    """The command's options as the result file's config (the handler itself left out)."""
    return {k: v for k, v in vars(args).items() if k != "func"}


def _methods(args: argparse.Namespace) -> int:
    from easytune.bench.methods import parse_cases, run_methods

    rows = run_methods(
        preset=args.preset,
        device=args.device,
        batch=args.batch,
        cases=parse_cases(args.cases),
        steps=args.steps,
        repeats=args.repeats,
        warmup=args.warmup,
        isolate=not args.no_isolate,
        seed=args.seed,
        checkpoint_frozen=args.checkpoint_frozen,
        log=lambda s: print(s, file=sys.stderr),
        precision=args.precision,
        compile=args.compile,
        show_progress=not args.no_progress,
        frame_layout=args.frame_layout,
    )
    _write(args.json, rows, args.device, vars_config(args))
    return 0


def _overhead(args: argparse.Namespace) -> int:
    from easytune.bench.overhead import loop_overhead, op_overhead
    from easytune.errors import ConfigError

    for name in ("calls", "blocks", "loop_blocks", "steps"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    rows = op_overhead(args.device, calls=args.calls, blocks=args.blocks)
    for r in rows:
        print(
            f"[bench overhead] {r['op']:12s} auto {r['auto_us']:8.1f} us, {r['backend']} bare "
            f"{r['bare_us']:8.1f} us, overhead {r['overhead_us']:6.2f} us, "
            f"dispatch {r['dispatch_us']:5.2f} us",
            file=sys.stderr,
        )
    loop = loop_overhead(args.device, args.steps, args.loop_blocks, compile_mode=args.compile)
    print(
        f"[bench overhead] {args.steps}-step sampling pass: easytune {loop['easytune_s'] * 1e3:.1f} ms, "
        f"hand-written {loop['hand_s'] * 1e3:.1f} ms, ratio {loop['ratio']:.3f} "
        f"({loop['bare_attention_ratio']:.3f} with bare SDPA in the layers)"
        + (f", compiled ratio {loop['compiled_ratio']:.3f}" if "compiled_ratio" in loop else ""),
        file=sys.stderr,
    )
    _write(args.json, [*rows, loop], args.device, vars_config(args))
    return 0


def _time_to_reward(args: argparse.Namespace) -> int:
    from easytune.bench.methods import parse_cases
    from easytune.bench.reward_time import run_time_to_reward

    levels = [float(x) for x in _csv(args.levels)] if args.levels else None
    rows = run_time_to_reward(
        preset=args.preset,
        device=args.device,
        batch=args.batch,
        cases=parse_cases(args.cases),
        levels=levels,
        budget_s=args.budget_s,
        steps=args.steps,
        lr=args.lr,
        seed=args.seed,
        checkpoint=args.checkpoint,
        reward_checkpoint=args.reward_checkpoint,
        log=lambda s: print(s, file=sys.stderr),
        show_progress=not args.no_progress,
    )
    _write(args.json, rows, args.device, vars_config(args))
    return 0


def _kernels(args: argparse.Namespace) -> int:
    import torch

    from easytune.bench.ceilings import measure_ceilings
    from easytune.bench.kernels import parse_attention_shape, run_kernels

    dtype = args.dtype or ("bfloat16" if torch.device(args.device).type == "cuda" else "float32")
    shapes = (
        {"attention": [parse_attention_shape(text) for text in args.attention_shape]}
        if args.attention_shape
        else None
    )
    ceilings = None if args.no_ceilings else measure_ceilings(args.device)
    rows = run_kernels(
        args.device,
        dtype,
        _csv(args.ops),
        _csv(args.passes),
        shapes,
        ceilings,
        args.flex_cpu,
        show_progress=not args.no_progress,
    )
    if ceilings:
        rows.insert(0, {"kind": "ceilings", "case": f"ceilings/{args.device}", **ceilings})
    _write(args.json, rows, args.device, vars_config(args))
    return 0


def _report(args: argparse.Namespace) -> int:
    from easytune.bench.report import write_report
    from easytune.bench.results import load_results

    levels = [float(x) for x in _csv(args.levels)] if args.levels else None
    for path in write_report([load_results(p) for p in args.results], args.out, levels=levels):
        print(path)
    return 0


def _compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from easytune.bench.compare import compare
    from easytune.bench.results import load_results

    result = compare(load_results(args.new), load_results(args.baseline), args.tolerance)
    text = result.to_markdown()
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 1 if result.failed(args.fail_on_missing) else 0
