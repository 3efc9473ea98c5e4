"""Compile-only check of the Triton kernels for NVIDIA GPUs, on a machine without one.

    TRITON_INTERPRET=0 python -m easytune_kernels.compile_check [--arch 90] [--dtype bf16] [--all]

The CPU interpreter (what CI runs) executes the kernels' Python semantics; it does not see what only
the compiler rejects (a non-constexpr global, a type mismatch between branches, an unsupported
``tl.dot`` shape). This lowers every kernel to a cubin with the ptxas bundled in Triton's wheel and
prints each kernel's registers, stack (spills) and shared memory; it exits 1 if one fails to compile.
``--all`` compiles every autotune config, head dim and variant, not one of each kernel.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from easytune_kernels import _common, attention, guided_step, reward_head

FLOAT_ARGS = {"qk_scale", "sm_scale", "dropout_p", "w", "eta", "eps"}
INT64_ARGS = {"seed"}


def _signature(fn: triton.JITFunction, pointers: dict[str, str], constexprs: dict) -> dict[str, str]:
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in pointers:
            sig[name] = pointers[name]
        else:
            sig[name] = "fp32" if name in FLOAT_ARGS else "i64" if name in INT64_ARGS else "i32"
    return sig


def _cases(dtype: str, every_config: bool) -> Iterator[tuple[str, triton.JITFunction, dict, dict, int, int]]:
    """(label, kernel, pointer types, constexprs, num_warps, num_stages) to compile."""
    t, f32 = f"*{dtype}", "*fp32"
    lengths = {"QLEN": "*i32", "KVLEN": "*i32"}
    fwd = dict(Q=t, K=t, V=t, O=t, LSE=f32, **lengths)
    dkdv = dict(Q=t, K=t, V=t, DO=t, LSE=f32, DELTA=f32, DK=t, DV=t, **lengths)
    dq = dict(Q=t, K=t, V=t, DO=t, LSE=f32, DELTA=f32, DQ=t, **lengths)
    tiles = [
        (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) for c in attention._configs()
    ]
    for head_dim in (32, 64, 128) if every_config else (64,):
        for bm, bn, warps, stages in tiles if every_config else [(64, 64, 4, 2)]:
            for dropout in (False, True) if every_config else (True,):
                const = dict(
                    HEAD_DIM=head_dim,
                    BLOCK_M=bm,
                    BLOCK_N=bn,
                    FP32_OPERANDS=False,
                    PRECISION="ieee",
                    DROPOUT=dropout,
                )
                label = f"D={head_dim} {bm}x{bn} w{warps} dropout={dropout}"
                for name, kernel, ptrs in (
                    ("attention fwd", attention._fwd_kernel, fwd),
                    ("attention dkdv", attention._dkdv_kernel, dkdv),
                    ("attention dq", attention._dq_kernel, dq),
                ):
                    yield f"{name} {label}", kernel.fn, ptrs, const, warps, stages
    yield (
        "attention delta",
        attention._delta_kernel,
        dict(O=t, DO=t, DELTA=f32),
        dict(HEAD_DIM=64, BLOCK_M=64),
        4,
        1,
    )
    step = dict(C=t, U=t, X=t, NOISE=t, A_T=f32, A_PREV=f32, G=t, X0=t, PREV=t)
    step_grad = dict(DG=t, DX0=t, DPREV=t, A_T=f32, A_PREV=f32, DC=t, DU=t, DX=t)
    for pred in (0, 1, 2) if every_config else (2,):
        yield (
            f"guided_step fwd pred={pred}",
            guided_step._fwd_kernel.fn,
            step,
            dict(HAS_UNCOND=True, HAS_NOISE=True, PRED=pred, BLOCK=2048),
            8,
            1,
        )
        yield (
            f"guided_step bwd pred={pred}",
            guided_step._bwd_kernel.fn,
            step_grad,
            dict(HAS_DG=True, HAS_DX0=True, HAS_DPREV=True, HAS_UNCOND=True, PRED=pred, BLOCK=2048),
            8,
            1,
        )
    yield (
        "reward_head fwd",
        reward_head._fwd_kernel,
        dict(M=t, T=t, COS=t, STATS=f32),
        dict(BLOCK_B=16, BLOCK_D=256),
        8,
        1,
    )
    yield (
        "reward_head bwd",
        reward_head._bwd_kernel,
        dict(GRAD=t, M=t, T=t, STATS=f32, DM=t, DT=t),
        dict(BLOCK_B=16, BLOCK_D=256),
        8,
        1,
    )


def _registers(cubin: bytes) -> str:
    """Registers and stack (spills) of a cubin, read with the cuobjdump bundled with Triton."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([str(tool), "-res-usage", f.name], capture_output=True, text=True).stdout
    found = re.search(r"REG:(\d+).*?STACK:(\d+)", out, re.S)
    return f"regs={found[1]} stack={found[2]}" if found else "registers unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10 (80: A100, 90: H100)")
    parser.add_argument("--dtype", default="bf16", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--all", action="store_true", help="every autotune config, head dim and variant")
    args = parser.parse_args(argv)
    if _common.INTERPRET:
        print("compile_check: TRITON_INTERPRET=1 is set; run with TRITON_INTERPRET=0", file=sys.stderr)
        return 2
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    failed = 0
    for label, fn, pointers, constexprs, warps, stages in _cases(args.dtype, args.all):
        source = ASTSource(fn=fn, signature=_signature(fn, pointers, constexprs), constexprs=constexprs)
        try:
            kernel = triton.compile(
                source,
                target=GPUTarget("cuda", args.arch, 32),
                options=dict(num_warps=warps, num_stages=stages),
            )
        except Exception as err:  # noqa: BLE001 - report every kernel, then fail
            failed += 1
            print(f"FAIL {label}: {type(err).__name__}: {err}")
            continue
        print(f"ok   {label}: {_registers(kernel.asm['cubin'])} shared={kernel.metadata.shared}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
