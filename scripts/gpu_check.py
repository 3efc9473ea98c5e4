#!/usr/bin/env python3
"""``make gpu-check``: every GPU test and benchmark of easytune in one short, unattended pass.

Runs on a bare GPU machine from the source tree (no install, no network, no pip): python 3.10+ with torch
(CUDA), triton, pytest, numpy, tqdm, safetensors. Each stage runs in its own process with its own
timeout; a failing or timed-out stage is recorded and the next one runs. Results (at most 8 files) go to
``--out`` (default ``$OUT``, else ``gpu-check-out``): ``env.json``, ``tests.json``, ``kernels.json``,
``methods.json``, ``profile.json``, ``time_to_reward.json``, ``summary.md`` (printed last) and ``log.txt``.

Stages (GPU sizes; ``--dry-run``: the same on the CPU at tiny sizes, skipping only what needs CUDA):
  0 env       nvidia-smi, versions, ``easytune info``, the SDPA backend torch picks for the masked bf16
              attention shape, the measured copy bandwidth and bf16 matmul rate (the two ceilings)
  1 tests     the ``gpu``-marked tests with compiled kernels (TRITON_INTERPRET=0)
  2 kernels   attention fwd/bwd at B=128, H=4, D=64, T in {64, 196} (bf16, random padding) against
              SDPA with the mask, FlexAttention and cuda; guided step and reward head against copy bandwidth
  3 methods   ``bench methods --preset mld --batch 64``: EasyTune-1/10/50, DRaFT-1/10/50 eager fp32, and
              EasyTune-10 / DRaFT-50 on the fast path (reduce-overhead CUDA graphs + bf16), each also with
              ``--checkpoint-frozen`` and with ``--frame-layout packed`` (the rest padded)
  4 profile   one EasyTune-10 trajectory under the profiler (kernels per update, top kernels, GPU busy)
  5 ttr       time to reward, EasyTune-10 vs DRaFT-50, mld preset, 60 s each

The CUDA library (``libeasytune_cuda.so``) is used from ``build/csrc`` when it was carried there (built on
any machine with ``make cuda-build``); otherwise it is built here when nvcc and cmake exist. The Triton
cache goes to ``build/triton-cache`` so a second run on a still-warm machine reuses it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the driver reads and writes result files with easytune itself
WORK = ROOT / "build" / "gpu-check-work"  # intermediates (never returned)
FILES = ("env.json", "tests.json", "kernels.json", "methods.json", "profile.json", "time_to_reward.json")
# Expected fields of each output file: the dry run (and CI through it) checks them.
EXPECTED = {
    "env.json": ("date", "python", "torch", "cuda_available", "sdpa_backend", "ceilings", "info"),
    "tests.json": ("passed", "failed", "skipped", "errors", "failures", "returncode"),
    "kernels.json": ("rows",),
    "methods.json": ("rows",),
    "profile.json": ("rows",),
    "time_to_reward.json": ("rows",),
}
STAGES = ("env", "tests", "kernels", "methods", "profile", "ttr")


# --------------------------------------------------------------------------------------------- sizes
def sizes(dry: bool) -> dict[str, Any]:
    """What each stage runs, at GPU size or (dry run) tiny CPU size; the stage timeouts in seconds."""
    if dry:
        return {
            "device": "cpu",
            "attention_shapes": ["2,2,16,16", "2,2,24,16"],
            "kernel_dtype": "float32",
            "methods_preset": "tiny",
            "methods_batch": 2,
            "methods_steps": 4,
            "eager_cases": "easytune-1,easytune-2,draft-1,draft-2",
            "fast_cases": "easytune-2,draft-2",
            "fast": {"precision": "bf16", "compile": None},  # compiling on 2 CPU cores takes minutes
            "profile": {"preset": "tiny", "batch": 2, "k": 2, "steps": 4},
            "ttr": {"preset": "tiny", "batch": 2, "steps": 4, "budget_s": 2, "cases": "easytune-2,draft-2"},
            "timeouts": {
                "env": 120,
                "tests": 300,
                "kernels": 300,
                "methods": 600,
                "profile": 120,
                "ttr": 300,
            },
        }
    return {
        "device": "cuda",
        "attention_shapes": ["128,4,64,64", "128,4,196,64"],
        "kernel_dtype": "bfloat16",
        "methods_preset": "mld",
        "methods_batch": 64,
        "methods_steps": 50,
        "eager_cases": "easytune-1,easytune-10,easytune-50,draft-1,draft-10,draft-50",
        "fast_cases": "easytune-10,draft-50",
        "fast": {"precision": "bf16", "compile": "reduce-overhead"},
        "profile": {"preset": "mld", "batch": 64, "k": 10, "steps": 50},
        "ttr": {"preset": "mld", "batch": 64, "steps": 50, "budget_s": 60, "cases": "easytune-10,draft-50"},
        # 500 s in all (a stage that finishes early leaves the slack unused)
        "timeouts": {"env": 30, "tests": 75, "kernels": 55, "methods": 170, "profile": 30, "ttr": 140},
    }


# --------------------------------------------------------------------------------------------- running
class Log:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.write_text("")

    def __call__(self, text: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {text}"
        print(line, file=sys.stderr, flush=True)
        with self.path.open("a") as f:
            f.write(line + "\n")


def environment(dry: bool) -> dict[str, str]:
    """The child processes' environment: the source tree importable (``easytune`` and ``easytune_kernels``),
    compiled Triton on a GPU, the Triton cache in ``build/``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["TRITON_INTERPRET"] = "1" if dry else "0"
    env.setdefault("TRITON_CACHE_DIR", str(ROOT / "build" / "triton-cache"))
    env.setdefault("OMP_NUM_THREADS", "2" if dry else str(min(8, os.cpu_count() or 1)))
    return env


def run(cmd: list[str], env: dict[str, str], timeout: float, log: Log, name: str) -> dict[str, Any]:
    """Run one command; never raises. Returns status (ok | failed | timeout), seconds, return code, tail."""
    log(f"{name}: {' '.join(cmd)}  (timeout {timeout:.0f} s)")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        status = "ok" if proc.returncode == 0 else "failed"
        out, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as err:
        status, code = "timeout", None
        out = (
            (err.stdout or b"").decode(errors="replace")
            if isinstance(err.stdout, bytes)
            else (err.stdout or "")
        )
    seconds = time.perf_counter() - t0
    with log.path.open("a") as f:
        f.write(out[-20000:] + "\n")
    log(f"{name}: {status} in {seconds:.1f} s" + ("" if code in (0, None) else f" (exit {code})"))
    return {"status": status, "seconds": seconds, "returncode": code, "tail": out[-2000:]}


def easytune(*args: str) -> list[str]:
    return [sys.executable, "-m", "easytune.cli", *args]


def merge_results(paths: list[Path], out: Path) -> int:
    """Concatenate the rows of easytune result files into one result file (the first file's environment),
    readable by ``easytune bench report``; returns the number of rows."""
    from easytune.bench.results import write_results

    rows, env = [], None
    for p in paths:
        if p.is_file():
            doc = json.loads(p.read_text())
            env = env or doc.get("environment")
            rows += doc.get("rows", [])
    write_results(out, rows, env or {})
    return len(rows)


# --------------------------------------------------------------------------------------------- stages
def stage_env(out: Path, dry: bool, cfg: dict[str, Any], env: dict[str, str], log: Log) -> dict[str, Any]:
    smi = shutil.which("nvidia-smi")
    record: dict[str, Any] = {}
    if smi:
        res = run([smi], env, 30, log, "env/nvidia-smi")
        record["nvidia_smi"] = res["tail"]
        q = run(
            [smi, "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv"],
            env,
            30,
            log,
            "env/nvidia-smi-query",
        )
        record["nvidia_smi_query"] = q["tail"]
    else:
        record["nvidia_smi"] = "nvidia-smi not found"
    probe = WORK / "env-probe.json"
    probe.unlink(missing_ok=True)
    code = (
        "import json, sys; from easytune.bench.env import environment_probe; "
        "json.dump(environment_probe(sys.argv[1], tuple(map(int, sys.argv[2].split(',')))), "
        "open(sys.argv[3], 'w'), indent=1, default=str)"
    )
    shape = cfg["attention_shapes"][-1]
    res = run(
        [sys.executable, "-c", code, cfg["device"], shape, str(probe)],
        env,
        cfg["timeouts"]["env"],
        log,
        "env/probe",
    )
    if probe.is_file():
        record.update(json.loads(probe.read_text()))
    else:
        record.update({k: None for k in EXPECTED["env.json"] if k not in record})
        record["error"] = res["tail"]
    (out / "env.json").write_text(json.dumps(record, indent=1, default=str))
    return res


def stage_tests(out: Path, dry: bool, cfg: dict[str, Any], env: dict[str, str], log: Log) -> dict[str, Any]:
    junit = WORK / "tests.xml"
    junit.unlink(missing_ok=True)
    tests = [
        "tests/test_kernels_gpu.py",
        "tests/test_cuda_ops.py",
        "tests/test_kernels_compile.py",
        "tests/test_sync_free.py",
        "tests/test_compile_trainer.py",
        "tests/test_trainer.py",
    ]
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-m",
        "gpu",
        "-p",
        "no:cacheprovider",
        f"--junitxml={junit}",
        *tests,
    ]
    res = run(cmd, env, cfg["timeouts"]["tests"], log, "tests")
    summary = {
        "passed": 0,
        "failed": 0,
        "skipped": 0,
        "errors": 0,
        "failures": [],
        "returncode": res["returncode"],
    }
    if junit.is_file():
        import xml.etree.ElementTree as ET

        for case in ET.parse(junit).getroot().iter("testcase"):
            name = f"{case.get('classname')}::{case.get('name')}"
            if case.find("failure") is not None or case.find("error") is not None:
                node = case.find("failure") if case.find("failure") is not None else case.find("error")
                summary["failed" if case.find("failure") is not None else "errors"] += 1
                summary["failures"].append({"test": name, "message": (node.get("message") or "")[:500]})
            elif case.find("skipped") is not None:
                summary["skipped"] += 1
            else:
                summary["passed"] += 1
    summary["status"] = res["status"]
    summary["tail"] = res["tail"][-1500:]
    (out / "tests.json").write_text(json.dumps(summary, indent=1))
    # pytest exits 5 when everything was deselected/skipped: that is fine for the stage
    if res["returncode"] == 5:
        res["status"] = "ok"
    return res


def stage_kernels(out: Path, dry: bool, cfg: dict[str, Any], env: dict[str, str], log: Log) -> dict[str, Any]:
    path = WORK / "kernels.json"
    path.unlink(missing_ok=True)
    cmd = easytune(
        "bench", "kernels", "--device", cfg["device"], "--dtype", cfg["kernel_dtype"], "--json", str(path)
    )
    for shape in cfg["attention_shapes"]:
        cmd += ["--attention-shape", shape]
    res = run(cmd, env, cfg["timeouts"]["kernels"], log, "kernels")
    merge_results([path], out / "kernels.json")
    return res


def stage_methods(out: Path, dry: bool, cfg: dict[str, Any], env: dict[str, str], log: Log) -> dict[str, Any]:
    runs = []
    budget = cfg["timeouts"]["methods"]
    t0 = time.perf_counter()
    variants = [  # name, cases, fast path, checkpoint_frozen, frame layout of the frozen models
        ("eager", cfg["eager_cases"], {}, False, "padded"),
        ("eager-packed", cfg["fast_cases"], {}, False, "packed"),
        ("eager-ckpt", cfg["fast_cases"], {}, True, "padded"),
        ("fast", cfg["fast_cases"], cfg["fast"], False, "padded"),
        ("fast-packed", cfg["fast_cases"], cfg["fast"], False, "packed"),
        ("fast-ckpt", cfg["fast_cases"], cfg["fast"], True, "padded"),
    ]
    statuses = []
    for name, cases, fast, ckpt, layout in variants:
        left = budget - (time.perf_counter() - t0)
        if left < 10:
            log(f"methods/{name}: skipped (stage budget spent)")
            statuses.append("timeout")
            continue
        path = WORK / f"methods-{name}.json"
        path.unlink(missing_ok=True)
        cmd = easytune(
            "bench",
            "methods",
            "--preset",
            cfg["methods_preset"],
            "--device",
            cfg["device"],
            "--batch",
            str(cfg["methods_batch"]),
            "--steps",
            str(cfg["methods_steps"]),
            "--cases",
            cases,
            "--repeats",
            "2",
            "--warmup",
            "1",
            "--json",
            str(path),
        )
        if not dry:  # one process for all cases: no interpreter start per case (peaks are reset per case)
            cmd += ["--no-isolate"]
        if fast.get("precision"):
            cmd += ["--precision", fast["precision"]]
        if fast.get("compile"):
            cmd += ["--compile", fast["compile"]]
        if ckpt:
            cmd += ["--checkpoint-frozen"]
        cmd += ["--frame-layout", layout]
        statuses.append(run(cmd, env, left, log, f"methods/{name}")["status"])
        runs.append(path)
    merge_results(runs, out / "methods.json")
    worst = "ok" if all(s == "ok" for s in statuses) else ("timeout" if "timeout" in statuses else "failed")
    return {"status": worst, "seconds": time.perf_counter() - t0, "returncode": None, "tail": ""}


def stage_profile(out: Path, dry: bool, cfg: dict[str, Any], env: dict[str, str], log: Log) -> dict[str, Any]:
    p = cfg["profile"]
    rows_path = WORK / "profile-rows.json"
    rows_path.unlink(missing_ok=True)
    code = f"""
import json
from easytune.bench.profile import profile_updates
rows = [profile_updates({p["preset"]!r}, {cfg["device"]!r}, {p["batch"]}, {p["k"]}, {p["steps"]})]
fast = {cfg["fast"]!r}
rows.append(profile_updates({p["preset"]!r}, {cfg["device"]!r}, {p["batch"]}, {p["k"]}, {p["steps"]},
                            precision=fast["precision"], compile=fast["compile"]))
json.dump(rows, open({str(rows_path)!r}, "w"), indent=1)
"""
    res = run([sys.executable, "-c", code], env, cfg["timeouts"]["profile"], log, "profile")
    rows = json.loads(rows_path.read_text()) if rows_path.is_file() else []
    from easytune.bench.results import write_results

    probe = json.loads((out / "env.json").read_text()) if (out / "env.json").is_file() else {}
    write_results(out / "profile.json", rows, probe.get("environment") or {})
    return res


def stage_ttr(out: Path, dry: bool, cfg: dict[str, Any], env: dict[str, str], log: Log) -> dict[str, Any]:
    t = cfg["ttr"]
    path = WORK / "ttr.json"
    path.unlink(missing_ok=True)
    cmd = easytune(
        "bench",
        "time-to-reward",
        "--preset",
        t["preset"],
        "--device",
        cfg["device"],
        "--batch",
        str(t["batch"]),
        "--steps",
        str(t["steps"]),
        "--budget-s",
        str(t["budget_s"]),
        "--cases",
        t["cases"],
        "--json",
        str(path),
    )
    res = run(cmd, env, cfg["timeouts"]["ttr"], log, "ttr")
    merge_results([path], out / "time_to_reward.json")
    return res


# --------------------------------------------------------------------------------------------- summary
def _rows(out: Path, name: str) -> list[dict[str, Any]]:
    path = out / name
    if not path.is_file():
        return []
    return [r for r in json.loads(path.read_text()).get("rows", []) if isinstance(r, dict)]


def summary_md(out: Path, results: dict[str, dict[str, Any]], dry: bool, started: str) -> str:
    lines = [f"# easytune gpu-check{' (dry run, CPU)' if dry else ''}", "", f"started {started}", ""]
    envj = json.loads((out / "env.json").read_text()) if (out / "env.json").is_file() else {}
    gpu = (envj.get("environment") or {}).get("gpu_name")
    lines += [
        f"torch {envj.get('torch')} (CUDA {envj.get('cuda_runtime')}), triton {envj.get('triton')}, "
        f"python {envj.get('python')}; device: {gpu or 'no GPU'}",
        "",
    ]
    ceil = envj.get("ceilings") or {}
    if ceil:
        flops = {k: v for k, v in ceil.items() if k.startswith("matmul_flops_per_s")}
        lines += [
            f"ceilings: copy {ceil.get('copy_bytes_per_s', 0) / 1e9:.0f} GB/s; "
            + ", ".join(f"{k.split('_')[-1]} matmul {v / 1e12:.1f} TFLOP/s" for k, v in flops.items()),
            "",
        ]
    if envj.get("sdpa_backend"):
        lines += [
            f"SDPA with the padding mask runs: {', '.join(envj['sdpa_backend'].get('kernels', []))}",
            "",
        ]
    lines += ["| stage | status | seconds |", "|---|---|---|"]
    lines += [f"| {name} | {r['status']} | {r['seconds']:.1f} |" for name, r in results.items()]
    tests = json.loads((out / "tests.json").read_text()) if (out / "tests.json").is_file() else {}
    if tests:
        lines += [
            "",
            f"tests: {tests.get('passed')} passed, {tests.get('failed')} failed, "
            f"{tests.get('errors')} errors, {tests.get('skipped')} skipped",
        ]
        lines += [f"- FAILED {f['test']}: {f['message'][:200]}" for f in tests.get("failures", [])]
    kernels = [
        r for r in _rows(out, "kernels.json") if r.get("kind") == "kernel" and r.get("status") != "skipped"
    ]
    if kernels:
        lines += ["", "| kernel case | median ms | speedup vs baseline | GB/s of peak |", "|---|---|---|---|"]
        for r in kernels:
            lines.append(
                f"| {r['case']} | {r.get('median_s', 0) * 1e3:.3f} | {r.get('speedup') or '-'} | "
                f"{r.get('gbps_of_peak') or '-'} |"
            )
    methods = [r for r in _rows(out, "methods.json") if r.get("kind") == "method"]
    if methods:
        lines += [
            "",
            "| method case | peak MiB | additional MiB | s / update | backends |",
            "|---|---|---|---|---|",
        ]
        for r in methods:
            if r.get("status") == "failed":
                lines.append(f"| {r['case']} | failed: {str(r.get('reason'))[:80]} | | | |")
                continue
            backends = ", ".join(f"{op}:{'/'.join(b)}" for op, b in (r.get("backends") or {}).items())
            lines.append(
                f"| {r['case']} | {r['peak_bytes'] / 2**20:.0f} | {r['additional_bytes'] / 2**20:.0f} | "
                f"{r['seconds_per_update']:.4f} | {backends} |"
            )
    prof = _rows(out, "profile.json")
    for r in prof:
        busy = r.get("busy_fraction")
        lines += [
            "",
            f"profile {r['case']}: {r['kernels_per_update']:.0f} {r['what']} per update, "
            f"{r['seconds_per_update']:.4f} s / update, busy {'n/a' if busy is None else f'{busy:.2f}'}; "
            "top: " + ", ".join(f"{k['name'][:40]} ({k['total_ms']:.1f} ms)" for k in r["top_kernels"][:4]),
        ]
    ttr = [r for r in _rows(out, "time_to_reward.json") if r.get("kind") == "time_to_reward"]
    if ttr:
        lines += ["", "| method | level | seconds to reach |", "|---|---|---|"]
        lines += [f"| {r['method']} | {r['level']:.3f} | {r.get('time_to_reward_s')} |" for r in ttr]
    return "\n".join(lines) + "\n"


def check_outputs(out: Path) -> list[str]:
    """Problems with the output files (missing file, missing field): empty when all is there."""
    problems = []
    for name, fields in EXPECTED.items():
        path = out / name
        if not path.is_file():
            problems.append(f"{name} missing")
            continue
        doc = json.loads(path.read_text())
        problems += [f"{name}: no field {f!r}" for f in fields if f not in doc]
    for name in ("summary.md", "log.txt"):
        if not (out / name).is_file():
            problems.append(f"{name} missing")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu-check-out", help="results folder")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes; check every stage and file")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {STAGES}")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    WORK.mkdir(parents=True, exist_ok=True)
    log = Log(out / "log.txt")
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    cfg = sizes(args.dry_run)
    env = environment(args.dry_run)
    if not args.dry_run:
        lib = ROOT / "build" / "csrc" / "libeasytune_cuda.so"
        if not lib.is_file() and shutil.which("nvcc") and shutil.which("cmake"):
            run(["make", "cuda-build"], env, 240, log, "cuda-build")
        log(f"CUDA library: {lib if lib.is_file() else 'absent (the cuda backend reports why)'}")
    stages = {
        "env": stage_env,
        "tests": stage_tests,
        "kernels": stage_kernels,
        "methods": stage_methods,
        "profile": stage_profile,
        "ttr": stage_ttr,
    }
    chosen = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in stages]
    if unknown:
        parser.error(f"--stages: unknown {unknown}; choose from {STAGES}")
    results: dict[str, dict[str, Any]] = {}
    for name in chosen:
        try:
            results[name] = stages[name](out, args.dry_run, cfg, env, log)
        except Exception as err:  # noqa: BLE001 - a broken stage must not stop the later ones
            log(f"{name}: crashed in the driver: {type(err).__name__}: {err}")
            results[name] = {"status": "crashed", "seconds": 0.0, "returncode": None, "tail": str(err)}
    text = summary_md(out, results, args.dry_run, started)
    (out / "summary.md").write_text(text)
    problems = check_outputs(out) if set(chosen) == set(STAGES) else []
    for p in problems:
        log(f"output check: {p}")
    print(text)
    if args.dry_run:  # CI: every stage must run and every file must carry its fields
        bad = [n for n, r in results.items() if r["status"] != "ok"]
        if bad or problems:
            print(f"gpu-check dry run FAILED: stages {bad}, outputs {problems}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
