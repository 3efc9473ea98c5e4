"""Masked multi-head attention for motion transformers: the one entry point every model uses.

Shapes: ``q`` [B, H, Tq, D]; ``k``, ``v`` [B, H, Tk, D] (self-attention: Tq == Tk; cross-attention
otherwise). ``q_lengths`` / ``kv_lengths``: int tensors [B]; frame ``j`` of sample ``b`` is valid iff
``j < lengths[b]`` (None = all valid). Padded keys get zero attention weight; padded query rows
and rows with no valid key produce exactly zero output (never NaN) and receive zero gradient.
Padding therefore never changes the output on valid frames.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from easytune.ops import dispatch


def length_mask(lengths: torch.Tensor | None, size: int, device: torch.device) -> torch.Tensor | None:
    """Boolean [B, size], True on valid positions (``j < lengths[b]``); None when ``lengths`` is None."""
    if lengths is None:
        return None
    return torch.arange(size, device=device)[None, :] < lengths.to(device)[:, None]


def attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_lengths: torch.Tensor | None = None,
    kv_lengths: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Pure-PyTorch reference (the ``math`` backend, test oracle and benchmark baseline).

    Materialises the [B, H, Tq, Tk] score matrix; computes in the input dtype (pass float64 inputs
    for an oracle).
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    key_valid = length_mask(kv_lengths, k.shape[-2], q.device)
    if key_valid is not None:
        row_has_key = key_valid.any(-1)[:, None, None, None]
        scores = scores.masked_fill(~key_valid[:, None, None, :], float("-inf"))
        scores = scores.masked_fill(~row_has_key, 0.0)
        probs = torch.softmax(scores, dim=-1) * row_has_key
    else:
        probs = torch.softmax(scores, dim=-1)
    out = torch.matmul(probs, v)
    query_valid = length_mask(q_lengths, q.shape[-2], q.device)
    if query_valid is not None:
        out = out * query_valid[:, None, :, None]
    return out


def _attention_sdpa(q, k, v, q_lengths=None, kv_lengths=None, scale=None, dropout_p=0.0):
    key_valid = length_mask(kv_lengths, k.shape[-2], q.device)
    mask = None
    if key_valid is not None:
        row_has_key = key_valid.any(-1, keepdim=True)
        # Rows with no valid key attend everywhere (finite softmax) and are zeroed afterwards.
        mask = (key_valid | ~row_has_key)[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
    if key_valid is not None:
        out = out * key_valid.any(-1)[:, None, None, None]
    query_valid = length_mask(q_lengths, q.shape[-2], q.device)
    if query_valid is not None:
        out = out * query_valid[:, None, :, None]
    return out


def _attention_math(q, k, v, q_lengths=None, kv_lengths=None, scale=None, dropout_p=0.0):
    return attention_ref(q, k, v, q_lengths, kv_lengths, scale)


def _reasons_sdpa(q, k, v, dropout_p=0.0, **_):
    return []


def _reasons_math(q, k, v, dropout_p=0.0, **_):
    return [f"dropout_p={dropout_p} is not supported by the math backend"] if dropout_p else []


dispatch.register("attention", "sdpa", _attention_sdpa, _reasons_sdpa)
dispatch.register("attention", "math", _attention_math, _reasons_math)


def _check_inputs(q, k, v, q_lengths, kv_lengths):
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"attention expects q, k, v of shape [B, H, T, D], got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"attention: incompatible shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    for name, lengths, size in (("q_lengths", q_lengths, q.shape[2]), ("kv_lengths", kv_lengths, k.shape[2])):
        if lengths is None:
            continue
        if lengths.shape != (q.shape[0],) or lengths.dtype.is_floating_point:
            raise ValueError(f"attention: {name} must be an integer tensor of shape [{q.shape[0]}], "
                             f"got {lengths.dtype} {tuple(lengths.shape)}")
        if not torch.compiler.is_compiling() and ((lengths < 0) | (lengths > size)).any():
            raise ValueError(f"attention: {name} must lie in [0, {size}], got {lengths.tolist()}")


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    q_lengths: torch.Tensor | None = None,
    kv_lengths: torch.Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    backend: str | None = None,
) -> torch.Tensor:
    """Masked attention ``softmax(q k^T * scale) v`` with key/query padding by lengths; [B, H, Tq, D].

    ``scale`` defaults to 1/sqrt(D). ``backend``: see ``easytune.ops.dispatch``.
    """
    _check_inputs(q, k, v, q_lengths, kv_lengths)
    impl = dispatch.resolve("attention", backend, q=q, k=k, v=v, q_lengths=q_lengths,
                            kv_lengths=kv_lengths, dropout_p=dropout_p)
    return impl.fn(q, k, v, q_lengths=q_lengths, kv_lengths=kv_lengths, scale=scale, dropout_p=dropout_p)
