"""Packed frames (``easytune.models.packing``): the layout, the host values it is built from, and the skip
transformers, VAE decoder and reward model in the packed layout against the padded one, forward and
backward, in float64 (per-row work is the same arithmetic, so results agree to rounding)."""

from __future__ import annotations

import pytest
import torch

from easytune.errors import ConfigError
from easytune.models import packing
from easytune.models.layers import (
    SkipTransformerDecoder,
    SkipTransformerEncoder,
    set_frame_layout,
    set_gradient_checkpointing,
)
from easytune.models.presets import build_model, get_preset, model_config
from easytune.models.reward import build_reward_model
from easytune.ops import lengths as lengths_range


def _valid(lengths: torch.Tensor, t: int) -> torch.Tensor:
    return torch.arange(t)[None, :] < lengths[:, None]


def test_pack_and_unpack_keep_the_valid_tokens_in_batch_order_and_zero_the_padding():
    lengths = torch.tensor([3, 1, 4])
    layout = packing.frame_layout(lengths, 4)
    x = torch.arange(3 * 4 * 2, dtype=torch.float64).view(3, 4, 2)
    packed = layout.pack(x)
    assert layout.size == 8 and packed.shape == (8, 2)
    assert torch.equal(packed, x[_valid(lengths, 4)])  # boolean indexing is row-major: batch order
    back = layout.unpack(packed)
    assert torch.equal(back, x * _valid(lengths, 4)[..., None])
    with pytest.raises(ConfigError, match=r"expected a \[3, 4, \.\.\.\] batch"):
        layout.pack(x[:, :3])
    with pytest.raises(ConfigError, match="expected 8 packed tokens"):
        layout.unpack(packed[:5])


def test_nothing_to_pack_gives_no_layout_and_layouts_are_reused():
    assert packing.frame_layout(None, 5) is None
    assert packing.frame_layout(torch.tensor([5, 5]), 5) is None  # no padding
    a = packing.frame_layout(torch.tensor([5, 2]), 5)
    b = packing.frame_layout(torch.tensor([5, 2]), 5)  # another tensor, same values: the cached index
    assert a.index is b.index
    assert packing.frame_layout(torch.tensor([5, 2]), 6).index is not a.index  # other T, other layout


def test_host_values_are_read_once_known_from_the_host_and_carried_by_offset():
    lengths = torch.tensor([4, 2])
    lengths_range.mark_host(lengths, [7, 9])  # a deliberately false record: proves nothing is read
    assert lengths_range.host_values(lengths) == (7, 9)
    assert lengths_range.host_values(lengths_range.offset(lengths, 2)) == (9, 11)
    lengths.add_(0)  # an in-place change (new version): the record is stale, the values are read
    assert lengths_range.host_values(lengths) == (4, 2)
    with pytest.raises(ConfigError, match="2 host values for a lengths tensor of 3"):
        lengths_range.mark_host(torch.tensor([1, 2, 3]), [1, 2])


@pytest.mark.parametrize("stack", ["encoder", "decoder"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_skip_stacks_packed_equal_padded_forward_and_backward(stack, checkpointing):
    torch.manual_seed(0)
    cls = SkipTransformerEncoder if stack == "encoder" else SkipTransformerDecoder
    model = cls(32, 4, 64, 5, dropout=0.0).double().eval()
    set_gradient_checkpointing(model, checkpointing)
    lengths = torch.tensor([11, 3, 7, 1])
    valid = _valid(lengths, 11)[..., None]
    x = torch.randn(4, 11, 32, dtype=torch.float64)
    memory = torch.randn(4, 2, 32, dtype=torch.float64)
    results = {}
    for layout in ("padded", "packed"):
        assert set_frame_layout(model, layout) == 1
        xi, mi = x.clone().requires_grad_(True), memory.clone().requires_grad_(True)
        out = model(xi, lengths) if stack == "encoder" else model(xi, mi, lengths)
        (out * valid).pow(2).sum().backward()
        results[layout] = (out, xi.grad, mi.grad)
    (out0, gx0, gm0), (out1, gx1, gm1) = results["padded"], results["packed"]
    torch.testing.assert_close(out1 * valid, out0 * valid, rtol=0, atol=1e-12)
    assert torch.equal(out1 * ~valid, torch.zeros_like(out1))  # packed: padded tokens come out zero
    torch.testing.assert_close(gx1, gx0, rtol=0, atol=1e-12)
    assert gx0.abs().max() > 0
    if stack == "decoder":
        torch.testing.assert_close(gm1, gm0, rtol=0, atol=1e-12)
        assert gm0.abs().max() > 0


def test_the_reward_path_packed_equals_padded_with_gradients_to_the_latent(monkeypatch):
    """The frozen path of fine-tuning: VAE decoder then reward model, gradient to z (float32: the reward
    model's text encoder is float32)."""
    torch.manual_seed(0)
    vae = build_model(model_config(get_preset("tiny"), 128)).vae.eval().requires_grad_(False)
    reward = build_reward_model("tiny").freeze()
    lengths = torch.tensor([60, 37, 12])
    captions = ["a person jumps twice.", "someone waves.", "a person walks in a circle."]
    z = torch.randn(3, vae.config.latent_size, vae.config.latent_dim)
    packs, pack = [], packing.PackedLayout.pack
    monkeypatch.setattr(packing.PackedLayout, "pack", lambda self, x: packs.append(1) or pack(self, x))
    results = {}
    for layout in ("padded", "packed"):
        for module in (vae, reward):
            set_frame_layout(module, layout)
        zi = z.clone().requires_grad_(True)
        feats = vae.decode(zi, lengths)
        r = reward.reward(feats, lengths, captions)
        (grad,) = torch.autograd.grad(r.sum(), zi)
        results[layout] = (feats.detach(), r.detach(), grad)
        assert (len(packs) > 0) == (layout == "packed")  # the decoder and the motion encoder packed
    for padded, packed in zip(results["padded"], results["packed"]):
        torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-6)
    assert results["padded"][2].abs().max() > 0


def test_set_frame_layout_refuses_an_unknown_layout_by_name():
    with pytest.raises(ConfigError, match="frame layout must be one of"):
        set_frame_layout(SkipTransformerEncoder(8, 2, 16, 1), "varlen")


def test_build_finetuning_applies_the_layout_to_the_frozen_models_only():
    from easytune.bench.methods import build_setup
    from easytune.training.objective import build_finetuning

    setup = build_setup("tiny", "cpu", 2, steps=2)
    layouts = {
        name: {m.frame_layout for m in module.modules() if hasattr(m, "frame_layout")}
        for name, module in (("vae", setup.model.vae), ("reward", setup.reward_model))
    }
    expected = packing.FRAME_LAYOUTS_AUTO.get("cpu", "padded")
    assert layouts == {"vae": {expected}, "reward": {expected}}  # auto on the CPU
    build_finetuning(setup.pipe, setup.reward_model, lr=1e-5, frame_layout="padded")
    assert {m.frame_layout for m in setup.reward_model.modules() if hasattr(m, "frame_layout")} == {"padded"}
    assert packing.resolve_frame_layout("auto", torch.device("meta")) == "padded"  # unmeasured device type
    with pytest.raises(ConfigError, match="--frame-layout must be one of"):
        packing.resolve_frame_layout("varlen", torch.device("cpu"))


def test_packed_frames_under_bf16_autocast_match_the_padded_layout():
    """``--precision bf16``: the packed rows are the padded rows, in the same dtype (bf16 GEMMs)."""
    torch.manual_seed(0)
    model = SkipTransformerDecoder(32, 4, 64, 3, dropout=0.0).eval()
    lengths = torch.tensor([9, 4, 6])
    valid = _valid(lengths, 9)[..., None]
    x, memory = torch.randn(3, 9, 32), torch.randn(3, 1, 32)
    outs = {}
    for layout in ("padded", "packed"):
        set_frame_layout(model, layout)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outs[layout] = model(x, memory, lengths)
    assert outs["packed"].dtype == outs["padded"].dtype
    torch.testing.assert_close(outs["packed"] * valid, outs["padded"] * valid, rtol=2e-2, atol=2e-2)
