"""Backend selection for the fused ops (xformers-style: every backend can say why it cannot run).

Backends: ``auto | triton | cuda | sdpa | xformers | flash | math``. The choice comes from the
call's ``backend=`` argument, else ``EASYTUNE_<OP>_BACKEND`` (``EASYTUNE_ATTENTION_BACKEND``), else
``EASYTUNE_BACKEND``, else ``auto``. An explicit backend that cannot run the inputs raises
``BackendUnavailableError`` with its reasons; ``auto`` takes the first backend in the op's priority
order whose reasons list is empty and logs (once) why the ones before it were skipped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from easytune.errors import BackendUnavailableError, ConfigError

BACKENDS = ("auto", "triton", "cuda", "sdpa", "xformers", "flash", "math")
log = logging.getLogger("easytune.ops")


@dataclass(frozen=True)
class Implementation:
    """One backend of one op: ``fn`` runs it, ``not_supported_reasons(**inputs)`` says why it cannot."""

    op: str
    backend: str
    fn: Callable[..., Any]
    not_supported_reasons: Callable[..., list[str]]


_REGISTRY: dict[str, list[Implementation]] = {}
_LOGGED: set[tuple[str, str, str]] = set()


def register(op: str, backend: str, fn: Callable[..., Any], not_supported_reasons: Callable[..., list[str]]) -> None:
    """Add (or replace) ``backend`` for ``op``. Registration order is the ``auto`` priority order."""
    if backend not in BACKENDS or backend == "auto":
        raise ConfigError(f"backend must be one of {BACKENDS[1:]}, got {backend!r}")
    impls = _REGISTRY.setdefault(op, [])
    impls[:] = [i for i in impls if i.backend != backend]
    impls.append(Implementation(op, backend, fn, not_supported_reasons))
    order = {name: i for i, name in enumerate(PRIORITY.get(op, BACKENDS))}
    impls.sort(key=lambda i: order.get(i.backend, len(order)))


# ``auto`` order per op (fastest first); ``math`` is always last and always runs.
PRIORITY: dict[str, tuple[str, ...]] = {
    "attention": ("flash", "xformers", "triton", "cuda", "sdpa", "math"),
    "guided_step": ("cuda", "triton", "math"),
    "reward_head": ("cuda", "triton", "math"),
}


def requested_backend(op: str, backend: str | None) -> str:
    """The backend named by the argument, the op's environment variable or ``EASYTUNE_BACKEND``."""
    choice = backend or os.environ.get(f"EASYTUNE_{op.upper()}_BACKEND") or os.environ.get("EASYTUNE_BACKEND") or "auto"
    if choice not in BACKENDS:
        raise ConfigError(f"backend for {op} must be one of {BACKENDS}, got {choice!r}")
    return choice


def resolve(op: str, backend: str | None = None, **inputs: Any) -> Implementation:
    """The implementation of ``op`` that will run ``inputs`` (see the module docstring for the rules)."""
    choice = requested_backend(op, backend)
    impls = _REGISTRY.get(op, [])
    if choice != "auto":
        impl = next((i for i in impls if i.backend == choice), None)
        if impl is None:
            raise BackendUnavailableError(f"{op}: backend {choice!r} is not implemented for this op "
                                          f"(available: {[i.backend for i in impls]})")
        reasons = impl.not_supported_reasons(**inputs)
        if reasons:
            raise BackendUnavailableError(f"{op}: backend {choice!r} cannot run these inputs: " + "; ".join(reasons))
        return impl
    for impl in impls:
        reasons = impl.not_supported_reasons(**inputs)
        if not reasons:
            return impl
        key = (op, impl.backend, "; ".join(reasons))
        if key not in _LOGGED:
            _LOGGED.add(key)
            log.debug("%s: skipping backend %s: %s", op, impl.backend, key[2])
    raise BackendUnavailableError(f"{op}: no backend can run these inputs")


def report(op: str, **inputs: Any) -> dict[str, list[str]]:
    """``{backend: reasons}`` for every registered backend of ``op`` (empty list = can run)."""
    return {i.backend: i.not_supported_reasons(**inputs) for i in _REGISTRY.get(op, [])}


def registered_ops() -> list[str]:
    return sorted(_REGISTRY)
