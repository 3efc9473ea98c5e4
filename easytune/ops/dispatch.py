"""Backend selection for the fused ops (xformers-style: every backend can say why it cannot run).

Backends: ``auto | triton | cuda | sdpa | xformers | flash | math``. The choice comes from the
call's ``backend=`` argument, else ``EASYTUNE_<OP>_BACKEND`` (``EASYTUNE_ATTENTION_BACKEND``), else
``EASYTUNE_BACKEND``, else ``auto``. An explicit backend that cannot run the inputs raises
``BackendUnavailableError`` with its reasons; ``auto`` takes the first backend in the op's priority
order that has no reason against the inputs and logs (once per distinct reason, at INFO on the
``easytune.ops`` logger) why the ones before it were skipped.

A backend has two kinds of reasons: ``not_supported_reasons`` (it cannot run the inputs at all) and
``auto_reasons`` (it can, but ``auto`` must not pick it: e.g. the Triton kernels on CPU tensors run
in the interpreter, which is for tests only).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from easytune.errors import BackendUnavailableError, ConfigError

BACKENDS = ("auto", "triton", "cuda", "sdpa", "xformers", "flash", "math")
log = logging.getLogger("easytune.ops")

Reasons = Callable[..., list[str]]


def _no_reasons(**_: Any) -> list[str]:
    return []


@dataclass(frozen=True)
class Implementation:
    """One backend of one op: ``fn`` runs it, ``not_supported_reasons(**inputs)`` says why it cannot,
    ``auto_reasons(**inputs)`` why ``auto`` must not choose it."""

    op: str
    backend: str
    fn: Callable[..., Any]
    not_supported_reasons: Reasons
    auto_reasons: Reasons = _no_reasons

    def reasons(self, auto: bool, **inputs: Any) -> list[str]:
        reasons = list(self.not_supported_reasons(**inputs))
        return reasons + list(self.auto_reasons(**inputs)) if auto else reasons


_REGISTRY: dict[str, list[Implementation]] = {}
_LOGGED: set[tuple[str, str, str]] = set()

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
    not_supported_reasons: Reasons,
    *,
    auto_reasons: Reasons | None = None,
) -> None:
    """Add (or replace) ``backend`` for ``op``; ``auto`` tries backends in ``PRIORITY[op]`` order."""
    if backend not in BACKENDS or backend == "auto":
        raise ConfigError(f"backend must be one of {BACKENDS[1:]}, got {backend!r}")
    impls = _REGISTRY.setdefault(op, [])
    impls[:] = [i for i in impls if i.backend != backend]
    impls.append(Implementation(op, backend, fn, not_supported_reasons, auto_reasons or _no_reasons))
    order = {name: i for i, name in enumerate(PRIORITY.get(op, BACKENDS))}
    impls.sort(key=lambda i: order.get(i.backend, len(order)))


def requested_backend(op: str, backend: str | None) -> str:
    """The backend named by the argument, the op's environment variable or ``EASYTUNE_BACKEND``."""
    env = f"EASYTUNE_{op.upper()}_BACKEND"
    choice = backend or os.environ.get(env) or os.environ.get("EASYTUNE_BACKEND") or "auto"
    if choice not in BACKENDS:
        source = "backend=" if backend else (env if os.environ.get(env) else "EASYTUNE_BACKEND")
        raise ConfigError(f"{source}: backend for {op} must be one of {BACKENDS}, got {choice!r}")
    return choice


def resolve(op: str, backend: str | None = None, **inputs: Any) -> Implementation:
    """The implementation of ``op`` that will run ``inputs`` (see the module docstring for the rules).

    Under ``torch.compile`` the choice is made once, at trace time, from the inputs' metadata (device,
    dtype, shape, requires_grad: what Dynamo guards on) and the environment at that time.
    """
    name = _choose(op, backend, **inputs)
    return next(i for i in _REGISTRY[op] if i.backend == name)


@torch.compiler.assume_constant_result
def _choose(op: str, backend: str | None, **inputs: Any) -> str:
    choice = requested_backend(op, backend)
    impls = _REGISTRY.get(op, [])
    if choice != "auto":
        impl = next((i for i in impls if i.backend == choice), None)
        if impl is None:
            raise BackendUnavailableError(f"{op}: backend {choice!r} is not implemented for this op "
                                          f"(available: {[i.backend for i in impls]})")
        reasons = impl.reasons(False, **inputs)
        if reasons:
            raise BackendUnavailableError(f"{op}: backend {choice!r} cannot run these inputs: "
                                          f"{'; '.join(reasons)}")
        return impl.backend
    skipped = []
    for impl in impls:
        reasons = impl.reasons(True, **inputs)
        if not reasons:
            return impl.backend
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
