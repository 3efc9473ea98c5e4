"""GPU telemetry through NVML (``nvidia-ml-py``, imported lazily): memory used, utilisation and power,
sampled in a background thread while a benchmark runs.

On a machine without NVML (no driver, no GPU, package missing) nothing fails: ``nvml_status()`` says
why, and an ``NvmlSampler`` is then inert and its ``summary()`` is ``{"nvml": "NVML not available: ..."}``.
NVML sees the whole device (every process, the CUDA context, the caching allocator's reserve); the
allocator's own peak is ``torch.cuda.max_memory_allocated`` (see ``easytune.bench.memory``).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

UNAVAILABLE = "NVML not available"


def _load() -> tuple[ModuleType | None, str]:
    """(pynvml module initialised, "") or (None, reason)."""
    try:
        import pynvml
    except ImportError as err:
        return None, f"{UNAVAILABLE}: the nvidia-ml-py package is not installed ({err})"
    try:
        pynvml.nvmlInit()
    except Exception as err:  # noqa: BLE001 - every NVML failure becomes a reason string
        return None, f"{UNAVAILABLE}: nvmlInit failed ({type(err).__name__}: {err})"
    return pynvml, ""


def nvml_status() -> tuple[bool, str]:
    """``(True, "")`` when NVML can be initialised here, else ``(False, "NVML not available: <why>")``."""
    nvml, reason = _load()
    if nvml is None:
        return False, reason
    nvml.nvmlShutdown()
    return True, ""


def driver_version() -> str:
    """The NVIDIA driver version, or the ``NVML not available: ...`` reason."""
    nvml, reason = _load()
    if nvml is None:
        return reason
    try:
        version = nvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    finally:
        nvml.nvmlShutdown()


def _handle(nvml: ModuleType, device_index: int) -> Any:
    """The NVML handle of torch's CUDA device ``device_index`` (matched by UUID, so CUDA_VISIBLE_DEVICES
    reordering is respected; falls back to the same index when torch exposes no UUID)."""
    import torch

    uuid = getattr(torch.cuda.get_device_properties(device_index), "uuid", None)
    if uuid is not None:
        try:
            return nvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
        except Exception:  # noqa: BLE001 - MIG or older drivers: use the index instead
            pass
    return nvml.nvmlDeviceGetHandleByIndex(device_index)


@dataclass
class Sample:
    """One reading: seconds since start, device memory used (bytes), GPU and memory utilisation (%),
    power (W; None where the board does not report it)."""

    t: float
    memory_used: int
    util_gpu: int
    util_memory: int
    power_w: float | None


@dataclass
class NvmlSampler:
    """Context manager sampling one GPU every ``interval_s`` seconds in a daemon thread.

    >>> with NvmlSampler(device_index=0) as s:
    ...     run_benchmark()
    >>> s.summary()   # peak / mean memory, utilisation, power, energy; or {"nvml": reason}
    """

    device_index: int = 0
    interval_s: float = 0.01
    samples: list[Sample] = field(default_factory=list)
    available: bool = False
    reason: str = ""

    def __post_init__(self) -> None:
        if self.interval_s <= 0:
            from easytune.errors import ConfigError

            raise ConfigError(f"NvmlSampler interval_s must be > 0 seconds, got {self.interval_s}")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml: ModuleType | None = None

    def __enter__(self) -> NvmlSampler:
        self.samples.clear()
        self._nvml, self.reason = _load()
        self.available = self._nvml is not None
        if not self.available:
            return self
        try:
            handle = _handle(self._nvml, self.device_index)
        except Exception as err:  # noqa: BLE001
            self._nvml.nvmlShutdown()
            self._nvml, self.available = None, False
            self.reason = f"{UNAVAILABLE}: no NVML handle for CUDA device {self.device_index} ({err})"
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(handle,), name="easytune-nvml", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        if self._nvml is not None:
            self._nvml.nvmlShutdown()
            self._nvml = None

    def _read(self, handle: Any, t0: float) -> Sample:
        nvml = self._nvml
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        util = nvml.nvmlDeviceGetUtilizationRates(handle)
        try:
            power = nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0  # milliwatts -> watts
        except Exception:  # noqa: BLE001 - not supported on some boards
            power = None
        return Sample(time.perf_counter() - t0, int(memory.used), int(util.gpu), int(util.memory), power)

    def _run(self, handle: Any) -> None:
        t0 = time.perf_counter()
        while True:
            self.samples.append(self._read(handle, t0))
            if self._stop.wait(self.interval_s):
                self.samples.append(self._read(handle, t0))  # the state at the end of the run
                return

    def summary(self) -> dict[str, Any]:
        """Peak and mean memory used (bytes), mean/max utilisation (%), mean/max power (W) and energy (J,
        trapezoidal integral of power); ``{"nvml": reason}`` when NVML was not available."""
        if not self.available:
            return {"nvml": self.reason or f"{UNAVAILABLE}: the sampler was never started"}
        s = self.samples
        if not s:
            return {"nvml": "no NVML samples were taken"}
        out: dict[str, Any] = {
            "nvml_samples": len(s),
            "nvml_memory_used_peak_bytes": max(x.memory_used for x in s),
            "nvml_memory_used_mean_bytes": sum(x.memory_used for x in s) / len(s),
            "nvml_util_gpu_mean": sum(x.util_gpu for x in s) / len(s),
            "nvml_util_gpu_max": max(x.util_gpu for x in s),
            "nvml_util_memory_mean": sum(x.util_memory for x in s) / len(s),
        }
        powers = [(x.t, x.power_w) for x in s if x.power_w is not None]
        if powers:
            out["nvml_power_mean_w"] = sum(p for _, p in powers) / len(powers)
            out["nvml_power_max_w"] = max(p for _, p in powers)
            out["nvml_energy_j"] = sum(
                (t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in zip(powers, powers[1:])
            )
        return out
