"""NVML sampler: the 'NVML not available' path and the summary of fake readings (no GPU needed)."""

import sys
import types

import pytest

from easytune.bench import nvml


def test_missing_package_is_reported(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    ok, reason = nvml.nvml_status()
    assert not ok and reason.startswith("NVML not available") and "nvidia-ml-py" in reason
    with nvml.NvmlSampler() as sampler:
        pass
    assert not sampler.available
    assert sampler.summary() == {"nvml": reason}
    assert nvml.driver_version() == reason


def test_failing_init_is_reported(monkeypatch):
    fake = types.ModuleType("pynvml")

    def init():
        raise RuntimeError("NVML Shared Library Not Found")

    fake.nvmlInit = init
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    ok, reason = nvml.nvml_status()
    assert not ok and "nvmlInit failed" in reason and "Shared Library" in reason


def _fake_nvml(readings):
    fake = types.ModuleType("pynvml")
    state = {"i": 0, "shutdown": 0}

    def reading():
        r = readings[min(state["i"], len(readings) - 1)]
        state["i"] += 1
        return r

    fake.nvmlInit = lambda: None
    fake.nvmlShutdown = lambda: state.__setitem__("shutdown", state["shutdown"] + 1)
    fake.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=reading()[0])
    fake.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=50, memory=20)
    fake.nvmlDeviceGetPowerUsage = lambda h: 100_000  # mW
    return fake, state


def test_sampler_summary_with_fake_nvml(monkeypatch):
    fake, state = _fake_nvml([(1000,), (5000,), (3000,)])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(nvml, "_handle", lambda module, index: "handle")
    with nvml.NvmlSampler(interval_s=0.001) as sampler:
        while len(sampler.samples) < 3:
            pass
    s = sampler.summary()
    assert sampler.available and state["shutdown"] == 1
    assert s["nvml_memory_used_peak_bytes"] == 5000
    assert s["nvml_util_gpu_mean"] == 50 and s["nvml_power_max_w"] == pytest.approx(100.0)
    duration = sampler.samples[-1].t - sampler.samples[0].t
    assert s["nvml_energy_j"] == pytest.approx(100.0 * duration)


def test_sampler_rejects_bad_interval():
    from easytune.errors import ConfigError

    with pytest.raises(ConfigError, match="interval_s"):
        nvml.NvmlSampler(interval_s=0)
