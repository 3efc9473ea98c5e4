"""Packaging: maps the Triton folder ``kernels/`` to the import name ``easytune_kernels`` and, when
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

from setuptools import find_packages, setup
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
    if shutil.which("cmake") is None or shutil.which("nvcc") is None:
        print("easytune: EASYTUNE_BUILD_CUDA=1 but cmake or nvcc is missing; skipping the CUDA library",
              file=sys.stderr)
        return None
    build_dir = ROOT / "build" / "csrc"
    try:
        subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release"], check=True)
        subprocess.run(["cmake", "--build", str(build_dir), "-j", str(os.cpu_count() or 2)], check=True)
    except subprocess.CalledProcessError as err:
        print(f"easytune: building csrc/ failed ({err}); the cuda backend will be unavailable", file=sys.stderr)
        return None
    libs = sorted(build_dir.glob("**/libeasytune_cuda.so"))
    return libs[0] if libs else None


setup(
    packages=find_packages(include=["easytune", "easytune.*"]) + ["easytune_kernels"],
    package_dir={"easytune_kernels": "kernels"},
    package_data={"easytune": ["assets/*", "assets/**/*"], "easytune.ops": ["*.so"]},
    cmdclass={"build_py": BuildPyWithCuda},
)
