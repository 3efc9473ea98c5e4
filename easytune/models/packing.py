"""Packed frames: the valid tokens of a padded batch, without the padding, for the per-token layers.

A padded batch ``[B, T, C]`` whose token ``j`` of sample ``b`` is valid iff ``j < lengths[b]`` spends the
work of its per-token layers (the projections, feed-forward blocks, LayerNorms and skip linears of a
transformer) on ``B * T`` rows, of which only ``N = sum(lengths)`` matter: with HumanML3D's lengths (40..196
frames at T = 196) about 40% of the GEMMs of the VAE decoder and the reward model go to padding.
``PackedLayout`` gathers the valid rows once (``pack``: ``[B, T, C] -> [N, C]``), the layers run on them and
attention scatters them back to the padded layout around ``ops.attention`` (``unpack``: zeros at the
padding); both are differentiable (gather / scatter), so gradients reach the inputs as in the padded layout.

The layout is built on the host from the lengths' host values (``ops.lengths.host_values``: known at no
cost for a batch built from host ints, else one device read per lengths tensor) and cached per (values,
tokens, device). ``frame_layout`` returns None when nothing is padded or under ``torch.compile`` (the packed
size is data-dependent there): the caller then runs the padded layout.

Which layout is faster is measured (``easytune bench methods --frame-layout ...``, docs/bench.md); the
frozen models of fine-tuning use ``FRAME_LAYOUTS_AUTO`` per device type.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from easytune.errors import ConfigError
from easytune.ops.lengths import host_values

FRAME_LAYOUTS = ("padded", "packed")
# ``auto``'s choice per device type, from side-by-side measurements of the fine-tuning step (docs/bench.md);
# a device type without a measurement keeps the padded layout.
FRAME_LAYOUTS_AUTO = {"cpu": "packed"}


def resolve_frame_layout(frame_layout: str, device: torch.device) -> str:
    """``padded | packed`` for ``--frame-layout`` (``auto``: ``FRAME_LAYOUTS_AUTO`` of the device type,
    padded where unmeasured)."""
    if frame_layout == "auto":
        return FRAME_LAYOUTS_AUTO.get(device.type, "padded")
    if frame_layout not in FRAME_LAYOUTS:
        raise ConfigError(f"--frame-layout must be one of {('auto', *FRAME_LAYOUTS)}, got {frame_layout!r}")
    return frame_layout


class PackedLayout:
    """Where the ``N`` valid tokens of a padded ``[B, T, ...]`` batch sit: ``index`` int64 [N], the flat
    positions ``b * T + j`` in batch order."""

    def __init__(self, index: torch.Tensor, batch: int, tokens: int) -> None:
        self.index, self.batch, self.tokens = index, batch, tokens

    @property
    def size(self) -> int:
        """``N``, the number of valid tokens."""
        return self.index.shape[0]

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, *rest] -> [N, *rest]``: the valid tokens, in batch order."""
        if x.shape[:2] != (self.batch, self.tokens):
            raise ConfigError(
                f"PackedLayout.pack: expected a [{self.batch}, {self.tokens}, ...] batch, "
                f"got {tuple(x.shape)}"
            )
        return x.flatten(0, 1).index_select(0, self.index)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, *rest] -> [B, T, *rest]`` with zeros at the padded tokens."""
        if x.shape[0] != self.size:
            raise ConfigError(
                f"PackedLayout.unpack: expected {self.size} packed tokens, got {tuple(x.shape)}"
            )
        out = _Scatter.apply(x, self.index, self.batch * self.tokens)
        return out.view(self.batch, self.tokens, *x.shape[1:])


class _Scatter(torch.autograd.Function):
    """``x`` [N, ...] into rows ``index`` of zeros [rows, ...]; backward gathers the same rows. Saves only the
    index (``index_copy`` / ``index_add`` would also keep ``x``; ``index_put``, which does not, was slower
    forward + backward on the CPU)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, index: torch.Tensor, rows: int) -> torch.Tensor:
        ctx.save_for_backward(index)
        return x.new_zeros(rows, *x.shape[1:]).index_copy_(0, index, x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (index,) = ctx.saved_tensors
        return grad.index_select(0, index), None, None


_LAYOUTS: OrderedDict[tuple, torch.Tensor] = OrderedDict()
_MAX_LAYOUTS = 64


def frame_layout(lengths: torch.Tensor | None, tokens: int) -> PackedLayout | None:
    """The packed layout of a ``[B, tokens, ...]`` batch with ``lengths`` (int [B], each in [1, tokens],
    checked by the caller), or None when there is nothing to pack (no lengths, no padding, or under
    ``torch.compile``)."""
    if lengths is None or torch.compiler.is_compiling():
        return None
    values = host_values(lengths)
    if sum(values) == len(values) * tokens:
        return None
    key = (values, tokens, lengths.device)
    index = _LAYOUTS.get(key)
    if index is None:
        valid = torch.arange(tokens)[None, :] < torch.tensor(values)[:, None]
        index = valid.flatten().nonzero().squeeze(1)  # built on the host: no device read
        if lengths.device.type == "cuda":  # an asynchronous copy (a pageable one would wait for the stream)
            index = index.pin_memory().to(lengths.device, non_blocking=True)
        else:
            index = index.to(lengths.device)
        if len(_LAYOUTS) >= _MAX_LAYOUTS:
            _LAYOUTS.popitem(last=False)
        _LAYOUTS[key] = index
    else:
        _LAYOUTS.move_to_end(key)
    return PackedLayout(index, len(values), tokens)
