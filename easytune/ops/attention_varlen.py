"""The ``xformers`` and ``flash`` attention backends: padded batches run as packed variable-length
sequences (xformers ``memory_efficient_attention`` with a ``BlockDiagonalMask``, flash-attn
``flash_attn_varlen_func`` with cumulative sequence lengths).

Both libraries are optional and imported on first use. Packing gathers the valid frames of every
sample ([B, H, T, D] -> [N, H, D]), runs the library, and scatters the result into a zero tensor,
so padded query rows and samples with no valid key get exactly zero output and zero gradient.
The lengths are read on the host (one device sync per call).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from easytune.ops import dispatch
from easytune.ops.attention import length_mask


@dataclass(frozen=True)
class VarlenLayout:
    """Where the valid frames of a padded batch go once packed.

    ``q_valid`` [B, Tq] / ``kv_valid`` [B, Tk]: frames kept (a sample with no valid key keeps no
    query either: its output is zero); ``q_seqlens`` / ``kv_seqlens``: lengths of the kept samples,
    in batch order (samples with nothing to compute are left out).
    """

    q_valid: torch.Tensor
    kv_valid: torch.Tensor
    q_seqlens: list[int]
    kv_seqlens: list[int]

    def cu_seqlens(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Cumulative int32 offsets [n + 1] of the packed queries and keys (flash-attn's format)."""

        def cumulative(lengths: list[int]) -> torch.Tensor:
            return torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0, dtype=torch.int32).to(device)

        return cumulative(self.q_seqlens), cumulative(self.kv_seqlens)


def varlen_layout(
    q_lengths: torch.Tensor | None,
    kv_lengths: torch.Tensor | None,
    batch: int,
    tq: int,
    tk: int,
    device: torch.device,
) -> VarlenLayout:
    """The packing of a padded batch whose frame j of sample b is valid iff j < lengths[b]."""
    q_len = torch.full((batch,), tq, device=device) if q_lengths is None else q_lengths.to(device)
    kv_len = torch.full((batch,), tk, device=device) if kv_lengths is None else kv_lengths.to(device)
    keep = (q_len > 0) & (kv_len > 0)
    q_len, kv_len = q_len * keep, kv_len * keep
    kept = keep.nonzero().flatten()
    return VarlenLayout(
        length_mask(q_len, tq, device),
        length_mask(kv_len, tk, device),
        q_len[kept].tolist(),
        kv_len[kept].tolist(),
    )


def packed_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_lengths: torch.Tensor | None,
    kv_lengths: torch.Tensor | None,
    run: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, VarlenLayout], torch.Tensor],
) -> torch.Tensor:
    """Masked attention [B, H, Tq, D] through a varlen kernel ``run(q [Nq, H, D], k [Nk, H, D],
    v [Nk, H, D], layout) -> [Nq, H, D]`` that attends within each packed sample."""
    B, H, Tq, D = q.shape
    layout = varlen_layout(q_lengths, kv_lengths, B, Tq, k.shape[2], q.device)
    qp = q.transpose(1, 2)[layout.q_valid]
    kp = k.transpose(1, 2)[layout.kv_valid]
    vp = v.transpose(1, 2)[layout.kv_valid]
    packed = run(qp, kp, vp, layout) if layout.q_seqlens else qp
    out = q.new_zeros(B, Tq, H, D).index_put((layout.q_valid,), packed)
    return out.transpose(1, 2)


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _reasons(library: str, module: str, q, min_capability: tuple[int, int]) -> list[str]:
    """Beyond the declared capabilities: the library installed, the GPU new enough."""
    reasons = []
    if not _installed(module):
        reasons.append(f"{library} is not installed (pip install {library})")
    if q.device.type == "cuda" and torch.cuda.get_device_capability(q.device) < min_capability:
        reasons.append(f"{library} needs compute capability >= {min_capability[0]}.{min_capability[1]}")
    return reasons


def _reasons_xformers(q, k, v, **_) -> list[str]:
    return _reasons("xformers", "xformers", q, (6, 0))


def _reasons_flash(q, k, v, **_) -> list[str]:
    return _reasons("flash-attn", "flash_attn", q, (8, 0))


def _attention_xformers(q, k, v, q_lengths=None, kv_lengths=None, scale=None, dropout_p=0.0):
    xops = importlib.import_module("xformers.ops")

    def run(qp, kp, vp, layout):
        bias = xops.fmha.attn_bias.BlockDiagonalMask.from_seqlens(layout.q_seqlens, layout.kv_seqlens)
        return xops.memory_efficient_attention(
            qp[None], kp[None], vp[None], attn_bias=bias, p=dropout_p, scale=scale
        )[0]

    return packed_attention(q, k, v, q_lengths, kv_lengths, run)


def _attention_flash(q, k, v, q_lengths=None, kv_lengths=None, scale=None, dropout_p=0.0):
    flash_attn = importlib.import_module("flash_attn")

    def run(qp, kp, vp, layout):
        cu_q, cu_k = layout.cu_seqlens(q.device)
        return flash_attn.flash_attn_varlen_func(
            qp,
            kp,
            vp,
            cu_q,
            cu_k,
            max(layout.q_seqlens),
            max(layout.kv_seqlens),
            dropout_p=dropout_p,
            softmax_scale=1.0 / math.sqrt(q.shape[-1]) if scale is None else scale,
            causal=False,
        )

    return packed_attention(q, k, v, q_lengths, kv_lengths, run)


dispatch.register(
    "attention",
    "xformers",
    _attention_xformers,
    _reasons_xformers,
    capabilities=dispatch.Capabilities(
        devices=("cuda",), dtypes=(torch.float32, torch.float16, torch.bfloat16)
    ),
)
dispatch.register(
    "attention",
    "flash",
    _attention_flash,
    _reasons_flash,
    capabilities=dispatch.Capabilities(
        devices=("cuda",), dtypes=(torch.float16, torch.bfloat16), max_head_dim=256
    ),
)
