"""Test configuration: Triton runs under its CPU interpreter unless a GPU is present; the ``gpu``
marker skips cleanly without CUDA; ``humanml3d_sample`` points at the shared real clip (skips if absent).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Without a GPU the Triton kernels run in the CPU interpreter; must be set before any @triton.jit
# module is imported (none is imported by easytune at import time).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

SAMPLE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "humanml3d_sample"


def _triton_missing() -> str | None:
    """Why Triton cannot be imported (None: it can): a CPU-only install may leave it out."""
    try:
        import triton  # noqa: F401
    except ImportError as err:
        return f"triton is not installed ({err})"
    return None


def pytest_collection_modifyitems(config, items):
    missing = _triton_missing() if any("triton" in item.keywords for item in items) else None
    for item in items:
        if missing and "triton" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=missing))
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _fresh_dispatch():
    """Each test starts with an empty dispatch cache (tests monkeypatch what the backends' reasons read)."""
    from easytune.ops import dispatch

    dispatch.clear_cache()
    yield
    dispatch.clear_cache()


@pytest.fixture
def humanml3d_sample() -> Path:
    """The shared real HumanML3D clip folder (``../shared/data/humanml3d_sample``)."""
    if not SAMPLE_DIR.is_dir():
        pytest.skip(f"{SAMPLE_DIR} not present")
    return SAMPLE_DIR
