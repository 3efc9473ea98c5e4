"""The loader of libeasytune_cuda.so and the ``cuda`` backend's reasons, without a GPU.

Covers: import loads nothing; library missing (the reason lists the searched paths); library present
but torch without CUDA or without a GPU; GPU of an architecture the library lacks; explicit
``backend="cuda"`` raising BackendUnavailableError with the reason; ``auto`` falling back; and, when
a CUDA build of the library exists here (``make cuda-build``), its C ABI error paths.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from easytune import ops
from easytune.errors import BackendUnavailableError
from easytune.ops import _cuda_lib, cuda
from easytune.ops._cuda_lib import CudaLibrary, CudaOpError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch):
    for var in (
        "EASYTUNE_BACKEND",
        "EASYTUNE_GUIDED_STEP_BACKEND",
        "EASYTUNE_REWARD_HEAD_BACKEND",
        "EASYTUNE_ATTENTION_BACKEND",
        "EASYTUNE_CUDA_LIB",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(cuda, "_DEVICE_REASONS", {})
    _cuda_lib.clear_cache()


def _missing(monkeypatch, tmp_path) -> list[Path]:
    paths = [tmp_path / "a" / _cuda_lib.LIB_NAME, tmp_path / "b" / _cuda_lib.LIB_NAME]
    monkeypatch.setattr(_cuda_lib, "candidate_paths", lambda: paths)
    return paths


def _present(monkeypatch, tmp_path) -> Path:
    fake = tmp_path / _cuda_lib.LIB_NAME
    fake.write_bytes(b"not a shared library: must not be loaded without a GPU")
    monkeypatch.setenv("EASYTUNE_CUDA_LIB", str(fake))
    return fake


def _step_inputs(device="cpu", dtype=torch.float32):
    x = torch.randn(2, 3, 4, device=device, dtype=dtype)
    return {
        "model_cond": x,
        "model_uncond": x * 0.5,
        "sample": x,
        "eta": 0.0,
        "noise": None,
        "prediction_type": "epsilon",
    }


def test_import_loads_no_library_and_touches_no_device(tmp_path):
    lib = _cuda_lib.find_library() or tmp_path / _cuda_lib.LIB_NAME
    code = (
        "import torch, easytune.ops as o; "
        "assert 'cuda' in o.dispatch.PRIORITY['guided_step'] and o.cuda.environment_reasons is not None; "
        "maps = open('/proc/self/maps').read(); "
        "print(torch.cuda.is_initialized(), 'libeasytune_cuda' in maps, bool(o._cuda_lib._LOADED))"
    )
    env = dict(os.environ, EASYTUNE_CUDA_LIB=str(lib))
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False", "False"]


def test_missing_library_reason_lists_the_searched_paths(monkeypatch, tmp_path):
    paths = _missing(monkeypatch, tmp_path)
    for op, inputs in (
        ("guided_step", _step_inputs()),
        ("reward_head", {"motion": torch.ones(2, 8), "text": torch.ones(2, 8)}),
        (
            "attention",
            {"q": torch.ones(1, 1, 4, 64), "k": torch.ones(1, 1, 4, 64), "v": torch.ones(1, 1, 4, 64)},
        ),
    ):
        reasons = ops.dispatch.report(op, **inputs)["cuda"]
        text = " ".join(reasons)
        assert "libeasytune_cuda.so not found" in text, reasons
        assert all(str(p) in text for p in paths)
    with pytest.raises(BackendUnavailableError, match="not found"):
        _cuda_lib.load_library()


def test_env_var_is_searched_exclusively(monkeypatch, tmp_path):
    target = tmp_path / "custom.so"
    monkeypatch.setenv("EASYTUNE_CUDA_LIB", str(target))
    assert _cuda_lib.candidate_paths() == [target]
    assert _cuda_lib.find_library() is None
    assert str(target) in " ".join(cuda.environment_reasons())


def test_present_library_without_cuda_torch_or_gpu_gives_clean_reasons(monkeypatch, tmp_path):
    _present(monkeypatch, tmp_path)
    monkeypatch.setattr(torch.version, "cuda", None)
    assert cuda.environment_reasons() == [
        f"torch {torch.__version__} is a CPU-only build (torch.version.cuda is None)"
    ]
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cuda.environment_reasons() == ["no CUDA GPU is visible (torch.cuda.is_available() is False)"]
    assert not _cuda_lib._FAILED  # the (invalid) library file was never opened


def _fake_gpu(monkeypatch, capability, lib):
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "device", lambda index: contextlib.nullcontext())
    monkeypatch.setattr(cuda, "load_library", lambda: lib)


def test_gpu_architecture_missing_from_the_library(monkeypatch, tmp_path):
    _present(monkeypatch, tmp_path)
    lib = SimpleNamespace(
        archs=("sm_80", "compute_80", "sm_90a"), path=Path("libeasytune_cuda.so"), probe=lambda: None
    )
    lib.supports = lambda cap: CudaLibrary.supports(lib, cap)
    _fake_gpu(monkeypatch, (7, 5), lib)
    (reason,) = cuda.environment_reasons()
    assert "sm_75" in reason and "sm_80, compute_80, sm_90a" in reason and "EASYTUNE_CUDA_ARCHS=75" in reason
    monkeypatch.setattr(cuda, "_DEVICE_REASONS", {})
    _fake_gpu(monkeypatch, (9, 0), lib)
    assert cuda.environment_reasons() == []


def test_probe_failure_becomes_a_reason(monkeypatch, tmp_path):
    _present(monkeypatch, tmp_path)

    def probe():
        raise CudaOpError("easytune_cuda_probe: no kernel image is available (error code 3)")

    lib = SimpleNamespace(
        archs=("sm_80",), path=Path("libeasytune_cuda.so"), supports=lambda cap: True, probe=probe
    )
    _fake_gpu(monkeypatch, (8, 6), lib)
    (reason,) = cuda.environment_reasons()
    assert "Fake GPU" in reason and "no kernel image" in reason


@pytest.mark.parametrize(
    ("archs", "capability", "expected"),
    [
        (("sm_80", "compute_80", "sm_90a"), (8, 0), True),
        (("sm_80", "compute_80", "sm_90a"), (8, 9), True),  # sm_80 SASS runs on 8.x
        (("sm_80", "compute_80", "sm_90a"), (12, 0), True),  # PTX JIT
        (("sm_80", "compute_80", "sm_90a"), (7, 5), False),
        (("sm_80", "sm_90a"), (10, 0), False),  # no PTX, 'a' code is for 9.0 only
        (("sm_90a",), (9, 0), True),
        (("sm_90a",), (8, 0), False),
        (("compute_90a",), (10, 0), False),
    ],
)
def test_architecture_compatibility_rules(archs, capability, expected):
    assert CudaLibrary.supports(SimpleNamespace(archs=archs), capability) is expected


def test_input_reasons_dtype_head_dim_grad_and_dropout(monkeypatch):
    monkeypatch.setattr(cuda, "environment_reasons", lambda device=None: [])
    assert cuda.reward_head_reasons(
        torch.ones(2, 3, dtype=torch.float64), torch.ones(2, 3, dtype=torch.float64)
    )
    q = torch.ones(1, 1, 4, 48)
    text = " ".join(cuda.attention_reasons(q, q, q, dropout_p=0.1))
    assert "head dim 48 is not supported" in text and "dropout_p=0.1" in text and "CUDA tensors" in text
    q = torch.ones(1, 1, 4, 64, requires_grad=True)
    assert "forward-only" in " ".join(cuda.attention_reasons(q, q, q))
    with torch.no_grad():
        assert cuda.attention_reasons(q, q, q) == ["cuda needs CUDA tensors (q on cpu, k on cpu, v on cpu)"]
    alpha = torch.ones(2, requires_grad=True)
    assert "treats the alphas as constants" in " ".join(
        cuda.guided_step_reasons(**_step_inputs(), alpha_prod_t=alpha)
    )
    mixed = dict(_step_inputs(), model_uncond=torch.ones(2, 3, 4, dtype=torch.float16))
    assert "mix dtypes" in " ".join(cuda.guided_step_reasons(**mixed))


def test_explicit_cuda_backend_raises_with_the_reason(monkeypatch, tmp_path):
    _missing(monkeypatch, tmp_path)
    x = torch.randn(2, 3, 4)
    a = torch.tensor([0.5, 0.6])
    with pytest.raises(BackendUnavailableError, match="backend 'cuda' cannot run.*not found"):
        ops.guided_step(x, None, x, a, a, backend="cuda")
    with pytest.raises(BackendUnavailableError, match="CUDA tensors"):
        ops.reward_head(torch.ones(2, 8), torch.ones(2, 8), backend="cuda")
    monkeypatch.setenv("EASYTUNE_ATTENTION_BACKEND", "cuda")
    q = torch.ones(1, 1, 4, 64)
    with pytest.raises(BackendUnavailableError, match="cuda"):
        ops.attention(q, q, q)


def test_auto_falls_back_to_a_working_backend(monkeypatch, tmp_path):
    _missing(monkeypatch, tmp_path)
    x = torch.randn(2, 3, 4)
    a_t, a_prev = torch.tensor([0.3, 0.5]), torch.tensor([0.6, 0.9])
    assert ops.dispatch.resolve("guided_step", None, **_step_inputs()).backend != "cuda"
    out = ops.guided_step(x, x * 0.3, x, a_t, a_prev, guidance_scale=2.0)
    for got, want in zip(out, ops.guided_step_ref(x, x * 0.3, x, a_t, a_prev, 2.0)):
        torch.testing.assert_close(got, want)
    m, t = torch.randn(3, 8), torch.randn(3, 8)
    torch.testing.assert_close(ops.reward_head(m, t), ops.reward_head_ref(m, t))


def test_ops_run_on_meta_tensors_through_the_fake_implementations():
    x = torch.empty(2, 3, 4, device="meta", requires_grad=True)
    a = torch.empty(2, device="meta")
    guided, x0, prev = cuda._OPS["guided_step"](x, None, x, a, a, None, 1.0, 0, 0.0)
    assert guided.shape == x0.shape == prev.shape == x.shape
    (grad,) = torch.autograd.grad(prev.sum(), x)
    assert grad.shape == x.shape and grad.device.type == "meta"
    q = torch.empty(2, 3, 5, 64, device="meta", dtype=torch.float16)
    assert cuda._OPS["attention"](q, q, q, None, None, 0.125).shape == q.shape
    assert cuda._OPS["reward_head"](
        torch.empty(4, 8, device="meta"), torch.empty(4, 8, device="meta"), 1e-8
    ).shape == (4,)


def test_info_reports_versions_library_and_backend_reasons(monkeypatch, tmp_path, capsys):
    from easytune.cli import info

    _missing(monkeypatch, tmp_path)
    data = info.collect("cpu", "float32")
    assert data["versions"]["torch"] == torch.__version__
    assert data["cuda_library"]["path"] is None and "not found" in data["cuda_library"]["problem"]
    assert {"attention", "guided_step", "reward_head"} <= set(data["backends"])
    assert data["backends"]["guided_step"]["math"] == [] and data["backends"]["guided_step"]["cuda"]
    assert data["auto"]["guided_step"] not in (None, "cuda")
    info._info(argparse.Namespace(device="cpu", dtype=None, json=False))
    out = capsys.readouterr().out
    assert (
        "guided_step (auto -> " in out and "cuda      no: " in out and "libeasytune_cuda.so not found" in out
    )


# ---- the CUDA build of this machine (make cuda-build), if there is one ----------------------


@pytest.fixture
def built_library() -> CudaLibrary:
    path = next(
        (
            p
            for p in (REPO / "build" / "csrc" / _cuda_lib.LIB_NAME, REPO / "build" / _cuda_lib.LIB_NAME)
            if p.is_file()
        ),
        None,
    )
    if path is None:
        pytest.skip("no CUDA build of csrc/ here (run `make cuda-build`)")
    return CudaLibrary(path)


def test_built_library_reports_abi_version_and_architectures(built_library):
    assert built_library._lib.easytune_cuda_abi_version() == _cuda_lib.ABI_VERSION
    assert built_library.archs and all(a.startswith(("sm_", "compute_")) for a in built_library.archs)
    assert built_library.cuda_version is not None and not built_library.emulated


def test_built_library_rejects_bad_arguments_with_a_message(built_library):
    lib = built_library._lib
    assert lib.easytune_reward_head_fwd(256, 256, 256, 1, 8, 7, 1e-8, None) == 1
    assert b"dtype code 7" in lib.easytune_cuda_last_error()
    strides = (ctypes.c_int64 * 3)(0, 0, 0)
    rc = lib.easytune_attention_fwd(
        256, 256, 256, 256, None, None, 1, 1, 4, 4, 48, strides, strides, strides, 1, 1.0, None
    )
    assert rc == 2 and b"head_dim 48 is not compiled" in lib.easytune_cuda_last_error()
    assert lib.easytune_guided_step_fwd(*[None] * 9, 0, 0, 0, 0, 1.0, 0.0, None) == 0  # empty: nothing to do


def test_built_library_without_a_device_fails_cleanly(built_library):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the no-device error path cannot be observed")
    with pytest.raises(CudaOpError, match="easytune_cuda_device_count: .*error code 3"):
        built_library.device_count()
    with pytest.raises(CudaOpError, match="easytune_cuda_probe"):
        built_library.probe()
    # A launch without a device: the CUDA error comes back as code 3 naming the entry point (the
    # pointers are never dereferenced since no kernel can start).
    lib = built_library._lib
    assert lib.easytune_reward_head_fwd(256, 512, 1024, 1, 8, 0, 1e-8, None) == 3
    assert lib.easytune_cuda_last_error().startswith(b"easytune_reward_head_fwd: kernel launch failed: ")
