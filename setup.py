"""Packaging: ``easytune`` and its Triton kernels ``easytune_kernels`` and, when
``EASYTUNE_BUILD_CUDA=1``, builds the CUDA library of ``csrc/`` with CMake and ships it inside the
package. A missing CUDA toolchain never fails an install: the library is then simply absent and the
``cuda`` backend reports why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Distribution, find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPyWithCuda(build_py):
    """``build_py`` that also builds ``csrc/`` when ``EASYTUNE_BUILD_CUDA=1``."""

    def run(self) -> None:
        super().run()
        if os.environ.get("EASYTUNE_BUILD_CUDA", "0") != "1":
            return
        lib = _build_cuda_library()
        if lib is not None:
            target = Path(self.build_lib) / "easytune" / "ops" / lib.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(lib, target)


def _build_cuda_library() -> Path | None:
    """CMake-builds ``libeasytune_cuda.so`` (architectures: ``EASYTUNE_CUDA_ARCHS``, see CMakeLists.txt);
    None, with the reason on stderr, when the toolchain or the sources are missing or the build fails."""
    if not (ROOT / "CMakeLists.txt").is_file() or not (ROOT / "csrc").is_dir():
        print(
            "easytune: EASYTUNE_BUILD_CUDA=1 but CMakeLists.txt or csrc/ is not in this source tree; "
            "skipping the CUDA library",
            file=sys.stderr,
        )
        return None
    if shutil.which("cmake") is None or shutil.which("nvcc") is None:
        print(
            "easytune: EASYTUNE_BUILD_CUDA=1 but cmake or nvcc is missing; skipping the CUDA library",
            file=sys.stderr,
        )
        return None
    build_dir = ROOT / "build" / "csrc"
    configure = ["cmake", "-S", str(ROOT), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release"]
    build = ["cmake", "--build", str(build_dir), "-j", str(os.cpu_count() or 2)]
    try:
        subprocess.run(configure, check=True)
        subprocess.run(build, check=True)
    except (OSError, subprocess.CalledProcessError) as err:
        print(
            f"easytune: building csrc/ failed ({err}); the cuda backend will be unavailable", file=sys.stderr
        )
        return None
    lib = build_dir / "libeasytune_cuda.so"
    return lib if lib.is_file() else None


class CudaAwareDistribution(Distribution):
    """Marks the wheel platform-specific when it carries the compiled CUDA library."""

    def has_ext_modules(self) -> bool:
        return os.environ.get("EASYTUNE_BUILD_CUDA", "0") == "1"


setup(
    distclass=CudaAwareDistribution,
    packages=find_packages(include=["easytune", "easytune.*", "easytune_kernels"]),
    package_data={"easytune": ["assets/*", "assets/**/*"], "easytune.ops": ["*.so"]},
    cmdclass={"build_py": BuildPyWithCuda},
)
