"""Masked multi-head attention for motion transformers: the one entry point every model uses.

Shapes: ``q`` [B, H, Tq, D]; ``k``, ``v`` [B, H, Tk, D] (self-attention: Tq == Tk; cross-attention
otherwise). ``q_lengths`` / ``kv_lengths``: int tensors [B]; frame ``j`` of sample ``b`` is valid iff
``j < lengths[b]`` (None = all valid). Padded keys get zero attention weight; padded query rows
and rows with no valid key produce exactly zero output (never NaN) and receive zero gradient.
Padding therefore never changes the output on valid frames.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F

from easytune.errors import ConfigError
from easytune.ops import _triton, dispatch
from easytune.ops import lengths as lengths_range

TRITON_HEAD_DIMS = (16, 32, 64, 128)
_meta = dispatch.tensor_key
_HITS = dispatch.hits("attention")
_compiling, _grad_enabled, _allow_tf32 = dispatch.compiling, dispatch.grad_enabled, dispatch.allow_tf32


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


def _attention_triton(q, k, v, q_lengths=None, kv_lengths=None, scale=None, dropout_p=0.0):
    from easytune_kernels.attention import attention as triton_attention

    return triton_attention(q, k, v, q_lengths, kv_lengths, scale, dropout_p)


def _reasons_triton(q, k, v, **_):
    return _triton.reasons("attention", {"q": q, "k": k, "v": v})


def _auto_reasons_triton(q, **_):
    reasons = _triton.auto_reasons()
    if q.dtype == torch.float32 and q.device.type == "cuda" and not torch.backends.cuda.matmul.allow_tf32:
        reasons.append(
            "float32 without TF32: the kernel's IEEE fp32 dot spills registers (docs/kernels.md), "
            "auto prefers the next backend"
        )
    return reasons


dispatch.register(
    "attention",
    "triton",
    _attention_triton,
    _reasons_triton,
    auto_reasons=_auto_reasons_triton,
    capabilities=replace(_triton.CAPABILITIES, head_dims=TRITON_HEAD_DIMS),
)
dispatch.register("attention", "sdpa", _attention_sdpa)
dispatch.register("attention", "math", _attention_math, capabilities=dispatch.Capabilities(dropout=False))


def _check_inputs(q, k, v, q_lengths=None, kv_lengths=None, dropout_p=0.0):
    """Metadata checks (run once per call signature by ``dispatch.resolve``)."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ConfigError(
            f"attention expects q, k, v of shape [B, H, T, D], got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ConfigError(
            f"attention: incompatible shapes q {tuple(q.shape)}, k {tuple(k.shape)}, "
            f"v {tuple(v.shape)} (expected q [B, H, Tq, D], k and v [B, H, Tk, D])"
        )
    if not q.dtype == k.dtype == v.dtype or not q.device == k.device == v.device:
        raise ConfigError(
            f"attention: q, k, v must share dtype and device, got {q.dtype}/{q.device}, "
            f"{k.dtype}/{k.device}, {v.dtype}/{v.device}"
        )
    if not 0.0 <= dropout_p < 1.0:
        raise ConfigError(f"attention: dropout_p must lie in [0, 1), got {dropout_p}")
    for name, lengths in (("q_lengths", q_lengths), ("kv_lengths", kv_lengths)):
        if lengths is None:
            continue
        if lengths.shape != (q.shape[0],) or lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
            raise ConfigError(
                f"attention: {name} must be an integer tensor of shape [{q.shape[0]}], "
                f"got {lengths.dtype} {tuple(lengths.shape)}"
            )


def _check_lengths_range(q, k, q_lengths, kv_lengths):
    """The value check of the lengths, once per lengths tensor (``easytune.ops.lengths``)."""
    if q_lengths is not None:
        lengths_range.check_range(q_lengths, 0, q.shape[2], "attention", "q_lengths")
    if kv_lengths is not None:
        lengths_range.check_range(kv_lengths, 0, k.shape[2], "attention", "kv_lengths")


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

    ``scale`` defaults to 1/sqrt(D). ``backend``: ``auto | triton | cuda | sdpa | xformers | flash | math``
    (see ``easytune.ops.dispatch``); differentiable in q, k, v on every backend but ``cuda``.
    """
    if _compiling():
        key = hit = None
    else:  # the memo key (see dispatch.resolve); TF32 enters the Triton kernel's auto reasons
        key = (
            backend,
            _grad_enabled(),
            _allow_tf32(),
            _meta(q),
            _meta(k),
            _meta(v),
            None if q_lengths is None else _meta(q_lengths),
            None if kv_lengths is None else _meta(kv_lengths),
            dropout_p,
        )
        hit = _HITS.get(key)
    if hit is None:  # the first call of this signature, or traced by torch.compile
        fn = dispatch.resolve(
            "attention",
            backend,
            _check_inputs,
            key=key,
            q=q,
            k=k,
            v=v,
            q_lengths=q_lengths,
            kv_lengths=kv_lengths,
            dropout_p=dropout_p,
        ).fn
    else:
        hit.calls += 1
        fn = hit.fn
    if q_lengths is not None or kv_lengths is not None:
        _check_lengths_range(q, k, q_lengths, kv_lengths)
    return fn(q, k, v, q_lengths=q_lengths, kv_lengths=kv_lengths, scale=scale, dropout_p=dropout_p)
