"""Backend selection for the fused ops (xformers-style: every backend can say why it cannot run).

Backends: ``auto | triton | cuda | sdpa | xformers | flash | math``. The choice comes from the
call's ``backend=`` argument, else ``EASYTUNE_<OP>_BACKEND`` (``EASYTUNE_ATTENTION_BACKEND``), else
``EASYTUNE_BACKEND``, else ``auto``. An explicit backend that cannot run the inputs raises
``BackendUnavailableError`` with its reasons; ``auto`` takes the first backend in the op's priority
order that has no reason against the inputs and logs (once per distinct reason, at DEBUG on the
``easytune.ops`` logger) why the ones before it were skipped.

A backend declares what it can run as ``Capabilities`` (device types, dtypes, head dims, inputs that
require grad, dropout), checked by one function (``capability_reasons``) on the op's data tensors
(``DATA_TENSORS``), plus an optional function of extra reasons (``not_supported_reasons``: library
missing, GPU architecture, ...) and ``auto_reasons`` (it can run, but ``auto`` must not pick it: e.g. the
Triton kernels on CPU tensors run in the interpreter, which is for tests only).

Resolution is memoised: the backend chosen for a call signature (op, requested backend, grad mode, TF32,
and per input its device, dtype, shape and requires_grad, or its value) is cached, so after the first call
dispatch costs one dictionary lookup. Each op's entry point builds its own flat signature inline and looks it
up in the op's memo (``hits(op)``): the fast path is a tuple of attribute reads, one ``dict.get`` and a
counter. The environment variables are read when the memo is filled: ``register`` and ``clear_cache`` drop
it (call the latter after setting ``EASYTUNE_*_BACKEND`` or ``TRITON_INTERPRET`` in a running process, or
after anything else the reasons depend on changed, e.g. a library installed).
"""

from __future__ import annotations

import logging
import operator
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from easytune.errors import BackendUnavailableError, ConfigError

BACKENDS = ("auto", "triton", "cuda", "sdpa", "xformers", "flash", "math")
log = logging.getLogger("easytune.ops")

Reasons = Callable[..., list[str]]

# The tensors each op's capabilities are checked on (other tensor inputs, e.g. the float32 alphas of the
# guided step or the lengths of attention, are the ops' own business).
DATA_TENSORS: dict[str, tuple[str, ...]] = {
    "attention": ("q", "k", "v"),
    "guided_step": ("model_cond", "model_uncond", "sample", "noise"),
    "reward_head": ("motion", "text"),
}
# Environment variables that change what a backend can do (besides the backend choice itself).
_ENV_KEYS = ("TRITON_INTERPRET", "EASYTUNE_CUDA_LIB")


def _no_reasons(**_: Any) -> list[str]:
    return []


@dataclass(frozen=True)
class Capabilities:
    """What a backend runs; None = no restriction. ``devices``: device types (``"cuda"``, ``"cpu"``);
    ``dtypes``: of the data tensors (all alike); ``head_dims``: attention head dims (last dim of ``q``)
    exactly, ``max_head_dim``: up to; ``grad``: False for forward-only kernels (refused when grad mode is
    on and a data tensor requires grad); ``dropout``: False refuses ``dropout_p > 0``."""

    devices: tuple[str, ...] | None = None
    dtypes: tuple[torch.dtype, ...] | None = None
    head_dims: tuple[int, ...] | None = None
    max_head_dim: int | None = None
    grad: bool = True
    dropout: bool = True


def _dtype_names(dtypes: tuple[torch.dtype, ...]) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def capability_reasons(op: str, backend: str, caps: Capabilities, inputs: dict[str, Any]) -> list[str]:
    """Why ``caps`` exclude ``inputs`` (the one check of every backend's declared capabilities)."""
    tensors = {n: inputs[n] for n in DATA_TENSORS.get(op, ()) if isinstance(inputs.get(n), torch.Tensor)}
    if op == "guided_step" and not inputs.get("eta"):
        tensors.pop("noise", None)  # the noise is read only when eta > 0
    reasons = []
    if caps.devices is not None:
        off = sorted({t.device.type for t in tensors.values()} - set(caps.devices))
        if off:
            need = "CUDA" if caps.devices == ("cuda",) else "/".join(caps.devices)
            where = ", ".join(f"{n} on {t.device}" for n, t in tensors.items() if t.device.type in off)
            reasons.append(f"{backend} needs {need} tensors ({where})")
    dtypes = {t.dtype for t in tensors.values()}
    if caps.dtypes is not None:  # a kernel: one dtype and one device for all its data tensors
        if len(dtypes) > 1:
            mixed = ", ".join(f"{n}: {t.dtype}" for n, t in tensors.items())
            reasons.append(f"inputs mix dtypes ({mixed})")
        if len({t.device for t in tensors.values()}) > 1:
            where = ", ".join(f"{n}: {t.device}" for n, t in tensors.items())
            reasons.append(f"inputs are on several devices ({where})")
        bad = sorted(str(d).replace("torch.", "") for d in dtypes if d not in caps.dtypes)
        if bad:
            reasons.append(f"dtype {', '.join(bad)} is not supported ({_dtype_names(caps.dtypes)})")
    if (caps.head_dims is not None or caps.max_head_dim is not None) and "q" in tensors:
        head_dim = tensors["q"].shape[-1]
        if caps.head_dims is not None and head_dim not in caps.head_dims:
            reasons.append(f"head dim {head_dim} is not supported (supported: {caps.head_dims})")
        if caps.max_head_dim is not None and head_dim > caps.max_head_dim:
            reasons.append(f"{backend} supports head dims up to {caps.max_head_dim}, got {head_dim}")
    if not caps.grad and torch.is_grad_enabled() and any(t.requires_grad for t in tensors.values()):
        reasons.append(
            f"{', '.join(n for n, t in tensors.items() if t.requires_grad)} require grad: the {backend} "
            f"{op} is forward-only; call it under torch.no_grad()"
        )
    if not caps.dropout and inputs.get("dropout_p"):
        reasons.append(f"dropout_p={inputs['dropout_p']} is not supported by the {backend} backend")
    return reasons


@dataclass(frozen=True)
class Implementation:
    """One backend of one op: ``fn`` runs it; ``capabilities`` what it can run; ``not_supported_reasons
    (**inputs)`` extra reasons it cannot; ``auto_reasons(**inputs)`` why ``auto`` must not choose it."""

    op: str
    backend: str
    fn: Callable[..., Any]
    not_supported_reasons: Reasons = _no_reasons
    auto_reasons: Reasons = _no_reasons
    capabilities: Capabilities = Capabilities()

    def reasons(self, auto: bool, **inputs: Any) -> list[str]:
        reasons = capability_reasons(self.op, self.backend, self.capabilities, inputs)
        reasons += list(self.not_supported_reasons(**inputs))
        return reasons + list(self.auto_reasons(**inputs)) if auto else reasons


_REGISTRY: dict[str, list[Implementation]] = {}
_LOGGED: set[tuple[str, str, str]] = set()
_CACHE: dict[tuple, int] = {}  # full signature (calls without an entry point's key) -> index into _IMPLS
_IMPLS: list[Implementation] = []  # every implementation ever registered (replaced ones stay, unused)
_COUNTS: list[int] = []  # calls through ``resolve`` per entry of _IMPLS (and those of dropped hits)


class Hit:
    """An entry point's memoised choice for one signature: the backend function, the implementation it
    belongs to and the calls served from the memo since the last ``call_counts(reset=True)``."""

    __slots__ = ("fn", "index", "calls")

    def __init__(self, index: int) -> None:
        self.fn, self.index, self.calls = _IMPLS[index].fn, index, 0


_HITS: dict[str, dict[tuple, Hit]] = {}  # op -> the entry point's key -> Hit


def hits(op: str) -> dict[tuple, Hit]:
    """The memo of ``op``'s entry point: ``{key: Hit}``, the same dict for the life of the process (entry
    points bind it once). The key is the op's own flat tuple of everything its validation and its backends'
    reasons read (see ``resolve``); on a hit the entry point counts the call (``hit.calls += 1``) and runs
    ``hit.fn``; on a miss it calls ``resolve(..., key=key)``, which fills the memo."""
    return _HITS.setdefault(op, {})


# ``auto`` order per op (fastest first); ``math`` is always last and always runs. The varlen
# libraries (flash, xformers) come after the kernels that mask by lengths in place: they need the
# lengths on the host (a device sync per call) and a gather/scatter of the valid frames.
PRIORITY: dict[str, tuple[str, ...]] = {
    "attention": ("triton", "cuda", "flash", "xformers", "sdpa", "math"),
    "guided_step": ("cuda", "triton", "math"),
    "reward_head": ("cuda", "triton", "math"),
}


def register(
    op: str,
    backend: str,
    fn: Callable[..., Any],
    not_supported_reasons: Reasons | None = None,
    *,
    auto_reasons: Reasons | None = None,
    capabilities: Capabilities | None = None,
) -> None:
    """Add (or replace) ``backend`` for ``op``; ``auto`` tries backends in ``PRIORITY[op]`` order."""
    if backend not in BACKENDS or backend == "auto":
        raise ConfigError(f"backend must be one of {BACKENDS[1:]}, got {backend!r}")
    impls = _REGISTRY.setdefault(op, [])
    impls[:] = [i for i in impls if i.backend != backend]
    impls.append(
        Implementation(
            op,
            backend,
            fn,
            not_supported_reasons or _no_reasons,
            auto_reasons or _no_reasons,
            capabilities or Capabilities(),
        )
    )
    order = {name: i for i, name in enumerate(PRIORITY.get(op, BACKENDS))}
    impls.sort(key=lambda i: order.get(i.backend, len(order)))
    _IMPLS.append(impls[[i.backend for i in impls].index(backend)])
    _COUNTS.append(0)
    clear_cache()


def call_counts(reset: bool = False) -> dict[str, dict[str, int]]:
    """``{op: {backend: calls}}``: how often each backend ran each op through ``resolve`` since the start
    (or the last ``reset``): what benchmark rows record as the backends actually used. Compiled code counts
    once per trace (its choice is a constant of the graph), eager code once per call."""
    counts = list(_COUNTS)
    for memo in _HITS.values():
        for hit in memo.values():
            counts[hit.index] += hit.calls
            if reset:
                hit.calls = 0
    out: dict[str, dict[str, int]] = {}
    for impl, n in zip(_IMPLS, counts):
        if n:
            out.setdefault(impl.op, {})[impl.backend] = out.get(impl.op, {}).get(impl.backend, 0) + n
    if reset:
        _COUNTS[:] = [0] * len(_COUNTS)
    return out


def clear_cache() -> None:
    """Forget every memoised choice and the environment variables read (the next call of each signature
    re-reads them and re-evaluates the reasons)."""
    _CACHE.clear()
    _ENV_STATE.clear()
    for memo in _HITS.values():  # keep the calls counted so far, cleared in place (entry points hold them)
        for hit in memo.values():
            _COUNTS[hit.index] += hit.calls
        memo.clear()


_OP_ENV = {op: f"EASYTUNE_{op.upper()}_BACKEND" for op in PRIORITY}
# The environment variables the choice depends on, read once per cache fill (``os.environ.get`` costs ~1 us
# a variable): after changing them in a running process, call ``clear_cache()``.
_ENV_STATE: dict[str, tuple] = {}


def _env_values(op: str) -> tuple:
    state = _ENV_STATE.get(op)
    if state is None:
        names = (_OP_ENV.get(op) or f"EASYTUNE_{op.upper()}_BACKEND", "EASYTUNE_BACKEND", *_ENV_KEYS)
        state = _ENV_STATE[op] = tuple(os.environ.get(n) for n in names)
    return state


# TF32 state without the ~1 us of the ``torch.backends.cuda.matmul.allow_tf32`` property
_ALLOW_TF32 = getattr(torch._C, "_get_cublas_allow_tf32", None) or (
    lambda: torch.backends.cuda.matmul.allow_tf32
)


def requested_backend(op: str, backend: str | None) -> str:
    """The backend named by the argument, the op's environment variable or ``EASYTUNE_BACKEND``."""
    env = _OP_ENV.get(op) or f"EASYTUNE_{op.upper()}_BACKEND"
    choice = backend or os.environ.get(env) or os.environ.get("EASYTUNE_BACKEND") or "auto"
    if choice not in BACKENDS:
        source = "backend=" if backend else (env if os.environ.get(env) else "EASYTUNE_BACKEND")
        raise ConfigError(f"{source}: backend for {op} must be one of {BACKENDS}, got {choice!r}")
    return choice


_PLAIN = (bool, int, float, str, type(None))
_Tensor = torch.Tensor
_compiler = torch.compiler
if hasattr(_compiler, "_is_compiling_flag"):

    @_compiler.assume_constant_result
    def compiling() -> bool:
        """``torch.compiler.is_compiling()`` in one frame instead of three (that also asks
        ``torch.jit.is_scripting()``, which nothing here needs): the first thing every op's entry point
        does. Dynamo evaluates it once at trace time (True) and keeps no guard on it."""
        return _compiler._is_compiling_flag

else:  # a torch without the flag
    compiling = _compiler.is_compiling
_compiling = compiling
_grad_enabled = torch.is_grad_enabled
# A tensor's part of a signature, in one C call: (device, dtype, shape, requires_grad).
tensor_key = operator.attrgetter("device", "dtype", "shape", "requires_grad")


def _signature(op: str, backend: str | None, inputs: dict[str, Any]) -> tuple:
    """What the choice depends on: the op, the backend argument, the environment variables, grad mode, TF32,
    the input names, and per input its (device, dtype, shape, requires_grad) (tensors) or value."""
    key = [op, backend, _ENV_STATE.get(op) or _env_values(op), _grad_enabled(), _ALLOW_TF32(), tuple(inputs)]
    for value in inputs.values():
        key.append(input_key(value))
    return tuple(key)


def input_key(value: Any) -> Any:
    """One input's part of a signature: a tensor's (device, dtype, shape, requires_grad), a plain value
    (bool, int, float, str, None) itself, anything else its type."""
    if isinstance(value, _Tensor):
        return tensor_key(value)
    return value if isinstance(value, _PLAIN) else type(value)


# What an entry point's key may read besides its inputs: grad mode (where a backend is forward-only or a
# reason reads it) and ``allow_tf32()`` (where a reason reads it); every key holds the backend argument.
grad_enabled = _grad_enabled
allow_tf32 = _ALLOW_TF32


def resolve(
    op: str,
    backend: str | None = None,
    validate: Callable[..., None] | None = None,
    *,
    key: tuple | None = None,
    **inputs: Any,
) -> Implementation:
    """The implementation of ``op`` that will run ``inputs`` (see the module docstring for the rules).

    ``validate(**inputs)``: the op's checks of its inputs' metadata (shapes, dtypes, devices, option values),
    run with the first call of each signature only: a signature seen before passed them already.
    ``key``: the entry point's memo key (``hits``) for ``inputs``: a flat tuple of the backend argument, grad
    mode (``grad_enabled()``) and ``allow_tf32()`` where a backend's capabilities or reasons read them, and
    per input everything that validation and the backends' reasons read (a tensor's shape, dtype, device,
    requires_grad; a value or its type), built inline by the entry point from plain attribute reads (a
    loop over a dict of inputs costs microseconds more on the hot path). Given, the choice is stored under
    it in ``hits(op)`` (the entry point serves the next calls itself); else a full signature is derived
    from every input.

    Under ``torch.compile`` (no key: Dynamo guards on the inputs' metadata itself) the choice is made once,
    at trace time, from the inputs' device, dtype, shape and requires_grad and the environment at that time.
    """
    if _compiling():  # traced once: the choice becomes a constant of the graph (counted by _choose)
        return _IMPLS[_choose(op, backend, validate, **inputs)]
    if key is not None:
        hit = _HITS.setdefault(op, {}).get(key)
        if hit is None:
            hit = _HITS[op][key] = Hit(_fill(None, op, backend, validate, inputs))
        hit.calls += 1
        return _IMPLS[hit.index]
    sig = _signature(op, backend, inputs)
    index = _CACHE.get(sig)
    if index is None:
        index = _fill(sig, op, backend, validate, inputs)
    _COUNTS[index] += 1
    return _IMPLS[index]


@torch.compiler.assume_constant_result
def _choose(op: str, backend: str | None, validate: Callable[..., None] | None, **inputs: Any) -> int:
    """The choice under ``torch.compile``: run (for real) once per trace, its result a constant of the graph.
    The call counter is bumped here, once per trace: a counter read by compiled code would be guarded on
    and recompile the graph at every call."""
    key = _signature(op, backend, inputs)
    index = _CACHE.get(key)
    index = _fill(key, op, backend, validate, inputs) if index is None else index
    _COUNTS[index] += 1
    return index


def _fill(
    key: tuple | None,
    op: str,
    backend: str | None,
    validate: Callable[..., None] | None,
    inputs: dict[str, Any],
) -> int:
    """The first call of a signature: validate, evaluate the reasons, remember the choice under ``key`` in
    the full-signature cache (None: the caller stores it in the op's memo)."""
    choice = requested_backend(op, backend)
    if validate is not None:
        validate(**inputs)
    impl = _evaluate(op, choice, inputs)
    index = next(i for i, known in enumerate(_IMPLS) if known is impl)
    if key is not None:
        _CACHE[key] = index
    return index


def _evaluate(op: str, choice: str, inputs: dict[str, Any]) -> Implementation:
    impls = _REGISTRY.get(op, [])
    if choice != "auto":
        impl = next((i for i in impls if i.backend == choice), None)
        if impl is None:
            raise BackendUnavailableError(
                f"{op}: backend {choice!r} is not implemented for this op "
                f"(available: {[i.backend for i in impls]})"
            )
        reasons = impl.reasons(False, **inputs)
        if reasons:
            raise BackendUnavailableError(
                f"{op}: backend {choice!r} cannot run these inputs: {'; '.join(reasons)}"
            )
        return impl
    skipped = []
    for impl in impls:
        reasons = impl.reasons(True, **inputs)
        if not reasons:
            return impl
        skipped.append(f"{impl.backend}: {'; '.join(reasons)}")
        key = (op, impl.backend, "; ".join(reasons))
        if key not in _LOGGED:
            _LOGGED.add(key)
            log.debug("%s: auto skips backend %s: %s", op, impl.backend, key[2])
    raise BackendUnavailableError(f"{op}: no backend can run these inputs ({' | '.join(skipped)})")


def report(op: str, auto: bool = False, **inputs: Any) -> dict[str, list[str]]:
    """``{backend: reasons}`` for every registered backend of ``op`` (empty list = can run).

    ``auto=True`` adds the reasons for which ``auto`` would skip a backend that an explicit choice runs.
    """
    return {i.backend: i.reasons(auto, **inputs) for i in _REGISTRY.get(op, [])}


def registered_ops() -> list[str]:
    """Names of the ops with at least one registered backend."""
    return sorted(_REGISTRY)
