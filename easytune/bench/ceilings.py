"""Measured ceilings of the device a benchmark runs on, and kernel throughput relative to them.

``measure_ceilings`` times a large device-to-device copy (bytes moved = read + write) and a large
square matmul per dtype (2 n^3 flops) with ``easytune.bench.timing``; kernel rows then report
TFLOP/s and GB/s as fractions of those *measured* numbers rather than of a datasheet.
"""

from __future__ import annotations

from typing import Any

import torch

from easytune.bench.timing import bench
from easytune.errors import ConfigError

_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}


def parse_dtype(name: str) -> torch.dtype:
    """``"float32"`` / ``"bfloat16"`` / ... -> torch dtype; ConfigError naming the choices otherwise."""
    if name not in _DTYPES:
        raise ConfigError(f"dtype must be one of {sorted(_DTYPES)}, got {name!r}")
    return _DTYPES[name]


def copy_bandwidth(device: torch.device, nbytes: int) -> dict[str, Any]:
    """Bytes per second of ``dst.copy_(src)`` over ``nbytes`` buffers (counted 2x: read + write)."""
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    stats = bench(lambda: dst.copy_(src), device)
    return {
        "copy_bytes_per_s": 2 * src.nbytes / stats.median_s,
        "copy_buffer_bytes": src.nbytes,
        "copy_median_s": stats.median_s,
    }


def matmul_throughput(device: torch.device, n: int, dtype: torch.dtype) -> dict[str, Any]:
    """Flops per second of an [n, n] @ [n, n] matmul in ``dtype`` (2 n^3 flops per call)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    stats = bench(lambda: torch.matmul(a, b, out=out), device)
    name = str(dtype).removeprefix("torch.")
    return {f"matmul_flops_per_s_{name}": 2 * n**3 / stats.median_s, f"matmul_n_{name}": n}


def measure_ceilings(
    device: str | torch.device,
    dtypes: tuple[str, ...] | None = None,
    copy_bytes: int | None = None,
    matmul_n: int | None = None,
) -> dict[str, Any]:
    """Copy bandwidth and matmul throughput of ``device``. Defaults: GPU 1 GiB copies, n = 8192,
    float32 / bfloat16 (TF32 as torch is configured); CPU 128 MiB copies, n = 1024, float32."""
    device = torch.device(device)
    gpu = device.type == "cuda"
    dtypes = dtypes or (("float32", "bfloat16") if gpu else ("float32",))
    copy_bytes = copy_bytes or (1 << 30 if gpu else 128 << 20)
    matmul_n = matmul_n or (8192 if gpu else 1024)
    if copy_bytes < 4 or matmul_n < 1:
        raise ConfigError(f"copy_bytes must be >= 4 and matmul_n >= 1, got {copy_bytes}, {matmul_n}")
    out: dict[str, Any] = {"device": str(device), **copy_bandwidth(device, copy_bytes)}
    for name in dtypes:
        out.update(matmul_throughput(device, matmul_n, parse_dtype(name)))
    return out


def throughput(
    seconds: float,
    *,
    flops: float | None = None,
    bytes_moved: float | None = None,
    ceilings: dict[str, Any] | None = None,
    dtype: str = "float32",
) -> dict[str, float]:
    """TFLOP/s and GB/s of one call taking ``seconds``, and their fractions of the measured ceilings
    (``tflops_of_peak``, ``gbps_of_peak``) when ``ceilings`` holds the matching entries."""
    out: dict[str, float] = {}
    if flops is not None:
        out["tflops"] = flops / seconds / 1e12
        peak = (ceilings or {}).get(f"matmul_flops_per_s_{dtype}")
        if peak:
            out["tflops_of_peak"] = flops / seconds / peak
    if bytes_moved is not None:
        out["gbps"] = bytes_moved / seconds / 1e9
        peak = (ceilings or {}).get("copy_bytes_per_s")
        if peak:
            out["gbps_of_peak"] = bytes_moved / seconds / peak
    return out
