"""The environment record attached to every benchmark result: where and with what a number was measured.

``environment(device, config)`` returns plain JSON types only: date (UTC, ISO 8601), host, platform,
Python, CPU model and thread count, torch / triton / CUDA / cuDNN versions, the GPU name, capability,
memory and driver when ``device`` is CUDA, the git commit (with a ``dirty`` flag) and the caller's config.
Nothing here needs a GPU; missing pieces are recorded as ``None`` or a reason string, never guessed.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]


def git_info(root: Path = REPO_ROOT) -> dict[str, Any]:
    """``{"commit": sha | None, "dirty": bool | None}`` for the checkout at ``root`` (None outside git)."""

    def run(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = run("rev-parse", "HEAD")
    status = run("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return None


def cuda_device_info(device: torch.device) -> dict[str, Any]:
    """Name, compute capability, memory and driver version of a CUDA ``device`` (needs a GPU)."""
    props = torch.cuda.get_device_properties(device)
    from easytune.bench.nvml import driver_version

    return {
        "gpu_name": props.name,
        "gpu_capability": f"{props.major}.{props.minor}",
        "gpu_memory_bytes": int(props.total_memory),
        "gpu_multiprocessors": int(props.multi_processor_count),
        "driver": driver_version(),
    }


def environment(device: str | torch.device = "cpu", config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The environment record (see the module docstring); ``config`` is copied in under ``"config"``."""
    device = torch.device(device)
    cuda_version = torch.version.cuda
    hip_version = getattr(torch.version, "hip", None)
    record: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "cuda_runtime": cuda_version,
        "hip_runtime": hip_version,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": str(device),
        **git_info(),
        "config": dict(config or {}),
    }
    if device.type == "cuda":
        record.update(cuda_device_info(device))
    return record


SDPA_KERNELS = {
    "flash": "flash",
    "efficient": "efficient",
    "fmha": "efficient",
    "cudnn": "cudnn",
    "_scaled_dot_product_attention_math": "math",
}


def sdpa_backend(device: str | torch.device, shape: tuple[int, int, int, int]) -> dict[str, Any]:
    """Which SDPA implementation torch runs for ``F.scaled_dot_product_attention`` with a key-padding mask
    [B, 1, 1, T] at ``shape`` (B, H, T, D) in bf16 (float32 on a CPU): read off the profiler's op names."""
    device = torch.device(device)
    b, h, t, d = shape
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    q = torch.randn(b, h, t, d, device=device, dtype=dtype)
    lengths = torch.randint(max(1, t // 4), t + 1, (b,), device=device)
    mask = (torch.arange(t, device=device)[None] < lengths[:, None])[:, None, None]
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=mask)
    names = [e.name for e in prof.events()]
    found = sorted({kind for n in names for key, kind in SDPA_KERNELS.items() if key in n.lower()})
    return {
        "shape": [b, h, t, d],
        "dtype": str(dtype),
        "mask": "key padding [B, 1, 1, T]",
        "kernels": found or ["math"],
        "ops": sorted({n for n in names if "attention" in n.lower()})[:8],
    }


def environment_probe(
    device: str | torch.device, attention_shape: tuple[int, int, int, int]
) -> dict[str, Any]:
    """What ``make gpu-check`` records first: versions, the environment record, ``easytune info``, the SDPA
    backend for the masked attention shape, and the device ceilings (copy bandwidth, matmul rate)."""
    from easytune.bench.ceilings import measure_ceilings
    from easytune.cli.info import collect

    device = torch.device(device)
    cuda = device.type == "cuda"
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "cuda_runtime": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "environment": environment(device),
        "info": collect(str(device) if cuda else None),
        "sdpa_backend": sdpa_backend(device, attention_shape),
        "ceilings": measure_ceilings(device, ("bfloat16",) if cuda else ("float32",)),
    }
