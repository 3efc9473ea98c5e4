"""The CUDA kernels of csrc/ against the PyTorch references.

Each test runs twice: on a GPU (``gpu`` mark: the real libeasytune_cuda.so through the public ops with
``backend="cuda"``) and on the CPU through the host emulation of the same kernel sources (csrc/emu,
built here with the host C++ compiler; skipped without one or without the CUDA headers). The
emulation runs the warps, shuffles, barriers and mma.sync fragment layouts of the kernels, so it
checks their indexing, masking, vectorised paths and math; timing and hardware rounding need the GPU.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from easytune import ops
from easytune.ops import cuda
from easytune.ops._cuda_lib import CudaLibrary, CudaOpError

REPO = Path(__file__).resolve().parents[1]
CSRC = REPO / "csrc"
EMU_FLAGS = [
    "-std=c++17",
    "-O2",
    "-fPIC",
    "-fvisibility=hidden",
    "-DEASYTUNE_EMULATE",
    "-Wall",
    "-Wextra",
    "-Wno-unknown-pragmas",
]
TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _cuda_include() -> Path | None:
    roots = [os.environ.get("CUDA_HOME"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        roots.append(str(Path(nvcc).resolve().parents[1]))
    return next(
        (Path(r) / "include" for r in roots if r and (Path(r) / "include" / "cuda_fp16.h").is_file()), None
    )


def build_emulator() -> Path:
    """Compile csrc/ with -DEASYTUNE_EMULATE into build/emu/<source hash>/ (cached); skip if impossible."""
    cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
    include = _cuda_include()
    if cxx is None or include is None:
        pytest.skip("the CPU emulation of csrc/ needs a C++ compiler and the CUDA headers (cuda_fp16.h)")
    sources = sorted(CSRC.glob("*.cu")) + [CSRC / "emu" / "cuda_emu.cpp"]
    digest = hashlib.sha256(" ".join([cxx, *EMU_FLAGS]).encode())
    for path in sorted(CSRC.rglob("*")):
        if path.is_file():
            digest.update(path.name.encode() + path.read_bytes())
    out_dir = REPO / "build" / "emu" / digest.hexdigest()[:16]
    lib = out_dir / "libeasytune_cuda_emu.so"
    if lib.is_file():
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    flags = [*EMU_FLAGS, f"-I{CSRC}", f"-I{include}"]

    def compile_one(src: Path) -> Path:
        obj = out_dir / f"{src.stem}.{os.getpid()}.o"
        language = ["-x", "c++"] if src.suffix == ".cu" else []
        subprocess.run(
            [cxx, *flags, *language, "-c", str(src), "-o", str(obj)], check=True, capture_output=True
        )
        return obj

    try:
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            objects = list(pool.map(compile_one, sources))
        tmp = out_dir / f"lib.{os.getpid()}.so"
        subprocess.run([cxx, "-shared", *map(str, objects), "-o", str(tmp)], check=True, capture_output=True)
    except subprocess.CalledProcessError as err:
        raise AssertionError(f"emulated build of csrc/ failed:\n{err.stderr.decode()}") from err
    tmp.replace(lib)
    for obj in objects:
        obj.unlink()
    return lib


@pytest.fixture(scope="session")
def emulator() -> CudaLibrary:
    return CudaLibrary(build_emulator())


@dataclass
class Backend:
    device: str
    guided_step: Callable
    reward_head: Callable
    attention: Callable


@pytest.fixture(params=["emulated", pytest.param("cuda", marks=pytest.mark.gpu)])
def backend(request):
    if request.param == "cuda":
        yield Backend(
            "cuda",
            lambda *a, **k: ops.guided_step(*a, backend="cuda", **k),
            lambda *a, **k: ops.reward_head(*a, backend="cuda", **k),
            lambda *a, **k: ops.attention(*a, backend="cuda", **k),
        )
        return
    cuda.use_emulator(request.getfixturevalue("emulator"))
    try:
        yield Backend("cpu", cuda._guided_step_cuda, cuda._reward_head_cuda, cuda._attention_cuda)
    finally:
        cuda.use_emulator(None)


def _close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, scale: float = 1.0) -> None:
    assert actual.dtype == dtype and actual.shape == expected.shape
    tol = TOL[dtype] * scale
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), atol=tol, rtol=tol)


def _alphas(batch: int, device: str, prediction_type: str = "epsilon") -> tuple[torch.Tensor, torch.Tensor]:
    if prediction_type.startswith("flow"):  # sigma_t in [0.05, 1], sigma_next in [0, sigma_t)
        sigma = torch.rand(batch, dtype=torch.float64) * 0.95 + 0.05
        sigma[0] = 1.0
        return sigma.to(device), (sigma * torch.rand(batch, dtype=torch.float64)).to(device)
    a_t = torch.rand(batch, dtype=torch.float64) * 0.7 + 0.2
    a_prev = a_t + (1 - a_t) * torch.rand(batch, dtype=torch.float64) * 0.9
    return a_t.to(device), a_prev.to(device)


PREDICTION_TYPES = ["epsilon", "sample", "v_prediction", "flow_prediction", "flow_sample"]
DETERMINISTIC = "the flow step is deterministic: eta > 0 is refused (test_ops_reference)"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize(
    ("shape", "guided", "eta"),
    [((3, 4, 8), True, 0.0), ((3, 4, 8), True, 0.7), ((5, 7, 3), False, 1.0), ((2, 33), True, 0.3)],
)
def test_guided_step_forward(backend, dtype, prediction_type, shape, guided, eta):
    if prediction_type.startswith("flow") and eta > 0:
        pytest.skip(DETERMINISTIC)
    dev = backend.device
    cond, uncond, sample, noise = (torch.randn(shape, device=dev).to(dtype) for _ in range(4))
    uncond = uncond if guided else None
    a_t, a_prev = _alphas(shape[0], dev, prediction_type)
    out = backend.guided_step(
        cond,
        uncond,
        sample,
        a_t,
        a_prev,
        guidance_scale=2.5,
        prediction_type=prediction_type,
        eta=eta,
        noise=noise,
    )
    ref = ops.guided_step_ref(
        cond.double(),
        None if uncond is None else uncond.double(),
        sample.double(),
        a_t,
        a_prev,
        2.5,
        prediction_type,
        eta,
        noise.double(),
    )
    for name, a, b in zip(("guided", "x0", "prev"), out, ref):
        _close(a, b, dtype, scale=4.0 if name == "x0" else 2.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize(("guided", "grad_noise"), [(True, True), (True, False), (False, False)])
def test_guided_step_backward(backend, dtype, prediction_type, guided, grad_noise):
    if prediction_type.startswith("flow") and grad_noise:
        pytest.skip(DETERMINISTIC)
    dev, shape = backend.device, (3, 5, 8)
    leaves = [torch.randn(shape, device=dev).to(dtype).requires_grad_() for _ in range(4)]
    cond, uncond, sample, noise = leaves
    noise.requires_grad_(grad_noise)
    a_t, a_prev = _alphas(3, dev, prediction_type)
    eta = 0.0 if prediction_type.startswith("flow") else 0.5
    weights = [torch.randn(shape, device=dev, dtype=torch.float64) for _ in range(3)]

    def loss(outputs):
        return sum((o.double() * w).sum() for o, w in zip(outputs, weights))

    out = backend.guided_step(
        cond,
        uncond if guided else None,
        sample,
        a_t,
        a_prev,
        guidance_scale=3.0,
        prediction_type=prediction_type,
        eta=eta,
        noise=noise,
    )
    inputs = [cond, sample] + ([uncond] if guided else []) + ([noise] if grad_noise else [])
    grads = torch.autograd.grad(loss(out), inputs)
    doubles = [t.detach().double().requires_grad_() for t in inputs]
    by_name = dict(
        zip(["cond", "sample"] + (["uncond"] if guided else []) + (["noise"] if grad_noise else []), doubles)
    )
    ref = ops.guided_step_ref(
        by_name["cond"],
        by_name.get("uncond"),
        by_name["sample"],
        a_t,
        a_prev,
        3.0,
        prediction_type,
        eta,
        by_name.get("noise", noise.detach().double()),
    )
    expected = torch.autograd.grad(loss(ref), doubles)
    for g, e in zip(grads, expected):
        _close(g, e, dtype, scale=8.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("rows", "dim"), [(9, 16), (4, 13), (2, 300), (1, 1)])
def test_reward_head_forward_backward(backend, dtype, rows, dim):
    dev = backend.device
    motion = torch.randn(rows, dim, device=dev).to(dtype)
    text = torch.randn(rows, dim, device=dev).to(dtype)
    if dtype != torch.float16:  # a zero row takes the eps branch; its gradient (~1/eps) overflows fp16
        motion[0] = 0
    motion.requires_grad_()
    text.requires_grad_()
    out = backend.reward_head(motion, text)
    ref_m, ref_t = (t.detach().double().requires_grad_() for t in (motion, text))
    ref = ops.reward_head_ref(ref_m, ref_t)
    _close(out, ref, dtype)
    weights = torch.randn(rows, device=dev, dtype=torch.float64)
    grads = torch.autograd.grad((out.double() * weights).sum(), (motion, text))
    expected = torch.autograd.grad((ref * weights).sum(), (ref_m, ref_t))
    for g, e in zip(grads, expected):
        _close(g, e, dtype, scale=4.0)


def _padded(t: torch.Tensor, lengths: torch.Tensor | None, fill: float) -> torch.Tensor:
    """``t`` with frames at or beyond ``lengths`` set to ``fill`` (NaN: a kernel that reads them fails)."""
    if lengths is None:
        return t
    t = t.clone()
    for b, n in enumerate(lengths.tolist()):
        t[b, :, n:] = fill
    return t


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [32, 64, 128])
def test_attention_self_with_padding(backend, dtype, head_dim):
    dev, B, H, T = backend.device, 3, 2, 70
    q, k, v = (torch.randn(B, H, T, head_dim, device=dev).to(dtype) for _ in range(3))
    lengths = torch.tensor([70, 37, 0])
    with torch.no_grad():
        out = backend.attention(
            _padded(q, lengths, float("nan")),
            _padded(k, lengths, float("nan")),
            _padded(v, lengths, float("nan")),
            q_lengths=lengths.to(dev),
            kv_lengths=lengths.to(dev),
        )
    ref = ops.attention_ref(
        *(_padded(t, lengths, 0.0).double() for t in (q, k, v)), q_lengths=lengths, kv_lengths=lengths
    )
    _close(out, ref, dtype)
    assert torch.all(out[1, :, 37:] == 0) and torch.all(out[2] == 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_cross_strided_and_scale(backend, dtype):
    dev, B, H, Tq, Tk, D = backend.device, 2, 3, 5, 130, 64
    q = torch.randn(B, Tq, H, D, device=dev).to(dtype).transpose(1, 2)  # [B, H, Tq, D] view, not contiguous
    k = torch.randn(B, Tk, H, D, device=dev).to(dtype).transpose(1, 2)
    v = torch.randn(B, H, Tk, D + 8, device=dev).to(dtype)[..., 3 : 3 + D]  # misaligned rows: scalar loads
    kv_lengths = torch.tensor([130, 65])
    q_lengths = torch.tensor([1, 5])
    with torch.no_grad():
        out = backend.attention(
            q, k, v, q_lengths=q_lengths.to(dev), kv_lengths=kv_lengths.to(dev), scale=0.3
        )
    ref = ops.attention_ref(q.double(), k.double(), v.double(), q_lengths, kv_lengths, scale=0.3)
    _close(out, ref, dtype)
    assert out.is_contiguous()


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_masked_keys_get_no_weight(backend, dtype):
    """Valid scores are strongly negative, so one wrongly admitted (zero-score) padded key would dominate."""
    dev, B, H, T, D = backend.device, 2, 1, 75, 64
    q = torch.rand(B, H, T, D, device=dev).to(dtype)
    k = (-torch.rand(B, H, T, D, device=dev)).to(dtype)
    v = torch.randn(B, H, T, D, device=dev).to(dtype)
    kv_lengths = torch.tensor([9, 70])
    with torch.no_grad():
        out = backend.attention(q, k, v, kv_lengths=kv_lengths.to(dev))
    _close(out, ops.attention_ref(q.double(), k.double(), v.double(), kv_lengths=kv_lengths), dtype)


def test_attention_no_lengths_matches_reference(backend):
    dev = backend.device
    q, k, v = (torch.randn(1, 1, 17, 32, device=dev).half() for _ in range(3))
    with torch.no_grad():
        out = backend.attention(q, k, v)
    _close(out, ops.attention_ref(q.double(), k.double(), v.double()), torch.float16)


def test_unsupported_head_dim_raises_with_the_library_message(emulator):
    q = torch.randn(1, 1, 4, 48)
    with pytest.raises(CudaOpError, match="head_dim 48 is not compiled"):
        emulator.attention_fwd(q, q, q, None, None, 1.0, None)


def test_ops_pass_torch_library_opcheck(emulator):
    cuda.use_emulator(emulator)
    try:
        x = torch.randn(2, 3, 8, requires_grad=True)
        a_t, a_prev = (torch.tensor([0.3, 0.6]), torch.tensor([0.5, 0.9]))
        torch.library.opcheck(
            cuda._OPS["guided_step"], (x, x.detach() * 0.5, x.detach(), a_t, a_prev, None, 2.0, 0, 0.0)
        )
        m = torch.randn(4, 16, requires_grad=True)
        torch.library.opcheck(cuda._OPS["reward_head"], (m, torch.randn(4, 16), 1e-8))
        q = torch.randn(1, 2, 9, 32)
        torch.library.opcheck(cuda._OPS["attention"], (q, q, q, None, torch.tensor([5]), 0.2))
    finally:
        cuda.use_emulator(None)


@pytest.mark.gpu
def test_gpu_auto_dispatch_picks_cuda_and_honours_streams():
    x = torch.randn(4, 16, 8, device="cuda")
    a_t, a_prev = _alphas(4, "cuda")
    impl = ops.dispatch.resolve(
        "guided_step",
        None,
        model_cond=x,
        model_uncond=x,
        sample=x,
        eta=0.0,
        noise=None,
        prediction_type="epsilon",
    )
    assert impl.backend == "cuda"
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        out = ops.guided_step(x, x * 0.5, x, a_t, a_prev, guidance_scale=2.0, backend="cuda")
    stream.synchronize()
    ref = ops.guided_step_ref(x, x * 0.5, x, a_t, a_prev, 2.0)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b)


@pytest.mark.gpu
def test_gpu_guided_step_compiles_with_fullgraph():
    x = torch.randn(4, 8, device="cuda", requires_grad=True)
    a_t, a_prev = _alphas(4, "cuda")

    @torch.compile(fullgraph=True)
    def step(x):
        return cuda._guided_step_cuda(x, None, x, a_t, a_prev)[2].square().sum()

    grad = torch.autograd.grad(step(x), x)[0]
    xd = x.detach().double().requires_grad_()
    expected = torch.autograd.grad(ops.guided_step_ref(xd, None, xd, a_t, a_prev)[2].square().sum(), xd)[0]
    torch.testing.assert_close(grad.double(), expected, atol=1e-4, rtol=1e-4)
