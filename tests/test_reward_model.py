"""The SPM-style reward model: equality with torch.nn reference layers, the reward contract, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from easytune.checkpoint import save_atomic
from easytune.errors import CheckpointError, ConfigError
from easytune.models.reward import RewardModel, build_reward_model
from easytune.text import build_text_encoder

SMALL = dict(latent_dim=32, ff_size=64, num_layers=3, num_heads=4, time_channels=16, max_len=64)


@pytest.fixture(scope="module")
def text_encoder():
    return build_text_encoder("builtin:token_dim=24,sentence_dim=16")


def _model(text_encoder, mode="M0T0", **kw):
    torch.manual_seed(0)
    return build_reward_model("tiny", text_encoder=text_encoder, mode=mode, **{**SMALL, **kw})


def _motion(b=3, t=20, lengths=(20, 13, 6)):
    g = torch.Generator().manual_seed(1)
    return torch.randn(b, t, 263, generator=g), torch.tensor(lengths)


# ------------------------------------------------------------------ oracle built from torch.nn layers
def _sub(sd, prefix):
    return {k[len(prefix) + 1 :]: v for k, v in sd.items() if k.startswith(prefix + ".")}


def _nn_stack(sd, prefix, cfg, decoder=False):
    def layer(name):
        cls = nn.TransformerDecoderLayer if decoder else nn.TransformerEncoderLayer
        mod = cls(cfg.latent_dim, cfg.num_heads, cfg.ff_size, dropout=0.0, activation="gelu")
        mod.load_state_dict(_sub(sd, name))
        return mod.eval()

    half = (cfg.num_layers - 1) // 2
    ins = [layer(f"{prefix}.input_blocks.{i}") for i in range(half)]
    mid = layer(f"{prefix}.middle_block")
    outs = [layer(f"{prefix}.output_blocks.{i}") for i in range(half)]
    lins = [_sub(sd, f"{prefix}.linear_blocks.{i}") for i in range(half)]
    norm = _sub(sd, f"{prefix}.norm")

    def run(x, pad, memory=None):  # x [S, B, d] sequence-first, pad [B, S] True = padding
        def call(m, h):
            if decoder:
                return m(h, memory, tgt_key_padding_mask=pad)
            return m(h, src_key_padding_mask=pad)

        skips = []
        for m in ins:
            x = call(m, x)
            skips.append(x)
        x = call(mid, x)
        for m, lin in zip(outs, lins):
            x = call(m, nn.functional.linear(torch.cat([x, skips.pop()], -1), lin["weight"], lin["bias"]))
        return nn.functional.layer_norm(x, (cfg.latent_dim,), norm["weight"], norm["bias"])

    return run


def _oracle_time(sd, t, channels):
    half = channels // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half) / half)
    args = t.float()[:, None] * freqs
    feats = torch.cat([torch.cos(args), torch.sin(args)], -1)  # [sin, cos] flipped to [cos, sin]
    h = nn.functional.silu(
        feats @ sd["time_embedding.linear_1.weight"].T + sd["time_embedding.linear_1.bias"]
    )
    return h @ sd["time_embedding.linear_2.weight"].T + sd["time_embedding.linear_2.bias"]


def _oracle_encode_motion(model, feats, lengths, t=None):
    sd, cfg = model.state_dict(), model.config
    x = feats @ sd["skel_embedding.weight"].T + sd["skel_embedding.bias"]  # [B, T, d]
    b = x.shape[0]
    tokens = [sd["global_motion_token"].expand(b, -1)[:, None]]
    if t is not None:
        tokens.append(_oracle_time(sd, t, cfg.time_channels)[:, None])
    seq = torch.cat([*tokens, x], 1)
    seq = seq + sd["query_motion_pos_encoder.pe"][: seq.shape[1], 0]
    n = len(tokens)
    pad = torch.arange(seq.shape[1])[None] >= (lengths + n)[:, None]
    out = _nn_stack(sd, "motion_encoder", cfg)(seq.transpose(0, 1), pad)[0]
    dist = out @ sd["dist_motion_layer.weight"].T + sd["dist_motion_layer.bias"]
    return dist.chunk(2, -1)


def test_motion_encoder_matches_torch_nn_layers(text_encoder):
    feats, lengths = _motion()
    for mode, t in (("M0T0", None), ("M1T0", torch.tensor([0, 250, 999]))):
        model = _model(text_encoder, mode).eval()
        with torch.no_grad():
            mu, logvar = model.encode_motion(feats, lengths, t)
            ref_mu, ref_lv = _oracle_encode_motion(model, feats, lengths, t)
        torch.testing.assert_close(mu, ref_mu, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(logvar, ref_lv, atol=2e-5, rtol=1e-4)


def test_decoder_matches_torch_nn_layers_and_zeroes_padding(text_encoder):
    model = _model(text_encoder).eval()
    sd, cfg = model.state_dict(), model.config
    z = torch.randn(3, cfg.latent_dim)
    lengths = torch.tensor([9, 4, 1])
    with torch.no_grad():
        out = model.decode(z, lengths, 12)
        queries = sd["query_pos_decoder.pe"][:12].expand(12, 3, cfg.latent_dim)
        pad = torch.arange(12)[None] >= lengths[:, None]
        h = _nn_stack(sd, "decoder", cfg, decoder=True)(queries, pad, memory=z[None])
        ref = (h @ sd["final_layer.weight"].T + sd["final_layer.bias"]).transpose(0, 1)
    valid = ~pad
    torch.testing.assert_close(out[valid], ref[valid], atol=2e-5, rtol=1e-4)
    assert out.shape == (3, 12, 263) and out[pad].abs().max() == 0


def test_text_encoder_time_token_changes_only_time_conditioned_side(text_encoder):
    m = _model(text_encoder, "M0T1").eval()
    emb = text_encoder.encode(["a person walks forward", "jumps"])
    with torch.no_grad():
        a, _ = m.encode_text_tokens(emb.tokens, emb.mask, torch.tensor([0, 0]))
        b, _ = m.encode_text_tokens(emb.tokens, emb.mask, torch.tensor([500, 500]))
        c, _ = m.encode_text_tokens(emb.tokens, emb.mask)  # None = clean = t 0
    assert not torch.allclose(a, b) and torch.equal(a, c)
    feats, lengths = _motion()
    with pytest.raises(ConfigError, match="not time-conditioned"):
        m.encode_motion(feats, lengths, 10)


def test_reward_contract(text_encoder):
    model = _model(text_encoder, "M1T0")
    feats, lengths = _motion()
    caps = ["a person walks forward", "a person jumps", "a person walks forward"]
    with pytest.raises(ConfigError, match="frozen"):
        model.reward(feats, lengths, caps)
    model.freeze()
    x = feats.clone().requires_grad_(True)
    r = model.reward(x, lengths, caps, timestep=torch.tensor([0, 100, 200]))
    assert r.shape == (3,) and r.dtype == torch.float32 and r.abs().max() <= 1 + 1e-6
    r.sum().backward()
    assert x.grad is not None and x.grad[0].abs().sum() > 0
    assert x.grad[2, 6:].abs().max() == 0  # padded frames get no gradient
    assert all(p.grad is None for p in model.parameters())
    # deterministic, padding-invariant, equal to the cosine of the encoder means
    r2 = model.reward(
        torch.cat([feats, torch.randn(3, 5, 263)], 1), lengths, caps, timestep=torch.tensor([0, 100, 200])
    )
    torch.testing.assert_close(r.detach(), r2, atol=1e-6, rtol=0)
    with torch.no_grad():
        m_mu, _ = model.encode_motion(feats, lengths, torch.tensor([0, 100, 200]))
        emb = text_encoder.encode(caps)
        t_mu, _ = model.encode_text_tokens(emb.tokens, emb.mask)
    torch.testing.assert_close(r.detach(), nn.functional.cosine_similarity(m_mu, t_mu), atol=1e-6, rtol=0)
    # text latents are cached per distinct caption
    assert len(model._text_cache) == 2
    with pytest.raises(ConfigError, match="captions"):
        model.reward(feats, lengths, caps[:2])
    with pytest.raises(ConfigError, match="lengths must lie"):
        model.reward(feats, torch.tensor([21, 3, 3]), caps)


def test_reward_timestep_rules(text_encoder):
    m0 = _model(text_encoder, "M0T0").freeze()
    feats, lengths = _motion()
    with pytest.raises(ConfigError, match="not time-conditioned"):
        m0.reward(feats, lengths, ["a", "b", "c"], timestep=5)
    m1 = _model(text_encoder, "M1T0").freeze()
    clean = m1.reward(feats, lengths, ["a", "b", "c"])
    assert torch.equal(clean, m1.reward(feats, lengths, ["a", "b", "c"], timestep=0))
    assert not torch.allclose(clean, m1.reward(feats, lengths, ["a", "b", "c"], timestep=400))


def test_paper_preset_has_reference_names_and_shapes():
    enc = build_text_encoder("builtin:token_dim=1024,sentence_dim=16")
    sd = build_reward_model("paper", text_encoder=enc).state_dict()
    expected = {
        "skel_embedding.weight": (256, 263),
        "text_embedding.weight": (256, 1024),
        "final_layer.weight": (263, 256),
        "global_motion_token": (1, 256),
        "global_text_token": (1, 256),
        "dist_motion_layer.weight": (512, 256),
        "dist_text_layer.bias": (512,),
        "query_motion_pos_encoder.pe": (500, 1, 256),
        "query_text_pos_encoder.pe": (500, 1, 256),
        "query_pos_decoder.pe": (500, 1, 256),
        "time_embedding.linear_1.weight": (256, 512),
        "time_embedding.linear_2.weight": (256, 256),
        "motion_encoder.input_blocks.3.self_attn.in_proj_weight": (768, 256),
        "motion_encoder.middle_block.linear1.weight": (1024, 256),
        "text_encoder.output_blocks.3.norm2.weight": (256,),
        "text_encoder.linear_blocks.3.weight": (256, 512),
        "text_encoder.norm.weight": (256,),
        "decoder.middle_block.multihead_attn.in_proj_weight": (768, 256),
        "decoder.output_blocks.0.norm3.bias": (256,),
        "decoder.norm.bias": (256,),
    }
    for k, shape in expected.items():
        assert tuple(sd[k].shape) == shape, k
    assert "motion_encoder.input_blocks.4.norm1.weight" not in sd
    n_layers = {k.split(".")[0] for k in sd}
    assert n_layers == {
        "skel_embedding",
        "text_embedding",
        "final_layer",
        "global_motion_token",
        "global_text_token",
        "dist_motion_layer",
        "dist_text_layer",
        "query_motion_pos_encoder",
        "query_text_pos_encoder",
        "query_pos_decoder",
        "time_embedding",
        "motion_encoder",
        "text_encoder",
        "decoder",
    }


def test_easytune_checkpoint_round_trip(tmp_path, text_encoder):
    model = _model(text_encoder, "M1T1")
    path = model.save(tmp_path / "r.pt", meta={"note": 1})
    loaded = RewardModel.from_checkpoint(path, text_encoder=text_encoder)
    assert loaded.config == model.config and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])


def test_reference_spm_checkpoint_loads(tmp_path, text_encoder):
    model = _model(text_encoder)
    sd = dict(model.state_dict())
    sd["clip.encoder.weight"] = torch.zeros(2)  # the reference keeps its sentence encoder under clip.*
    path = tmp_path / "TFS_Noisy_T1000_M1T0_E47.pth"
    save_atomic({"state_dict": sd}, path)
    loaded = RewardModel.from_checkpoint(path, text_encoder=text_encoder)
    c = loaded.config
    assert (c.mode, c.latent_dim, c.ff_size, c.num_layers, c.text_dim, c.max_len, c.time_channels) == (
        "M1T0",
        32,
        64,
        3,
        24,
        64,
        16,
    )
    assert RewardModel.from_checkpoint(path, text_encoder=text_encoder, mode="M0T0").config.mode == "M0T0"
    save_atomic({"state_dict": {"foo": torch.zeros(1)}}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="missing"):
        RewardModel.from_checkpoint(tmp_path / "bad.pt", text_encoder=text_encoder)
    with pytest.raises(CheckpointError, match="not found"):
        RewardModel.from_checkpoint(tmp_path / "nope.pt", text_encoder=text_encoder)


def test_text_dim_mismatch_is_reported(text_encoder):
    cfg = _model(text_encoder).config
    with pytest.raises(ConfigError, match="text_dim"):
        RewardModel(cfg, build_text_encoder("builtin:token_dim=8,sentence_dim=8"))
