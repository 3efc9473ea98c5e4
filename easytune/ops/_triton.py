"""The ``triton`` backend's common checks and the lazy import of its kernels (``easytune_kernels``).

Nothing here imports Triton until a kernel is about to run or CUDA inputs ask whether it can.
On CPU tensors the kernels run only in Triton's interpreter (``TRITON_INTERPRET=1``), which is for
tests: an explicit ``backend="triton"`` runs it, ``auto`` never picks it.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys

import torch

from easytune.ops import dispatch

TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def interpreting() -> bool:
    """Whether the kernels run in Triton's CPU interpreter (decided when ``easytune_kernels`` is imported)."""
    common = sys.modules.get("easytune_kernels._common")
    if common is not None:
        return bool(common.INTERPRET)
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on")


@functools.cache
def _import_error(module: str) -> str | None:
    try:
        importlib.import_module(f"easytune_kernels.{module}")
    except Exception as err:  # noqa: BLE001 - any import failure makes the backend unavailable, with its text
        return f"cannot import easytune_kernels.{module} ({type(err).__name__}: {err})"
    return None


# What every Triton kernel runs (dtypes, one dtype and device per call: checked by ``dispatch``).
CAPABILITIES = dispatch.Capabilities(dtypes=TRITON_DTYPES)


def reasons(module: str, tensors: dict[str, torch.Tensor | None]) -> list[str]:
    """Why the Triton kernels of ``module`` cannot run on ``tensors`` beyond ``CAPABILITIES`` (None entries
    are ignored): CPU tensors without the interpreter, bfloat16 before sm_80, Triton not importable."""
    given = {name: t for name, t in tensors.items() if t is not None}
    out = []
    devices = {t.device for t in given.values()}
    dtypes = {t.dtype for t in given.values()}
    device = next(iter(devices)) if devices else torch.device("cpu")
    if device.type == "cpu" and not interpreting():
        out.append(
            "tensors are on the CPU: the Triton kernels need CUDA tensors "
            "(TRITON_INTERPRET=1 runs them in the CPU interpreter, for tests)"
        )
    elif device.type not in ("cpu", "cuda"):
        out.append(f"tensors are on {device.type}: the Triton kernels need CUDA tensors")
    elif (
        device.type == "cuda"
        and torch.bfloat16 in dtypes
        and torch.cuda.get_device_capability(device) < (8, 0)
    ):
        out.append(f"bfloat16 needs compute capability >= 8.0 ({torch.cuda.get_device_name(device)})")
    if not out:
        error = _import_error(module)
        if error:
            out.append(error)
    return out


def auto_reasons(**_: object) -> list[str]:
    """Why ``auto`` must not pick the Triton kernels even though an explicit choice would run them."""
    if interpreting():
        return [
            "TRITON_INTERPRET=1: the kernels would run in Triton's CPU interpreter, which is for tests "
            "(pass backend='triton' to run it anyway)"
        ]
    return []
