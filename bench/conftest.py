"""pytest-benchmark suites of easytune: ``pytest bench/ --benchmark-json=out.json``.

Options: ``--preset tiny|mld`` (method models), ``--device cpu|cuda[:i]``, ``--batch N`` (default 2 on
CPU, 64 on GPU), ``--cases easytune-1,draft-50,...`` (method cases), ``--ddim-steps N`` (default 50),
``--kernel-dtype`` (default float32 on CPU, bfloat16 on GPU). Every benchmark stores its result row
in ``extra_info`` and the environment record goes to ``machine_info["easytune"]``, so
``easytune bench report`` / ``compare`` read the JSON directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from easytune.methods.registry import DEFAULT_BENCH_CASES as DEFAULT_CASES


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("easytune", "easytune benchmark options")
    group.addoption("--preset", default="tiny", choices=("tiny", "mld"), help="model preset (default tiny)")
    group.addoption("--device", default="cpu", help="torch device (default cpu)")
    group.addoption("--batch", type=int, default=None, help="batch size (default 2 on CPU, 64 on GPU)")
    group.addoption("--cases", default=DEFAULT_CASES, help=f"method cases (default {DEFAULT_CASES})")
    group.addoption("--ddim-steps", type=int, default=50, help="DDIM sampling steps (default 50)")
    group.addoption("--kernel-dtype", default=None, help="kernel dtype (default float32 CPU, bfloat16 GPU)")


@dataclass(frozen=True)
class BenchOptions:
    preset: str
    device: str
    batch: int
    cases: str
    ddim_steps: int
    kernel_dtype: str

    @property
    def cuda(self) -> bool:
        return torch.device(self.device).type == "cuda"


def _options(config: pytest.Config) -> BenchOptions:
    device = config.getoption("--device")
    cuda = torch.device(device).type == "cuda"
    return BenchOptions(
        config.getoption("--preset"),
        device,
        config.getoption("--batch") or (64 if cuda else 2),
        config.getoption("--cases"),
        config.getoption("--ddim-steps"),
        config.getoption("--kernel-dtype") or ("bfloat16" if cuda else "float32"),
    )


@pytest.fixture(scope="session")
def bench_options(request: pytest.FixtureRequest) -> BenchOptions:
    options = _options(request.config)
    if options.cuda and not torch.cuda.is_available():
        pytest.skip(f"--device {options.device} needs a CUDA GPU")
    return options


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    from dataclasses import asdict

    from easytune.bench.env import environment

    options = _options(config)
    machine_info["easytune"] = environment(options.device, asdict(options))
