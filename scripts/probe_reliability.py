"""Re-run the reliability probe of issue 18: bad inputs and faults, on the command line and the library.

Every case runs ``python -m easytune ...`` in a fresh process inside a scratch folder (a small synthetic
dataset, a short fine-tuning run, a VAE and a reward checkpoint made first) and states what a user must
see: a refusal (exit code 2, no traceback, a message naming the option, file or tensor) with nothing
written or changed, or a clean success. The library cases of the issue are pytest tests; they are run by
node id and counted the same way.

    python scripts/probe_reliability.py --out bench/results/cpu-reliability-probe.json [--jobs 2]

Prints one line per case and a count per section of the issue; exits 1 when a case fails.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
#: The issue's FT: a 2-trajectory fine-tuning run on dataset D (AlignProp takes no --k: FT_ALIGNPROP).
FT_ALIGNPROP = "finetune --data D --batch-size 1 --inference-steps 5 --warmup 0 --steps 2 --no-progress"
FT = FT_ALIGNPROP + " --k 2"
SAMPLE = "sample --text 'a person walks' --steps 2 --length 40 --device cpu"


@dataclass
class Case:
    """One probe case. ``refuse``: regexes the error output must match (a refusal, exit code 2); empty:
    the command must succeed. ``prepare`` builds its inputs in the scratch folder; ``then`` checks the
    folder afterwards and returns what is wrong (or None)."""

    section: str
    name: str
    command: str  # after "easytune", split like a shell (shlex)
    refuse: tuple[str, ...] = ()
    prepare: Callable[[Path], None] | None = None
    then: Callable[[Path], str | None] | None = None
    result: dict = field(default_factory=dict)


def run(argv: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "easytune", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def digest(path: Path) -> str:
    """A hash of a file, or of every file under a folder (names and bytes)."""
    h = hashlib.sha256()
    for p in sorted([path] if path.is_file() else path.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(path.parent)).encode() + p.read_bytes())
    return h.hexdigest()


# ---------------------------------------------------------------- scratch inputs
def make_workspace(ws: Path) -> dict[str, str]:
    """The inputs every case shares: dataset D, a 2-trajectory run RUN (checkpoint every trajectory),
    a VAE checkpoint vae.pt and a reward checkpoint rw.pt. Returns their digests (cases must not change
    them)."""
    steps = [
        ["data", "synth", "--out", "D", "--clips", "24", "--seed", "0"],
        ["data", "check", "D"],
        shlex.split(f"{FT} --out RUN --ckpt-every 1"),
        ["pretrain", "vae", "--data", "D", "--out", "vae.pt", "--steps", "2", "--no-progress"],
        ["reward", "train", "--data", "D", "--out", "rw.pt", "--steps", "2"],
    ]
    for argv in steps:
        proc = run(argv, ws)
        if proc.returncode != 0:
            raise SystemExit(f"workspace step {argv} failed:\n{proc.stderr[-3000:]}")
    return {name: digest(ws / name) for name in ("D", "RUN", "vae.pt", "rw.pt")}


def copy_of(src: str, dst: str) -> Callable[[Path], None]:
    def prepare(ws: Path) -> None:
        (shutil.copytree if (ws / src).is_dir() else shutil.copy)(ws / src, ws / dst)

    return prepare


def dataset_with(name: str, change: Callable[[Path], None]) -> Callable[[Path], None]:
    """A copy of D named ``name`` with ``change`` applied (no stamp: the run must read it)."""

    def prepare(ws: Path) -> None:
        shutil.copytree(ws / "D", ws / name)
        (ws / name / ".easytune-checked.json").unlink(missing_ok=True)
        change(ws / name)

    return prepare


def first_train_clip(root: Path) -> str:
    return (root / "train.txt").read_text().split()[0]


def set_clip(root: Path, array: np.ndarray) -> None:
    np.save(root / "new_joint_vecs" / f"{first_train_clip(root)}.npy", array, allow_pickle=False)


def clip(root: Path) -> np.ndarray:
    return np.load(root / "new_joint_vecs" / f"{first_train_clip(root)}.npy")


def nan_at_frame_3(root: Path) -> None:
    x = clip(root).copy()
    x[3, 0] = np.nan
    set_clip(root, x)


def truncated(root: Path) -> None:
    path = root / "new_joint_vecs" / f"{first_train_clip(root)}.npy"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def duplicate_id(root: Path) -> None:
    ids = (root / "train.txt").read_text().split()
    (root / "train.txt").write_text("\n".join([*ids, ids[0]]) + "\n")


def bom_caption(root: Path) -> None:
    path = root / "texts" / f"{first_train_clip(root)}.txt"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())


def bom_dropped(ws: Path) -> str | None:
    from easytune.data import humanml as H

    path = ws / "D_bom" / "texts" / f"{first_train_clip(ws / 'D_bom')}.txt"
    caption = H.read_captions(path)[0].caption
    return f"the loader keeps the byte-order mark: {caption[:20]!r}" if caption.startswith("\ufeff") else None


def non_utf8_split(root: Path) -> None:
    (root / "train.txt").write_bytes((root / "train.txt").read_bytes() + b"caf\xe9\n")


def mld_with(change: Callable[[dict], None], name: str) -> Callable[[Path], None]:
    def prepare(ws: Path) -> None:
        import torch

        from easytune.checkpoint import ASSETS, load_checkpoint

        ckpt = load_checkpoint(ASSETS / "mld_tiny.pt")
        change(ckpt)
        torch.save(ckpt, ws / name)

    return prepare


def one_nan_weight(ckpt: dict) -> None:
    state = ckpt["state_dict"]
    key = next(k for k, v in state.items() if v.is_floating_point() and k.startswith("denoiser."))
    state[key] = state[key].clone()
    state[key].view(-1)[0] = float("nan")


def huge_ff_size(ckpt: dict) -> None:
    ckpt["config"]["denoiser"]["ff_size"] = 2_000_000_000


def random_bytes(ws: Path) -> None:
    (ws / "rand.pt").write_bytes(np.random.default_rng(0).bytes(4096))


def symlink_loop(ws: Path) -> None:
    (ws / "loop.pt").symlink_to("loop.pt")


def a_file(ws: Path) -> None:
    (ws / "afile").write_text("not a folder\n")  # shared by two cases: writing it twice is harmless


def leftover_tmp(ws: Path) -> None:
    copy_of("RUN", "RUN_tmp")(ws)
    (ws / "RUN_tmp" / ".last.pt.killed.tmp").write_bytes(b"\0" * 1024)


# ---------------------------------------------------------------- checks afterwards
def absent(*names: str) -> Callable[[Path], str | None]:
    def then(ws: Path) -> str | None:
        found = [n for n in names if (ws / n).exists()]
        return f"written although refused: {found}" if found else None

    return then


def tensors_in(x) -> list:
    """Every tensor in a nested checkpoint (dicts, lists, tuples)."""
    import torch

    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, dict):
        x = list(x.values())
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in tensors_in(v)]
    return []


def finite_checkpoints(name: str) -> Callable[[Path], str | None]:
    """Every floating tensor of checkpoint ``name`` (if it was written) is finite."""

    def then(ws: Path) -> str | None:
        import torch

        path = ws / name
        if not path.exists():
            return None
        state = torch.load(path, weights_only=True, map_location="cpu")
        if any(t.is_floating_point() and not torch.isfinite(t).all() for t in tensors_in(state)):
            return f"{name} holds non-finite tensors"
        return None

    return then


def metrics_lines(folder: str, expected: int) -> Callable[[Path], str | None]:
    def then(ws: Path) -> str | None:
        lines = (ws / folder / "metrics.jsonl").read_text().splitlines()
        return (
            None if len(lines) == expected else f"metrics.jsonl has {len(lines)} lines, expected {expected}"
        )

    return then


def tmp_cleaned(ws: Path) -> str | None:
    left = list((ws / "RUN_tmp").glob("*.tmp"))
    return f"left behind: {[p.name for p in left]}" if left else None


# ---------------------------------------------------------------- the cases
def cases() -> list[Case]:
    """The issue's command-line cases, by section of the issue."""
    s1, s2, s3, s4, s6, s7 = (
        "1 non-finite weights",
        "2 non-finite sampling",
        "3 resume with changed options",
        "4 overwriting a run",
        "6 data check vs loaders",
        "7 odd option values",
    )
    tb, weak = "tracebacks", "weak messages"
    out: list[Case] = []

    def add(section, name, command, *refuse, prepare=None, then=None):
        out.append(Case(section, name, command, tuple(refuse), prepare, then))

    # 1. Non-finite weights are never saved or used.
    for m in ("easytune", "draft"):
        o = f"o-{m}-inf"
        add(
            s1,
            f"finetune --method {m} --lr inf",
            f"{FT} --out {o} --steps 1 --k 1 --method {m} --lr inf",
            r"--lr must be a finite number in \(0, inf\), got inf",
            then=absent(f"{o}/model.pt", f"{o}/last.pt"),
        )
        o = f"o-{m}-huge"
        add(
            s1,
            f"finetune --method {m} --lr 1e30",
            f"{FT} --out {o} --k 1 --method {m} --lr 1e30",
            r"learning rate \[1e\+30\] is not finite or absurdly large",
            then=absent(f"{o}/model.pt", f"{o}/last.pt"),
        )
    vae = "pretrain vae --data D --no-progress"
    add(
        s1,
        "pretrain vae --lr inf",
        f"{vae} --out v-inf.pt --steps 1 --lr inf",
        r"--lr must be a finite number in \(0, inf\), got inf",
        then=absent("v-inf.pt"),
    )
    add(
        s1,
        "pretrain vae --lr 1e30 --ckpt-every 1: no non-finite checkpoint, no torch traceback",
        f"{vae} --out v-huge.pt --steps 3 --lr 1e30 --warmup 0 --ckpt-every 1",
        r"not finite at step 2",
        r"learning rate \[[0-9.e+]+\]",
        then=finite_checkpoints("v-huge.pt"),
    )
    add(
        s1,
        "reward train --lr inf",
        "reward train --data D --out r-inf.pt --steps 1 --lr inf",
        r"--lr must be a finite number",
        then=absent("r-inf.pt"),
    )
    add(
        s1,
        "reward train --lr 1e30",
        "reward train --data D --out r-huge.pt --steps 2 --lr 1e30",
        r"not finite at step",
        r"learning rate \[[0-9.e+]+\]",
        then=finite_checkpoints("r-huge.pt"),
    )
    # 2. Sampling never writes a non-finite motion.
    add(
        s2,
        "sample --ckpt <one NaN weight>",
        f"{SAMPLE} --ckpt nan.pt --out s-nan.npy",
        r"weight denoiser\.\S+ holds NaN or inf",
        prepare=mld_with(one_nan_weight, "nan.pt"),
        then=absent("s-nan.npy"),
    )
    for value in ("nan", "inf", "-1"):
        add(
            s2,
            f"sample --guidance {value}",
            f"{SAMPLE} --ckpt default --guidance {value} --out s-g.npy",
            r"--guidance must be a finite number",
            then=absent("s-g.npy"),
        )
    # 3. Resume refuses changed options by name.
    for flag, value in [
        ("--lr", "1e-4"),
        ("--inference-steps", "6"),
        ("--guidance", "3"),
        ("--reward-weight", "2"),
        ("--ema", "0.9"),
        ("--data", "D2"),
    ]:
        add(
            s3,
            f"finetune --resume {flag} {value}",
            f"{FT} --out RUN --resume --steps 3 {flag} {value}",
            rf"was run with {flag} .*--allow-changed {flag[2:]} ",
            prepare=copy_of("D", "D2") if flag == "--data" else None,
        )
    add(
        s3,
        "finetune --resume --lr 2e-5 --allow-changed lr (as the refusal advises; logged)",
        f"{FT} --out RUN_allow --resume --steps 3 --lr 2e-5 --allow-changed lr",
        prepare=copy_of("RUN", "RUN_allow"),
        then=metrics_lines("RUN_allow", 3),
    )
    add(
        s3,
        "pretrain vae --resume --lr 0.1",
        f"{vae} --out vae.pt --resume --steps 3 --lr 0.1",
        r"was trained with --lr .*asks for 0\.1",
    )
    add(
        s3,
        "reward train --resume --lr 1e-3",
        "reward train --data D --out rw.pt --resume --steps 3 --lr 1e-3",
        r"rw\.pt: cannot resume.*'lr'",
    )
    # 4. A previous run is never overwritten.
    add(
        s4,
        "finetune into a previous run",
        f"{FT} --out RUN",
        r"--out RUN holds a previous run",
        r"--resume .*--overwrite",
    )
    add(
        s4,
        "pretrain vae --out <existing checkpoint>",
        f"{vae} --out vae.pt --steps 2",
        r"exists: pass --resume to continue it or --overwrite",
    )
    add(
        s4,
        "reward train --out <existing checkpoint>",
        "reward train --data D --out rw.pt --steps 2",
        r"rw\.pt.*--overwrite",
    )
    add(
        s4,
        "finetune --overwrite replaces it",
        f"{FT} --out RUN_over --overwrite --steps 1",
        prepare=copy_of("RUN", "RUN_over"),
        then=metrics_lines("RUN_over", 1),
    )
    # 6. data check and the loaders agree.
    for dtype in ("int32", "complex64", "U8"):
        name = f"D_{dtype}"
        change = (lambda dt: lambda root: set_clip(root, clip(root).astype(dt)))(dtype)
        add(
            s6,
            f"data check: {dtype} feature file",
            f"data check {name}",
            r"\.npy.*(dtype|float)",
            prepare=dataset_with(name, change),
        )
        add(
            s6,
            f"pretrain vae on a {dtype} feature file, before the first step",
            f"pretrain vae --data {name} --out v-{dtype}.pt --steps 1 --no-progress",
            r"\.npy.*(dtype|float)",
            r"nothing was trained",
            then=absent(f"v-{dtype}.pt"),
        )
    add(
        s6,
        "data check: duplicate id in train.txt",
        "data check D_dup",
        r"train\.txt:\d+: clip id .* listed twice",
        prepare=dataset_with("D_dup", duplicate_id),
    )
    add(
        s6,
        "data check: caption with a UTF-8 byte-order mark (dropped, as by the loader)",
        "data check D_bom",
        prepare=dataset_with("D_bom", bom_caption),
        then=bom_dropped,
    )
    # 7 (and the tracebacks): odd option values are refused by name, with the accepted range.
    for flag, value in [
        ("--max-grad-norm", "nan"),
        ("--reg-weight", "nan"),
        ("--time-budget", "nan"),
        ("--lora-rank", "0"),
        ("--warmup", "-10"),
        ("--ckpt-every", "-1"),
        ("--lr", "nan"),
        ("--lr", "-1"),
        ("--ema", "nan"),
        ("--ema", "2"),
        ("--reward-weight", "nan"),
        ("--reward-weight", "inf"),
        ("--guidance", "nan"),
        ("--guidance", "inf"),
    ]:
        section = tb if flag in ("--lr", "--ema") else s7
        add(
            section,
            f"finetune {flag} {value}",
            f"{FT} --out o-odd {flag} {value}",
            rf"{flag} must be",
            then=absent("o-odd"),
        )
    add(
        s7,
        "finetune --eval-every 1 without --evaluator",
        f"{FT} --out o-odd --eval-every 1",
        r"--eval-every .*--evaluator",
        then=absent("o-odd"),
    )
    add(
        s7,
        "finetune --device tpu9",
        f"{FT} --out o-odd --device tpu9",
        r"--device must be one of .*'tpu9'",
        then=absent("o-odd"),
    )
    for flag, value in [("--mean", "nan"), ("--std", "inf")]:
        add(
            tb,
            f"finetune --method alignprop {flag} {value}",
            f"{FT_ALIGNPROP} --out o-odd --method alignprop {flag} {value}",
            rf"--method alignprop: AlignProp: {flag[2:]} must be",
            then=absent("o-odd"),
        )
    # Tracebacks: unusable outputs are found before the first step.
    add(
        tb,
        "pretrain vae --out <existing folder>",
        f"{vae} --out D --steps 6 --ckpt-every 5",
        r"is a directory",
    )
    add(
        tb,
        "reward train --out /proc/rw.pt",
        "reward train --data D --out /proc/rw.pt --steps 2",
        r"/proc/rw\.pt.*cannot write",
    )
    add(
        tb,
        "finetune --out under a file",
        f"{FT} --out afile/run",
        r"--out afile/run: cannot write",
        prepare=a_file,
    )
    add(tb, "finetune --out equal to a file", f"{FT} --out afile", r"--out afile is a file", prepare=a_file)
    add(tb, "finetune --out /proc/ft (unwritable)", f"{FT} --out /proc/ft", r"--out /proc/ft: cannot write")
    add(
        tb,
        "sample --out /proc/x.npy",
        f"{SAMPLE} --ckpt default --out /proc/x.npy",
        r"--out /proc/x\.npy: cannot write there",
    )
    add(
        tb,
        "data check: non-UTF-8 byte in train.txt",
        "data check D_latin1",
        r"train\.txt:\d+: not UTF-8",
        prepare=dataset_with("D_latin1", non_utf8_split),
    )
    add(
        tb,
        "pretrain vae: non-UTF-8 byte in train.txt",
        "pretrain vae --data D_latin1 --out v-l1.pt --steps 1",
        r"train\.txt:\d+: not UTF-8",
        then=absent("v-l1.pt"),
    )
    add(
        tb,
        "reward train: non-UTF-8 byte in train.txt",
        "reward train --data D_latin1 --out r-l1.pt --steps 1",
        r"train\.txt:\d+: not UTF-8",
        then=absent("r-l1.pt"),
    )
    add(
        tb,
        "sample --device cuda on a CPU-only machine",
        "sample --text 'a person walks' --steps 2 --ckpt default --out s.npy --device cuda",
        r"--device cuda",
    )
    add(
        tb,
        "sample --ckpt <config ff_size=2e9>: refused before allocating",
        f"{SAMPLE} --ckpt ff.pt --out s-ff.npy",
        r"ff_size",
        prepare=mld_with(huge_ff_size, "ff.pt"),
        then=absent("s-ff.npy"),
    )
    # Weak messages.
    for label, change, name in [
        ("NaN at frame 3", nan_at_frame_3, "D_nan"),
        ("half-truncated .npy", truncated, "D_trunc"),
    ]:
        add(
            weak,
            f"finetune on a dataset with a {label}: refused before the first step",
            f"{FT} --data {name} --out o-{name}",
            rf"{name}/new_joint_vecs/\S+\.npy",
            r"nothing was trained",
            prepare=dataset_with(name, change),
            then=absent(f"o-{name}/last.pt", f"o-{name}/model.pt"),
        )
        add(
            weak,
            f"pretrain vae on a dataset with a {label}",
            f"pretrain vae --data {name} --out v-{name}.pt --steps 6 --ckpt-every 1 --no-progress",
            rf"{name}/new_joint_vecs/\S+\.npy",
            then=absent(f"v-{name}.pt"),
        )
    add(
        weak,
        "finetune --method alignprop --low/--high/--mean/--std exist",
        f"{FT_ALIGNPROP} --out o-alignprop --method alignprop --low 1 --high 4 --mean 3 --std 1 --steps 1",
    )
    add(
        weak,
        "random-bytes .pt: named, no weights_only=False advice",
        f"{SAMPLE} --ckpt rand.pt --out s.npy",
        r"rand\.pt: cannot load checkpoint",
        r"^(?![\s\S]*weights_only=False)",
        prepare=random_bytes,
    )
    add(
        weak,
        "reward checkpoint passed as an MLD names the file",
        f"{SAMPLE} --ckpt rw.pt --out s.npy",
        r"rw\.pt: not an MLD model",
    )
    add(
        weak,
        "symlink loop is not reported as missing",
        f"{SAMPLE} --ckpt loop.pt --out s.npy",
        r"loop\.pt: a symbolic link loop",
        r"^(?![\s\S]*does not exist)",
        prepare=symlink_loop,
    )
    add(
        weak,
        "a killed save's .tmp file is removed at the next start",
        f"{FT} --out RUN_tmp --resume --steps 3",
        prepare=leftover_tmp,
        then=tmp_cleaned,
    )
    return out


#: The issue's library cases, covered by tests: pytest node ids.
LIBRARY = {
    "1 non-finite weights": [
        "tests/test_trainer.py::test_non_finite_weights_after_an_update_stop_training_and_name_the_tensor",
        "tests/test_trainer.py::test_huge_finite_weights_are_not_reported_as_non_finite_and_the_learning_rate_is_named",
        "tests/test_pretrain.py::test_non_finite_weights_after_a_step_stop_the_run_naming_the_tensor",
    ],
    "5 metrics log after a kill": [
        "tests/test_finetune.py::test_a_kill_right_after_a_resume_starts_keeps_the_metrics_log"
    ],
    "8 gradients outside the optimizer": [
        "tests/test_trainer.py::test_trainable_weights_outside_the_optimizer_are_refused_by_name"
    ],
    "weak messages": [
        "tests/test_trainer.py::test_bad_library_inputs_are_named",
        "tests/test_guidance.py::test_non_finite_or_negative_guidance_and_eta_are_named_before_sampling",
        "tests/test_checkpoint_io.py::test_unreadable_checkpoints_are_named_without_unsafe_advice",
    ],
    "6 data check vs loaders": [
        "tests/test_data_check.py::test_check_and_loader_refuse_the_same_feature_dtypes",
        "tests/test_data_check.py::test_duplicate_ids_bom_and_non_utf8_bytes_are_named_by_file_and_line",
    ],
}


# ---------------------------------------------------------------- running
def judge(case: Case, ws: Path) -> None:
    """Run ``case`` (its inputs prepared already) and store its outcome in ``case.result``."""
    start = time.perf_counter()
    proc = run(shlex.split(case.command), ws)
    text = proc.stdout + proc.stderr
    problems = []
    if "Traceback" in text:
        problems.append("traceback")
    if case.refuse:
        if proc.returncode != 2:
            problems.append(f"exit code {proc.returncode}, expected 2")
        problems += [f"message lacks /{r}/" for r in case.refuse if not re.search(r, proc.stderr, re.M)]
    elif proc.returncode != 0:
        problems.append(f"exit code {proc.returncode}, expected 0")
    if case.then is not None and (why := case.then(ws)):
        problems.append(why)
    message = next((line for line in reversed(proc.stderr.splitlines()) if "error" in line), "")
    case.result = {
        "section": case.section,
        "case": case.name,
        "command": "easytune " + case.command,
        "exit_code": proc.returncode,
        "seconds": round(time.perf_counter() - start, 1),
        "passed": not problems,
        "problems": problems,
        "message": message[:400],
    }
    if problems:
        case.result["stderr_tail"] = proc.stderr[-1500:]


def kill_after_resume(ws: Path, delays: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 5.0)) -> dict:
    """Item 5 on the command line: resume RUN (2 logged trajectories) and SIGKILL it after each delay; the
    metrics log must still hold its 2 lines (valid JSON) every time."""
    bad = []
    for delay in delays:
        folder = ws / f"RUN_kill_{delay}"
        shutil.copytree(ws / "RUN", folder)
        argv = shlex.split(f"{FT} --out {folder.name} --resume --steps 8")
        proc = subprocess.Popen(
            [sys.executable, "-m", "easytune", *argv],
            cwd=ws,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        lines = (folder / "metrics.jsonl").read_text().splitlines()
        try:
            steps = [json.loads(line)["step"] for line in lines]
        except (ValueError, KeyError):
            steps = []
        if steps[:2] != [1, 2]:
            bad.append(f"killed after {delay} s: metrics.jsonl holds {len(lines)} line(s)")
    return {
        "section": "5 metrics log after a kill",
        "case": f"SIGKILL of a resumed finetune after {', '.join(map(str, delays))} s",
        "command": f"easytune {FT} --out RUN_copy --resume --steps 8",
        "passed": not bad,
        "problems": bad,
    }


def library_cases(nodes: dict[str, list[str]]) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        ids = [n for ns in nodes.values() for n in ns]
        env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "2"}
        subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", *ids],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
        )
        outcome: dict[str, bool] = {}
        if xml.exists():
            for tc in ET.parse(xml).iter("testcase"):
                name = tc.get("name", "").split("[")[0]
                ok = not any(child.tag in ("failure", "error", "skipped") for child in tc)
                outcome[name] = outcome.get(name, True) and ok
    results = []
    for section, ns in nodes.items():
        for node in ns:
            name = node.split("::")[1]
            results.append(
                {
                    "section": section,
                    "case": f"library: {name}",
                    "command": f"pytest {node}",
                    "passed": outcome.get(name, False),
                    "problems": [] if outcome.get(name) else ["test failed or not found"],
                }
            )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="JSON file of every case and its outcome")
    parser.add_argument("--jobs", type=int, default=2, help="cases run at once (default 2: one per core)")
    parser.add_argument("--keep", type=Path, help="scratch folder to use and keep (default: a temporary one)")
    parser.add_argument("--only", help="run the cases whose name contains this text")
    args = parser.parse_args()
    t0 = time.perf_counter()
    ws = args.keep or Path(tempfile.mkdtemp(prefix="easytune-probe-"))
    ws.mkdir(parents=True, exist_ok=True)
    print(f"scratch folder {ws}; making the shared inputs ...", flush=True)
    before = make_workspace(ws)
    todo = [c for c in cases() if not args.only or args.only in c.name]
    for case in todo:  # before any case runs: cases share some prepared inputs
        if case.prepare is not None:
            case.prepare(ws)
    with ThreadPoolExecutor(args.jobs) as pool:
        for case, _ in zip(todo, pool.map(lambda c: judge(c, ws), todo)):
            r = case.result
            print(f"{'pass' if r['passed'] else 'FAIL'}  [{r['section']}] {r['case']}: {r['message'][:150]}")
            for p in r["problems"]:
                print(f"      {p}")
    results = [c.result for c in todo]
    if not args.only:
        results.append(kill_after_resume(ws))
        results += library_cases(LIBRARY)
        for r in results[len(todo) :]:
            print(f"{'pass' if r['passed'] else 'FAIL'}  [{r['section']}] {r['case']}")
            for p in r["problems"]:
                print(f"      {p}")
        after = {name: digest(ws / name) for name in before}
        changed = [name for name in before if before[name] != after[name]]
        results.append(
            {
                "section": "shared inputs unchanged",
                "case": "D, RUN, vae.pt and rw.pt are byte-identical after every refused case",
                "passed": not changed,
                "problems": [f"{n} changed" for n in changed],
            }
        )
    sections: dict[str, list[int]] = {}
    for r in results:
        sections.setdefault(r["section"], [0, 0])
        sections[r["section"]][0] += r["passed"]
        sections[r["section"]][1] += 1
    passed = sum(r["passed"] for r in results)
    print()
    for name, (ok, n) in sections.items():
        print(f"{ok:3d}/{n:<3d} {name}")
    print(f"{passed}/{len(results)} cases pass ({time.perf_counter() - t0:.0f} s)")
    if args.out:
        import torch

        import easytune

        args.out.write_text(
            json.dumps(
                {
                    "what": "issue 18 reliability probe re-run (scripts/probe_reliability.py)",
                    "date": time.strftime("%Y-%m-%d"),
                    "commit": subprocess.run(
                        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
                    ).stdout.strip(),
                    "versions": {
                        "python": platform.python_version(),
                        "torch": torch.__version__,
                        "easytune": easytune.__version__,
                    },
                    "passed": passed,
                    "cases": len(results),
                    "sections": {k: {"passed": v[0], "cases": v[1]} for k, v in sections.items()},
                    "results": results,
                },
                indent=1,
            )
            + "\n"
        )
    if not args.keep:
        shutil.rmtree(ws, ignore_errors=True)
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
