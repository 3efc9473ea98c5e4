"""The accuracy rule the kernels are held to (flash-attention's): measured against a float64
reference, a kernel's error may be at most ``factor`` times the error of the PyTorch reference run in
the kernel's dtype, plus a small absolute floor: one machine epsilon of that dtype, plus the fp32
epsilon times the size of any terms the kernel subtracts in fp32 (flash-attention's backward
computes dS = P * (dP - rowsum(dO * O)), which cancels). Used by the kernel tests.
"""

from __future__ import annotations

import torch


def max_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    """``max |x - reference|`` in float64 (0.0 for empty tensors)."""
    if x.numel() == 0:
        return 0.0
    return (x.detach().double() - reference.detach().double()).abs().max().item()


def assert_within_rule(
    name: str,
    out: torch.Tensor,
    same_dtype: torch.Tensor,
    fp64: torch.Tensor,
    factor: float,
    cancelled: float = 0.0,
) -> None:
    """Raise AssertionError unless ``max|out - fp64| <= factor * max|same_dtype - fp64| + floor``
    with ``floor = eps(out.dtype) + eps(float32) * cancelled``.

    ``out``: the kernel's result; ``same_dtype``: PyTorch's reference in the kernel's dtype;
    ``fp64``: the reference in float64; ``cancelled``: size of the terms the kernel subtracts in fp32
    on the way to ``out`` (0 when nothing cancels). ``out`` must be finite and shaped like ``fp64``.
    """
    if out.shape != fp64.shape:
        raise AssertionError(f"{name}: shape {tuple(out.shape)} != reference {tuple(fp64.shape)}")
    if not torch.isfinite(out).all():
        raise AssertionError(f"{name}: non-finite values in the kernel's result")
    err, base = max_error(out, fp64), max_error(same_dtype, fp64)
    floor = torch.finfo(out.dtype).eps + torch.finfo(torch.float32).eps * cancelled
    if err > factor * base + floor:
        raise AssertionError(
            f"{name}: max error vs float64 {err:.3g} > {factor} x PyTorch {out.dtype} error "
            f"{base:.3g} + {floor:.3g}"
        )
