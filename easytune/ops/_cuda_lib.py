"""ctypes binding of ``libeasytune_cuda.so``, the C ABI of ``csrc/`` (``csrc/easytune_cuda.h``).

Search order: ``$EASYTUNE_CUDA_LIB`` (exclusively, when set), the installed package
(``easytune/ops/libeasytune_cuda.so``), then ``build/csrc/`` and ``build/`` of a source checkout.
Nothing is found or loaded at import time. Every call checks the C return code and raises
``CudaOpError`` with the library's message (it names the entry point and the CUDA error).

The same binding drives the host-emulated build of ``csrc/`` (compiled with ``-DEASYTUNE_EMULATE``;
pointers are then CPU addresses and the stream is ignored), which the tests use without a GPU.
"""

from __future__ import annotations

import ctypes
import os
import re
from pathlib import Path

import torch

from easytune.errors import BackendUnavailableError, ConfigError, CudaOpError

LIB_NAME = "libeasytune_cuda.so"
ENV_VAR = "EASYTUNE_CUDA_LIB"
ABI_VERSION = 2  # EASYTUNE_CUDA_ABI_VERSION of csrc/easytune_cuda.h
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
PREDICTION_CODES = {"epsilon": 0, "sample": 1, "v_prediction": 2, "flow_prediction": 3, "flow_sample": 4}
HEAD_DIMS = (32, 64, 128)

_REPO = Path(__file__).resolve().parents[2]
_P, _I64, _I, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
_STRIDES = ctypes.POINTER(ctypes.c_int64)
_SIGNATURES = {
    "easytune_cuda_abi_version": ([], _I),
    "easytune_cuda_version": ([], _I),
    "easytune_cuda_archs": ([], ctypes.c_char_p),
    "easytune_cuda_last_error": ([], ctypes.c_char_p),
    "easytune_cuda_device_count": ([ctypes.POINTER(_I)], _I),
    "easytune_cuda_probe": ([], _I),
    "easytune_guided_step_fwd": ([_P] * 9 + [_I64, _I64, _I, _I, _F, _F, _P], _I),
    "easytune_guided_step_bwd": ([_P] * 9 + [_I, _I64, _I64, _I, _I, _F, _F, _P], _I),
    "easytune_reward_head_fwd": ([_P, _P, _P, _I64, _I64, _I, _F, _P], _I),
    "easytune_reward_head_bwd": ([_P] * 5 + [_I64, _I64, _I, _F, _P], _I),
    "easytune_attention_fwd": ([_P] * 6 + [_I64] * 5 + [_STRIDES] * 3 + [_I, _F, _P], _I),
}


def candidate_paths() -> list[Path]:
    """Where the library is looked for, in order (only ``$EASYTUNE_CUDA_LIB`` when it is set)."""
    env = os.environ.get(ENV_VAR)
    if env:
        return [Path(env)]
    return [
        Path(__file__).resolve().parent / LIB_NAME,
        _REPO / "build" / "csrc" / LIB_NAME,
        _REPO / "build" / LIB_NAME,
    ]


def find_library() -> Path | None:
    """The first existing candidate path, or None."""
    return next((p for p in candidate_paths() if p.is_file()), None)


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _require(op: str, dtype: torch.dtype, like: torch.Tensor, **tensors: torch.Tensor | None) -> None:
    """Memory safety of a call: every given tensor contiguous, of ``dtype`` and on ``like``'s device."""
    for name, t in tensors.items():
        if t is None:
            continue
        if not t.is_contiguous() or t.dtype != dtype or t.device != like.device:
            raise ConfigError(
                f"{op}: {name} must be a contiguous {dtype} tensor on {like.device}, got "
                f"{t.dtype} on {t.device} with strides {t.stride()}"
            )


class CudaLibrary:
    """A loaded libeasytune_cuda.so (or its CPU emulation) with typed, checked entry points.

    Tensor arguments must be contiguous, share one dtype (float32/float16/bfloat16) and one device;
    ``stream`` is a ``cudaStream_t`` as an int (``torch.cuda.Stream.cuda_stream``) or None.
    """

    def __init__(self, path: Path) -> None:
        try:
            self._lib = ctypes.CDLL(str(path))
        except OSError as err:
            raise BackendUnavailableError(f"cannot load {path}: {err}") from err
        for name, (argtypes, restype) in _SIGNATURES.items():
            fn = getattr(self._lib, name, None)
            if fn is None:
                raise BackendUnavailableError(
                    f"{path} has no symbol {name}: not libeasytune_cuda.so of this "
                    f"easytune; rebuild it with `make cuda-build`"
                )
            fn.argtypes, fn.restype = argtypes, restype
        abi = self._lib.easytune_cuda_abi_version()
        if abi != ABI_VERSION:
            raise BackendUnavailableError(
                f"{path} has C ABI version {abi}, this easytune needs {ABI_VERSION}; "
                f"rebuild it with `make cuda-build`"
            )
        self.path = Path(path)
        self.archs: tuple[str, ...] = tuple(
            a for a in self._lib.easytune_cuda_archs().decode().split(",") if a
        )
        self.emulated = self.archs == ("emulated",)
        version = self._lib.easytune_cuda_version()
        self.cuda_version = f"{version // 1000}.{version % 1000 // 10}" if version else None

    def _check(self, op: str, code: int) -> None:
        if code != 0:
            message = self._lib.easytune_cuda_last_error().decode(errors="replace")
            if not message.startswith(op):
                message = f"{op}: {message}"
            raise CudaOpError(f"{message} (error code {code})")

    def supports(self, capability: tuple[int, int]) -> bool:
        """Whether the library has code for a GPU of this compute capability: SASS sm_XY runs on the
        same major with a minor >= Y, sm_XYa only on XY itself, PTX compute_XY on any GPU >= XY."""
        cc = capability[0] * 10 + capability[1]
        for tag in self.archs:
            match = re.fullmatch(r"(sm|compute)_(\d+)([af]?)", tag)
            if match is None:
                continue
            kind, number, suffix = match.group(1), int(match.group(2)), match.group(3)
            if suffix == "a":
                ok = number == cc
            elif kind == "sm":
                ok = number // 10 == cc // 10 and number <= cc
            else:
                ok = number <= cc
            if ok:
                return True
        return False

    def device_count(self) -> int:
        count = ctypes.c_int(0)
        self._check("easytune_cuda_device_count", self._lib.easytune_cuda_device_count(ctypes.byref(count)))
        return count.value

    def probe(self) -> None:
        """Raises CudaOpError unless the library has a kernel image for the current CUDA device."""
        self._check("easytune_cuda_probe", self._lib.easytune_cuda_probe())

    def guided_step_fwd(
        self,
        cond: torch.Tensor,
        uncond: torch.Tensor | None,
        sample: torch.Tensor,
        noise: torch.Tensor | None,
        alpha_t: torch.Tensor,
        alpha_prev: torch.Tensor,
        guidance_scale: float,
        prediction: int,
        eta: float,
        stream: int | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(guided, x0, prev)`` like ``sample`` [B, ...]; alphas float32 [B]; noise None = no noise term."""
        op = "easytune_guided_step_fwd"
        _require(op, sample.dtype, sample, cond=cond, uncond=uncond, sample=sample, noise=noise)
        _require(op, torch.float32, sample, alpha_t=alpha_t, alpha_prev=alpha_prev)
        batch = sample.shape[0]
        for name, t in (("cond", cond), ("uncond", uncond), ("noise", noise)):
            if t is not None and t.shape != sample.shape:
                raise ConfigError(
                    f"{op}: {name} shape {tuple(t.shape)} differs from sample {tuple(sample.shape)}"
                )
        if alpha_t.shape != (batch,) or alpha_prev.shape != (batch,):
            raise ConfigError(
                f"{op}: alphas must have shape [{batch}], got {tuple(alpha_t.shape)}, "
                f"{tuple(alpha_prev.shape)}"
            )
        guided, x0, prev = (torch.empty_like(sample) for _ in range(3))
        per_sample = sample.numel() // batch if batch else 0
        self._check(
            op,
            self._lib.easytune_guided_step_fwd(
                _ptr(cond),
                _ptr(uncond),
                _ptr(sample),
                _ptr(noise),
                _ptr(alpha_t),
                _ptr(alpha_prev),
                _ptr(guided),
                _ptr(x0),
                _ptr(prev),
                batch,
                per_sample,
                DTYPE_CODES[sample.dtype],
                prediction,
                guidance_scale,
                eta,
                stream,
            ),
        )
        return guided, x0, prev

    def guided_step_bwd(
        self,
        grad_guided: torch.Tensor | None,
        grad_x0: torch.Tensor | None,
        grad_prev: torch.Tensor | None,
        alpha_t: torch.Tensor,
        alpha_prev: torch.Tensor,
        guidance_scale: float,
        prediction: int,
        eta: float,
        has_uncond: bool,
        need: tuple[bool, bool, bool, bool],
        stream: int | None,
    ) -> tuple[torch.Tensor | None, ...]:
        """Gradients ``(cond, uncond, sample, noise)``, each None unless ``need`` asks for it."""
        op = "easytune_guided_step_bwd"
        like = next(g for g in (grad_guided, grad_x0, grad_prev) if g is not None)
        _require(op, like.dtype, like, grad_guided=grad_guided, grad_x0=grad_x0, grad_prev=grad_prev)
        _require(op, torch.float32, like, alpha_t=alpha_t, alpha_prev=alpha_prev)
        for name, g in (("grad_guided", grad_guided), ("grad_x0", grad_x0), ("grad_prev", grad_prev)):
            if g is not None and g.shape != like.shape:
                raise ConfigError(f"{op}: {name} shape {tuple(g.shape)} differs from {tuple(like.shape)}")
        batch = like.shape[0]
        if alpha_t.shape != (batch,) or alpha_prev.shape != (batch,):
            raise ConfigError(f"{op}: alphas must have shape [{batch}]")
        if need[1] and not has_uncond:
            raise ConfigError(f"{op}: the gradient of uncond was asked for, but the forward had no uncond")
        grads = [torch.empty_like(like) if n else None for n in need]
        per_sample = like.numel() // batch if batch else 0
        self._check(
            op,
            self._lib.easytune_guided_step_bwd(
                _ptr(grad_guided),
                _ptr(grad_x0),
                _ptr(grad_prev),
                _ptr(alpha_t),
                _ptr(alpha_prev),
                *map(_ptr, grads),
                int(has_uncond),
                batch,
                per_sample,
                DTYPE_CODES[like.dtype],
                prediction,
                guidance_scale,
                eta,
                stream,
            ),
        )
        return tuple(grads)

    def reward_head_fwd(
        self, motion: torch.Tensor, text: torch.Tensor, eps: float, stream: int | None
    ) -> torch.Tensor:
        """Cosine per row, [B, D] x [B, D] -> [B] in the input dtype."""
        op = "easytune_reward_head_fwd"
        _require(op, motion.dtype, motion, motion=motion, text=text)
        if motion.dim() != 2 or motion.shape != text.shape:
            raise ConfigError(
                f"{op}: motion and text must be [B, D] of one shape, got {tuple(motion.shape)}, "
                f"{tuple(text.shape)}"
            )
        out = motion.new_empty(motion.shape[0])
        self._check(
            op,
            self._lib.easytune_reward_head_fwd(
                _ptr(motion),
                _ptr(text),
                _ptr(out),
                motion.shape[0],
                motion.shape[1],
                DTYPE_CODES[motion.dtype],
                eps,
                stream,
            ),
        )
        return out

    def reward_head_bwd(
        self,
        motion: torch.Tensor,
        text: torch.Tensor,
        grad: torch.Tensor,
        eps: float,
        need: tuple[bool, bool],
        stream: int | None,
    ) -> tuple[torch.Tensor | None, ...]:
        """Gradients ``(motion, text)`` of ``sum(grad * cos)``, each None unless ``need`` asks for it."""
        op = "easytune_reward_head_bwd"
        _require(op, motion.dtype, motion, motion=motion, text=text, grad=grad)
        if motion.dim() != 2 or motion.shape != text.shape or grad.shape != motion.shape[:1]:
            raise ConfigError(
                f"{op}: expected motion, text [B, D] and grad [B], got {tuple(motion.shape)}, "
                f"{tuple(text.shape)}, {tuple(grad.shape)}"
            )
        grads = [torch.empty_like(motion) if n else None for n in need]
        self._check(
            op,
            self._lib.easytune_reward_head_bwd(
                _ptr(motion),
                _ptr(text),
                _ptr(grad),
                *map(_ptr, grads),
                motion.shape[0],
                motion.shape[1],
                DTYPE_CODES[motion.dtype],
                eps,
                stream,
            ),
        )
        return tuple(grads)

    def attention_fwd(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        q_lengths: torch.Tensor | None,
        kv_lengths: torch.Tensor | None,
        scale: float,
        stream: int | None,
    ) -> torch.Tensor:
        """Masked attention forward, [B, H, Tq, D] (contiguous output). q/k/v may be strided views with a
        contiguous last dim; lengths int64 [B] on the same device."""
        op = "easytune_attention_fwd"
        for name, t in (("q", q), ("k", k), ("v", v)):
            if t.dim() != 4 or t.stride(-1) != 1 or t.dtype != q.dtype or t.device != q.device:
                raise ConfigError(
                    f"{op}: {name} must be [B, H, T, D] with a contiguous last dim, dtype {q.dtype} "
                    f"on {q.device}; got {t.dtype} {tuple(t.shape)} strides {t.stride()}"
                )
        if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
            raise ConfigError(
                f"{op}: incompatible shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
            )
        _require(op, torch.int64, q, q_lengths=q_lengths, kv_lengths=kv_lengths)
        for name, lengths in (("q_lengths", q_lengths), ("kv_lengths", kv_lengths)):
            if lengths is not None and lengths.shape != (q.shape[0],):
                raise ConfigError(f"{op}: {name} must have shape [{q.shape[0]}], got {tuple(lengths.shape)}")
        batch, heads, tq, head_dim = q.shape
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        strides = [(ctypes.c_int64 * 3)(*t.stride()[:3]) for t in (q, k, v)]
        self._check(
            op,
            self._lib.easytune_attention_fwd(
                _ptr(q),
                _ptr(k),
                _ptr(v),
                _ptr(out),
                _ptr(q_lengths),
                _ptr(kv_lengths),
                batch,
                heads,
                tq,
                k.shape[2],
                head_dim,
                *strides,
                DTYPE_CODES[q.dtype],
                scale,
                stream,
            ),
        )
        return out


_LOADED: dict[Path, CudaLibrary] = {}
_FAILED: dict[Path, str] = {}


def load_library(path: Path | None = None) -> CudaLibrary:
    """The library at ``path`` (default: the first one found), loaded once per path.

    Raises BackendUnavailableError naming the searched paths, or why loading failed.
    """
    if path is None:
        path = find_library()
        if path is None:
            raise BackendUnavailableError(not_found_message())
    path = Path(path).resolve()
    if path in _FAILED:
        raise BackendUnavailableError(_FAILED[path])
    if path not in _LOADED:
        try:
            _LOADED[path] = CudaLibrary(path)
        except BackendUnavailableError as err:
            _FAILED[path] = str(err)
            raise
    return _LOADED[path]


def not_found_message() -> str:
    searched = ", ".join(str(p) for p in candidate_paths())
    return (
        f"{LIB_NAME} not found (searched: {searched}); build it with `make cuda-build` (or install with "
        f"EASYTUNE_BUILD_CUDA=1) or point {ENV_VAR} at it"
    )


def clear_cache() -> None:
    """Forget load failures (after building the library); loaded libraries stay loaded."""
    _FAILED.clear()
