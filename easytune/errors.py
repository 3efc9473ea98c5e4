"""Exception types. Every message names the file, field or argument at fault and what was expected."""

from __future__ import annotations


class EasytuneError(Exception):
    """Base class; the CLI prints these without a traceback."""


class DataError(EasytuneError, ValueError):
    """A dataset file or field is missing or malformed."""


class CheckpointError(EasytuneError, ValueError):
    """A checkpoint cannot be read or does not match the model (missing, extra or mis-shaped keys)."""


class ConfigError(EasytuneError, ValueError):
    """An argument or configuration value is out of range or inconsistent."""


class NonFiniteLossError(EasytuneError, FloatingPointError):
    """A loss or gradient became NaN or inf; training stops instead of stepping on it."""


class NonFiniteError(NonFiniteLossError):
    """A weight became NaN or inf after an update; the message names the tensor, the update and the cause."""


class BackendUnavailableError(EasytuneError, RuntimeError):
    """An explicitly requested kernel backend cannot run these inputs; the message lists why."""


class CudaOpError(EasytuneError, RuntimeError):
    """A call into libeasytune_cuda.so failed; the message names the entry point and the cause."""
