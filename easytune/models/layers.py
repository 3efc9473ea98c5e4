"""Transformer building blocks shared by the motion models, with the reference checkpoints' parameter names.

Layout is batch-first everywhere: tokens are ``[B, T, C]``. Padding is described by integer ``lengths``
``[B]`` (token ``j`` of sample ``b`` is valid iff ``j < lengths[b]``; None = all valid); all attention
goes through ``easytune.ops.attention``, so padded keys get zero weight and padded query rows are zero
before the residual. Valid tokens never see padded ones.

Parameter names follow ``torch.nn.MultiheadAttention`` (``in_proj_weight`` [3C, C], ``in_proj_bias``
[3C], ``out_proj``) and the post-norm DETR-style layers of MLD / MotionLCM / MDM (``self_attn``,
``multihead_attn``, ``linear1``, ``linear2``, ``norm1..3``), so their state dicts load unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from easytune.errors import ConfigError
from easytune.models.packing import FRAME_LAYOUTS, PackedLayout, frame_layout
from easytune.ops import attention
from easytune.ops.lengths import check_range

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}


def activation(name: str | None) -> nn.Module:
    """``nn.GELU`` / ``nn.ReLU`` / ``nn.SiLU`` by name; ``None`` gives ``nn.Identity``."""
    if name is None:
        return nn.Identity()
    if name not in _ACTIVATIONS:
        raise ConfigError(f"activation must be one of {sorted(_ACTIVATIONS)} or None, got {name!r}")
    return _ACTIVATIONS[name]()


class MultiheadAttention(nn.Module):
    """Multi-head attention with ``nn.MultiheadAttention``'s parameters, computed by ``ops.attention``.

    ``forward(x [B, Tq, C], memory [B, Tk, C] | None, q_lengths, kv_lengths) -> [B, Tq, C]``;
    ``memory=None`` is self-attention. ``dropout`` is applied to the attention weights in training.
    With ``layout`` (``models.packing.PackedLayout`` of the queries), ``x`` and the result are the packed
    valid queries [N, C]: the projections run on them, attention on the padded layout.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ConfigError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads, self.dropout = embed_dim, num_heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.reshape(b, t, self.num_heads, self.embed_dim // self.num_heads).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor | None = None,
        *,
        q_lengths: torch.Tensor | None = None,
        kv_lengths: torch.Tensor | None = None,
        layout: PackedLayout | None = None,
    ) -> torch.Tensor:
        c = self.embed_dim
        if memory is None:
            qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
            q, k, v = (qkv if layout is None else layout.unpack(qkv)).chunk(3, dim=-1)
        else:
            q = F.linear(x, self.in_proj_weight[:c], self.in_proj_bias[:c])
            q = q if layout is None else layout.unpack(q)
            k, v = F.linear(memory, self.in_proj_weight[c:], self.in_proj_bias[c:]).chunk(2, dim=-1)
        out = attention(
            self._heads(q),
            self._heads(k),
            self._heads(v),
            q_lengths=q_lengths,
            kv_lengths=kv_lengths,
            dropout_p=self.dropout if self.training else 0.0,
        )
        out = out.transpose(1, 2).reshape(q.shape[0], q.shape[1], c)
        return self.out_proj(out if layout is None else layout.pack(out))


class TransformerEncoderLayer(nn.Module):
    """Post-norm encoder layer (``nn.TransformerEncoderLayer`` names): self-attention then feed-forward.

    ``forward(x [B, T, C], lengths [B] | None) -> [B, T, C]``; with ``layout`` x and the result are the
    packed valid tokens [N, C] (``models.packing``).
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        ff_size: int,
        dropout: float = 0.1,
        act: str = "gelu",
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, num_heads, dropout)
        self.linear1 = nn.Linear(d_model, ff_size)
        self.linear2 = nn.Linear(ff_size, d_model)
        self.norm1 = nn.LayerNorm(d_model, eps=norm_eps)
        self.norm2 = nn.LayerNorm(d_model, eps=norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = activation(act)

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor | None = None, layout: PackedLayout | None = None
    ) -> torch.Tensor:
        attn = self.self_attn(x, q_lengths=lengths, kv_lengths=lengths, layout=layout)
        x = self.norm1(x + self.dropout1(attn))
        return self.norm2(x + self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x))))))


class TransformerDecoderLayer(nn.Module):
    """Post-norm decoder layer: self-attention, cross-attention to ``memory`` (all valid), feed-forward.

    ``forward(x [B, T, C], memory [B, M, C], lengths [B] | None) -> [B, T, C]``; with ``layout`` x and the
    result are the packed valid queries [N, C] (``models.packing``).
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        ff_size: int,
        dropout: float = 0.1,
        act: str = "gelu",
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, num_heads, dropout)
        self.multihead_attn = MultiheadAttention(d_model, num_heads, dropout)
        self.linear1 = nn.Linear(d_model, ff_size)
        self.linear2 = nn.Linear(ff_size, d_model)
        self.norm1 = nn.LayerNorm(d_model, eps=norm_eps)
        self.norm2 = nn.LayerNorm(d_model, eps=norm_eps)
        self.norm3 = nn.LayerNorm(d_model, eps=norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.activation = activation(act)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        lengths: torch.Tensor | None = None,
        layout: PackedLayout | None = None,
    ) -> torch.Tensor:
        x = self.norm1(
            x + self.dropout1(self.self_attn(x, q_lengths=lengths, kv_lengths=lengths, layout=layout))
        )
        x = self.norm2(x + self.dropout2(self.multihead_attn(x, memory, q_lengths=lengths, layout=layout)))
        return self.norm3(x + self.dropout3(self.linear2(self.dropout(self.activation(self.linear1(x))))))


class _SkipStack(nn.Module):
    """U-Net-like stack of ``2n + 1`` layers: the output of input block ``i`` is concatenated to the input
    of output block ``n - 1 - i`` and mixed by ``linear_blocks``; a final LayerNorm. Xavier-initialised.

    ``gradient_checkpointing`` (see ``set_gradient_checkpointing``): when grad is enabled, each layer keeps
    only its input for backward and recomputes its activations there (same outputs and gradients, about
    one extra forward of compute).

    ``frame_layout`` (see ``set_frame_layout``): ``padded`` runs every layer on ``[B, T, C]``; ``packed``
    packs the valid tokens once (``models.packing``), runs the per-token work on them only and unpacks the
    result (padded tokens then come out zero; valid ones equal the padded layout's up to float rounding)."""

    gradient_checkpointing = False
    frame_layout = "padded"

    def __init__(
        self, make_layer: Callable[[], nn.Module], num_layers: int, d_model: int, norm_eps: float = 1e-5
    ) -> None:
        super().__init__()
        if num_layers < 1 or num_layers % 2 != 1:
            raise ConfigError(
                f"a skip transformer needs an odd number of layers >= 1, got num_layers={num_layers}"
            )
        n = (num_layers - 1) // 2
        self.input_blocks = nn.ModuleList(make_layer() for _ in range(n))
        self.middle_block = make_layer()
        self.output_blocks = nn.ModuleList(make_layer() for _ in range(n))
        self.linear_blocks = nn.ModuleList(nn.Linear(2 * d_model, d_model) for _ in range(n))
        self.norm = nn.LayerNorm(d_model, eps=norm_eps)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def _stack(self, x: torch.Tensor, lengths: torch.Tensor | None, *memory: torch.Tensor) -> torch.Tensor:
        """Every layer on ``x`` [B, T, C] (``memory``: the decoder's), in the stack's frame layout."""
        layout = frame_layout(lengths, x.shape[1]) if self.frame_layout == "packed" else None
        if layout is None:
            return self._run(x, lambda block, h: block(h, *memory, lengths))
        return layout.unpack(self._run(layout.pack(x), lambda block, h: block(h, *memory, lengths, layout)))

    def _run(self, x: torch.Tensor, layer: Callable[[nn.Module, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            plain = layer

            def layer(block: nn.Module, h: torch.Tensor) -> torch.Tensor:
                return checkpoint(plain, block, h, use_reentrant=False)

        skips = []
        for block in self.input_blocks:
            x = layer(block, x)
            skips.append(x)
        x = layer(self.middle_block, x)
        for block, linear in zip(self.output_blocks, self.linear_blocks):
            x = layer(block, linear(torch.cat([x, skips.pop()], dim=-1)))
        return self.norm(x)


def set_gradient_checkpointing(module: nn.Module, enabled: bool = True) -> int:
    """Turn per-layer activation checkpointing of every skip transformer inside ``module`` on or off;
    returns how many stacks were set. Meant for frozen models in the reward path (VAE decoder, reward
    model): their activations are then not all held between the forward and the backward pass."""
    stacks = [m for m in module.modules() if isinstance(m, _SkipStack)]
    for m in stacks:
        m.gradient_checkpointing = enabled
    return len(stacks)


def set_frame_layout(module: nn.Module, layout: str = "padded") -> int:
    """Run every skip transformer inside ``module`` in ``layout`` (``padded | packed``, see ``_SkipStack``);
    returns how many stacks were set."""
    if layout not in FRAME_LAYOUTS:
        raise ConfigError(f"frame layout must be one of {FRAME_LAYOUTS}, got {layout!r}")
    stacks = [m for m in module.modules() if isinstance(m, _SkipStack)]
    for m in stacks:
        m.frame_layout = layout
    return len(stacks)


class SkipTransformerEncoder(_SkipStack):
    """MLD's ``SkipTransformerEncoder``: ``forward(x [B, T, C], lengths) -> [B, T, C]``."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        ff_size: int,
        num_layers: int,
        dropout: float = 0.1,
        act: str = "gelu",
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__(
            lambda: TransformerEncoderLayer(d_model, num_heads, ff_size, dropout, act, norm_eps),
            num_layers,
            d_model,
            norm_eps,
        )

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self._stack(x, lengths)


class SkipTransformerDecoder(_SkipStack):
    """Skip-connected decoder (MLD ``SkipTransformerDecoder``): queries ``x [B, T, C]`` attend to ``memory``
    [B, M, C] (all valid); ``forward(x, memory, lengths) -> [B, T, C]``."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        ff_size: int,
        num_layers: int,
        dropout: float = 0.1,
        act: str = "gelu",
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__(
            lambda: TransformerDecoderLayer(d_model, num_heads, ff_size, dropout, act, norm_eps),
            num_layers,
            d_model,
            norm_eps,
        )

    def forward(
        self, x: torch.Tensor, memory: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self._stack(x, lengths, memory)


class LearnedPositionalEncoding(nn.Module):
    """Adds a learned table ``pe`` [max_len, 1, C] (MLD layout) to tokens ``[B, T, C]``, T <= max_len."""

    def __init__(self, d_model: int, max_len: int = 500) -> None:
        super().__init__()
        self.pe = nn.Parameter(torch.empty(max_len, 1, d_model))
        nn.init.uniform_(self.pe)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] > self.pe.shape[0]:
            raise ConfigError(
                f"sequence of {x.shape[1]} positions (frames or tokens) is longer than the "
                f"learned positional table ({self.pe.shape[0]} rows); use shorter motions"
            )
        return x + self.pe[: x.shape[1], 0]


def sinusoidal_table(max_len: int, dim: int) -> torch.Tensor:
    """Transformer sinusoid table [max_len, dim] (sin on even, cos on odd channels), float32."""
    position = torch.arange(max_len, dtype=torch.float32)[:, None]
    div_term = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(max_len, dim)
    table[:, 0::2] = torch.sin(position * div_term)
    table[:, 1::2] = torch.cos(position * div_term)
    return table


def timestep_embedding(
    timesteps: torch.Tensor,
    dim: int,
    flip_sin_to_cos: bool = True,
    freq_shift: float = 0.0,
    max_period: float = 10000.0,
) -> torch.Tensor:
    """Diffusers-style sinusoidal timestep features: ``timesteps`` [B] -> float32 [B, dim].

    Frequencies ``exp(-log(max_period) * i / (dim/2 - freq_shift))``; ``[sin, cos]`` halves, swapped to
    ``[cos, sin]`` when ``flip_sin_to_cos``; an odd ``dim`` is zero-padded.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    args = timesteps[:, None].float() * torch.exp(exponent / (half - freq_shift))[None, :]
    halves = [torch.cos(args), torch.sin(args)] if flip_sin_to_cos else [torch.sin(args), torch.cos(args)]
    emb = torch.cat(halves, dim=-1)
    return F.pad(emb, (0, dim % 2))


class TimestepEmbedding(nn.Module):
    """MLP ``linear_1 -> act -> linear_2`` on timestep features: [B, in_dim] -> [B, out_dim]."""

    def __init__(self, in_dim: int, out_dim: int, act: str = "silu") -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.act = activation(act)
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


def check_lengths(lengths: torch.Tensor | None, batch: int, frames: int, what: str) -> torch.Tensor | None:
    """Validate ``lengths`` (int [B], each in [1, frames]) for ``what``; None passes through."""
    if lengths is None:
        return None
    if lengths.shape != (batch,) or lengths.dtype.is_floating_point:
        raise ConfigError(
            f"{what}: lengths must be an integer tensor of shape [{batch}], "
            f"got {lengths.dtype} {tuple(lengths.shape)}"
        )
    check_range(lengths, 1, frames, what)  # reads a lengths tensor's values once, not at every call
    return lengths
