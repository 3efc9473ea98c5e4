"""Helpers shared by the Triton kernels: interpreter detection, the matmul helper, launch configs."""

import torch
import triton
import triton.language as tl

# Triton picks the interpreter when a kernel is decorated, so the launchers follow the same decision.
INTERPRET: bool = bool(triton.knobs.runtime.interpret)


def autotune_configs(configs: list[triton.Config], interpreter_config: triton.Config) -> list[triton.Config]:
    """``configs`` on a GPU; the single ``interpreter_config`` under TRITON_INTERPRET=1 (the interpreter
    cannot benchmark several configs)."""
    return [interpreter_config] if INTERPRET else configs


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot`` input precision: fp32 operands use TF32 only when PyTorch's matmul flag allows it."""
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def stride_one_last(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when its last dimension is unit-stride (what the kernels' loads assume), else a copy."""
    return t if t.stride(-1) == 1 else t.contiguous()


def distinct(*tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    """``tensors`` with repeats replaced by views (``attention(x, x, x)``, one lengths tensor for queries
    and keys): ``torch.compile`` cannot trace an autograd.Function given one tensor twice."""
    seen: set[int] = set()
    out = []
    for t in tensors:
        if t is not None and id(t) in seen:
            t = t.view_as(t)
        elif t is not None:
            seen.add(id(t))
        out.append(t)
    return out


@triton.jit
def mm(a, b, FP32_OPERANDS: tl.constexpr, PRECISION: tl.constexpr):
    """``a @ b`` accumulated in fp32. Under the interpreter the operands are cast to fp32 first
    (its bf16 ``tl.dot`` is wrong); values rounded to the input dtype beforehand stay rounded."""
    if FP32_OPERANDS:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=PRECISION)
