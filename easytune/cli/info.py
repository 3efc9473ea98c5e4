"""``easytune info``: versions, devices, the CUDA library, and which backend can run each op (and why not)."""

from __future__ import annotations

import argparse
import json
from typing import Any

DTYPES = ("float32", "float16", "bfloat16")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "info", help="versions, devices and the kernel backends available for each op"
    )
    parser.add_argument(
        "--device", default=None, help="device of the example inputs (default: cuda if present)"
    )
    parser.add_argument(
        "--dtype",
        default=None,
        choices=DTYPES,
        help="dtype of the example inputs (default: float16 on cuda, float32 on cpu)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.set_defaults(func=_info)


def _example_inputs(device: Any, dtype: Any) -> dict[str, dict[str, Any]]:
    """Small inputs per op, in the keyword form each op passes to ``dispatch.resolve``."""
    import torch

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device, dtype=dtype)

    q, k, v = randn(2, 4, 16, 64), randn(2, 4, 16, 64), randn(2, 4, 16, 64)
    lengths = torch.tensor([16, 9], device=device)
    x = randn(2, 4, 8)
    return {
        "attention": {"q": q, "k": k, "v": v, "q_lengths": lengths, "kv_lengths": lengths, "dropout_p": 0.0},
        "guided_step": {
            "model_cond": x,
            "model_uncond": randn(2, 4, 8),
            "sample": randn(2, 4, 8),
            "eta": 0.0,
            "noise": None,
            "prediction_type": "epsilon",
        },
        "reward_head": {"motion": randn(2, 256), "text": randn(2, 256)},
    }


def _versions() -> dict[str, str | None]:
    import importlib.metadata
    import platform

    import torch

    import easytune

    try:
        triton = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        triton = None
    return {
        "easytune": easytune.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": triton,
    }


def _cuda_library() -> dict[str, Any]:
    from easytune.errors import BackendUnavailableError
    from easytune.ops import _cuda_lib

    path = _cuda_lib.find_library()
    if path is None:
        return {"path": None, "problem": _cuda_lib.not_found_message()}
    try:
        lib = _cuda_lib.load_library(path)
    except BackendUnavailableError as err:
        return {"path": str(path), "problem": str(err)}
    return {
        "path": str(lib.path),
        "cuda_version": lib.cuda_version,
        "archs": list(lib.archs),
        "problem": None,
    }


def _devices() -> list[dict[str, Any]]:
    import torch

    if not torch.cuda.is_available():
        return []
    devices = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        devices.append(
            {
                "index": index,
                "name": props.name,
                "capability": f"sm_{props.major}{props.minor}",
                "memory_gib": round(props.total_memory / 2**30, 1),
            }
        )
    return devices


def collect(device: str | None = None, dtype: str | None = None) -> dict[str, Any]:
    """Everything ``easytune info`` prints, as plain data."""
    import torch

    from easytune import ops
    from easytune.errors import ConfigError

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or ("float16" if torch.device(device).type == "cuda" else "float32")
    try:
        examples = _example_inputs(torch.device(device), getattr(torch, dtype))
    except (RuntimeError, AssertionError) as err:
        raise ConfigError(f"info: cannot create example inputs on --device {device!r}: {err}") from err
    backends, auto = {}, {}
    with torch.no_grad():
        for op in ops.dispatch.registered_ops():
            if op not in examples:
                continue
            backends[op] = ops.dispatch.report(op, **examples[op])
            with_auto = ops.dispatch.report(op, auto=True, **examples[op])
            auto[op] = next((name for name, reasons in with_auto.items() if not reasons), None)
    return {
        "versions": _versions(),
        "cuda_library": _cuda_library(),
        "devices": _devices(),
        "inputs": {"device": device, "dtype": dtype},
        "backends": backends,
        "auto": auto,
    }


def _info(args: argparse.Namespace) -> int:
    info = collect(args.device, args.dtype)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    versions = info["versions"]
    print(
        f"easytune {versions['easytune']} | python {versions['python']} | torch {versions['torch']} "
        f"(CUDA {versions['torch_cuda'] or 'none'}) | triton {versions['triton'] or 'not installed'}"
    )
    lib = info["cuda_library"]
    if lib["problem"] is None:
        archs = ", ".join(lib["archs"])
        print(f"CUDA library: {lib['path']} (CUDA {lib['cuda_version'] or 'emulated'}; code {archs})")
    else:
        print(f"CUDA library: unavailable: {lib['problem']}")
    if info["devices"]:
        for d in info["devices"]:
            print(f"device cuda:{d['index']}: {d['name']} ({d['capability']}, {d['memory_gib']} GiB)")
    else:
        print("devices: no CUDA GPU visible")
    print(
        f"\nbackends for example inputs on {info['inputs']['device']} ({info['inputs']['dtype']}), "
        f"in auto order:"
    )
    for op, report in info["backends"].items():
        print(f"{op} (auto -> {info['auto'][op] or 'none'})")
        for backend, reasons in report.items():
            print(f"  {backend:<9} {'yes' if not reasons else 'no: ' + '; '.join(reasons)}")
    return 0
