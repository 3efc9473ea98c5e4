"""MLD VAE + latent denoiser: reference equivalence, checkpoint loading, padding invariance, masking."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from easytune.checkpoint import save_atomic
from easytune.errors import CheckpointError, ConfigError
from easytune.models import MLD, DenoiserConfig, VAEConfig, load_vae
from easytune.models.presets import PRESETS, build_model, get_preset, model_config

FIXTURE = Path(__file__).parent / "data" / "mld_reference_tiny.pt"
HEADS = {"v1": 4, "v2": 2}  # the fixture's reference num_heads (not stored in weights)


def _fixture() -> dict:
    return torch.load(FIXTURE, weights_only=True)


def _lineage_checkpoint(tmp_path: Path, state: dict, name: str = "lineage.ckpt") -> Path:
    """A Lightning-style checkpoint as the lineage saves it: model keys plus text encoder, evaluator,
    reward model and the original MLD's unused mem_pos table."""
    sd = dict(state)
    sd["text_encoder.text_model.shared.weight"] = torch.randn(5, 3)
    sd["t2m_textencoder.input_emb.weight"] = torch.randn(4, 2)
    sd["t2m_moveencoder.main.0.weight"] = torch.randn(4, 2)
    sd["t2m_motionencoder.out_net.weight"] = torch.randn(4, 2)
    sd["reward_model.motion_encoder.norm.weight"] = torch.randn(4)
    sd["denoiser.mem_pos.pe"] = torch.randn(500, 1, 16)
    return save_atomic({"state_dict": sd, "epoch": 3, "global_step": 10}, tmp_path / name)


@pytest.mark.parametrize("variant", ["v1", "v2"])
def test_reference_checkpoint_loads_strictly_and_matches(tmp_path, variant):
    v = _fixture()["variants"][variant]
    model = MLD.from_checkpoint(_lineage_checkpoint(tmp_path, v["state_dict"]), num_heads=HEADS[variant])
    model = model.double().eval()
    i, o = v["inputs"], v["outputs"]
    with torch.no_grad():
        _, posterior = model.vae.encode(i["feats"].double(), i["lengths"])
        decoded = model.vae.decode(i["z"].double(), i["lengths"])
        eps = model.denoiser(i["z"].double(), i["timestep"], i["text"].double())
    for got, name in ((posterior.loc, "mu"), (posterior.scale, "std"), (decoded, "decoded"), (eps, "eps")):
        torch.testing.assert_close(got.float(), o[name], rtol=1e-5, atol=1e-5, msg=f"{variant} {name}")
    assert model.denoiser.config.text_act == ("relu" if variant == "v1" else None)


def test_reference_shapes_are_inferred(tmp_path):
    v = _fixture()["variants"]["v2"]
    model = MLD.from_checkpoint(_lineage_checkpoint(tmp_path, v["state_dict"]), num_heads=2)
    assert model.vae.config == VAEConfig(
        nfeats=263, latent_size=3, latent_dim=8, hidden_dim=16, ff_size=32, num_layers=3, num_heads=2
    )
    assert (model.denoiser.config.text_dim, model.denoiser.config.time_dim) == (24, 20)
    assert model.denoiser.config.num_layers == 5


def test_strict_loading_lists_missing_extra_and_misshaped_keys(tmp_path):
    sd = dict(_fixture()["variants"]["v1"]["state_dict"])
    del sd["vae.final_layer.bias"]
    sd["denoiser.unexpected.weight"] = torch.zeros(2)
    sd["vae.skel_embedding.bias"] = torch.zeros(17)
    path = save_atomic({"state_dict": sd}, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError) as err:
        MLD.from_checkpoint(path)
    msg = str(err.value)
    assert str(path) in msg
    assert "missing keys (1): vae.final_layer.bias" in msg
    assert "unexpected keys (1): denoiser.unexpected.weight" in msg
    assert "vae.skel_embedding.bias: checkpoint (17,) vs model (16,)" in msg


def test_consistency_distilled_checkpoint_is_refused(tmp_path):
    sd = dict(_fixture()["variants"]["v1"]["state_dict"])
    sd["denoiser.time_embedding.cond_proj.weight"] = torch.zeros(16, 256)
    with pytest.raises(CheckpointError, match="consistency-distilled"):
        MLD.from_checkpoint(save_atomic({"state_dict": sd}, tmp_path / "lcm.ckpt"))


def test_own_checkpoint_roundtrip_prefers_ema(tmp_path):
    model = build_model(model_config(get_preset("tiny"), text_dim=32))
    ema = {k: v + 1.0 for k, v in model.state_dict().items() if k.startswith("denoiser.")}
    path = save_atomic(
        {"state_dict": model.state_dict(), "config": model.config_dict, "ema": ema}, tmp_path / "own.pt"
    )
    loaded = MLD.from_checkpoint(path)
    key = "denoiser.emb_proj.1.weight"
    torch.testing.assert_close(loaded.state_dict()[key], ema[key], rtol=0, atol=0)
    raw = MLD.from_checkpoint(path, use_ema=False)
    torch.testing.assert_close(raw.state_dict()[key], model.state_dict()[key], rtol=0, atol=0)
    vae = load_vae(path)
    torch.testing.assert_close(vae.state_dict()["final_layer.weight"], model.vae.final_layer.weight)


def test_load_vae_from_lineage_checkpoint(tmp_path):
    v = _fixture()["variants"]["v1"]
    vae = load_vae(_lineage_checkpoint(tmp_path, v["state_dict"]))
    assert vae.config.latent_size == 2 and vae.config.latent_dim == 16


def _small_mld() -> MLD:
    vae = VAEConfig(nfeats=263, latent_size=2, latent_dim=16, ff_size=32, num_layers=3, num_heads=4)
    den = DenoiserConfig(latent_size=2, latent_dim=16, text_dim=12, time_dim=16, ff_size=32, num_layers=3)
    return MLD(vae, den).eval()


def test_vae_padding_never_changes_valid_frames():
    model = _small_mld().double()
    lengths = torch.tensor([12, 7, 1])
    feats = torch.randn(3, 12, 263, dtype=torch.float64)
    padded = feats.clone()
    for b, n in enumerate(lengths.tolist()):
        padded[b, n:] = 1e3 * torch.randn(12 - n, 263, dtype=torch.float64)  # garbage past each length
    with torch.no_grad():
        _, post_a = model.vae.encode(feats, lengths)
        _, post_b = model.vae.encode(padded, lengths)
        z = post_a.loc
        dec = model.vae.decode(z, lengths)
        dec_long = model.vae.decode(z, lengths, num_frames=20)
        for b, n in enumerate(lengths.tolist()):
            _, alone = model.vae.encode(feats[b : b + 1, :n], lengths[b : b + 1])
            torch.testing.assert_close(alone.loc, post_a.loc[b : b + 1])
            torch.testing.assert_close(alone.scale, post_a.scale[b : b + 1])
            dec_alone = model.vae.decode(z[b : b + 1], lengths[b : b + 1])
            torch.testing.assert_close(dec_alone[0], dec[b, :n])
    torch.testing.assert_close(post_a.loc, post_b.loc)
    torch.testing.assert_close(dec_long[:, :12], dec)
    valid = torch.arange(20)[None, :] < lengths[:, None]
    assert (dec_long[~valid] == 0).all()


def test_trim_positions_keeps_outputs_and_rejects_longer_inputs(tmp_path):
    model = _small_mld().double().eval()
    lengths, feats = torch.tensor([12, 7]), torch.randn(2, 12, 263, dtype=torch.float64)
    x, cond = (
        torch.randn(2, 2, 16, dtype=torch.float64),
        torch.randn(2, 1, model.denoiser.config.text_dim, dtype=torch.float64),
    )
    with torch.no_grad():
        before = (model.vae.encode(feats, lengths, sample=False)[0], model.denoiser(x, 5, cond))
        model.trim_positions(max_frames=12, max_text_tokens=1)
        after = (model.vae.encode(feats, lengths, sample=False)[0], model.denoiser(x, 5, cond))
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert model.vae.query_pos_encoder.pe.shape[0] == model.vae.config.max_len == 12 + 2 * 2
    assert model.denoiser.query_pos.pe.shape[0] == model.denoiser.config.max_len == 2 + 1 + 1
    with pytest.raises(ConfigError, match="longer than the learned positional table"):
        model.vae.encode(torch.randn(1, 13, 263, dtype=torch.float64))
    with pytest.raises(ConfigError, match="cannot keep"):
        model.trim_positions(max_frames=1000)
    rebuilt = MLD.from_config(model.config_dict)  # the trimmed layout round-trips through a config
    rebuilt.load_state_dict(model.state_dict())


def test_denoiser_rows_are_independent_and_timestep_forms_agree():
    model = _small_mld().double()
    x = torch.randn(4, 2, 16, dtype=torch.float64)
    text = torch.randn(4, 1, 12, dtype=torch.float64)
    t = torch.tensor([981, 500, 1, 981])
    with torch.no_grad():
        out = model.denoiser(x, t, text)
        assert out.shape == x.shape
        for b in range(4):
            torch.testing.assert_close(
                model.denoiser(x[b : b + 1], t[b : b + 1], text[b : b + 1]), out[b : b + 1]
            )
        torch.testing.assert_close(model.denoiser(x[:1], 981, text[:1]), out[:1])
        torch.testing.assert_close(model.denoiser(x[:1], torch.tensor(981.0), text[:1]), out[:1])


def test_masking_is_nan_free_with_gradients():
    model = _small_mld().train()
    feats = torch.randn(3, 9, 263, requires_grad=True)
    lengths = torch.tensor([9, 1, 4])
    rec, z, posterior = model.vae(feats, lengths)
    eps = model.denoiser(z, torch.tensor([10, 500, 999]), torch.randn(3, 1, 12))
    (rec.square().sum() + eps.square().sum() + posterior.scale.sum()).backward()
    assert torch.isfinite(rec).all() and torch.isfinite(eps).all()
    assert torch.isfinite(feats.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    valid = torch.arange(9)[None, :] < lengths[:, None]
    assert (feats.grad[~valid] == 0).all(), "padded frames must get zero gradient"
    assert (rec[~valid] == 0).all()


def test_bad_inputs_raise_config_errors():
    model = _small_mld()
    with pytest.raises(ConfigError, match=r"feats must be \[B, T, 263\]"):
        model.vae.encode(torch.zeros(2, 5, 251), torch.tensor([5, 5]))
    with pytest.raises(ConfigError, match="lengths must lie in"):
        model.vae.encode(torch.zeros(2, 5, 263), torch.tensor([5, 6]))
    with pytest.raises(ConfigError, match="lengths must lie in"):
        model.vae.decode(torch.zeros(2, 2, 16), torch.tensor([5, 0]))
    with pytest.raises(ConfigError, match="encoder_hidden_states"):
        model.denoiser(torch.zeros(2, 2, 16), torch.tensor([1, 2]), torch.zeros(2, 1, 13))
    with pytest.raises(ConfigError, match="positional table"):
        model.vae.encode(torch.zeros(1, 600, 263), torch.tensor([600]))
    with pytest.raises(ConfigError, match="odd number of layers"):
        MLD(VAEConfig(num_layers=4), DenoiserConfig())


def test_presets_build_and_paper_sizes():
    assert set(PRESETS) == {"mld", "tiny", "mdm", "mdm-tiny"}
    cfg = model_config(get_preset("mld"), text_dim=768)
    assert cfg["vae"]["num_layers"] == 9 and cfg["vae"]["latent_dim"] == 256 and cfg["vae"]["ff_size"] == 1024
    assert cfg["denoiser"]["text_dim"] == 768 and cfg["guidance_scale"] == 7.5
    with pytest.raises(ConfigError, match="unknown model preset"):
        get_preset("huge")


def test_vae_decode_takes_a_list_of_lengths_or_says_what_it_expects():
    from easytune.errors import ConfigError
    from easytune.models.mld import MotionVAE, VAEConfig

    torch.manual_seed(0)
    vae = MotionVAE(
        VAEConfig(
            nfeats=263, latent_size=1, latent_dim=16, ff_size=32, num_layers=1, num_heads=2, dropout=0.0
        )
    ).eval()
    z = torch.randn(2, 1, 16)
    with torch.no_grad():
        torch.testing.assert_close(vae.decode(z, [5, 3]), vae.decode(z, torch.tensor([5, 3])))
    for bad in ([5.0, 3.0], "5,3", None):
        with pytest.raises(ConfigError, match="lengths must be an integer tensor"):
            vae.decode(z, bad)
    assert vae.max_frames == vae.config.max_len - 2


def test_a_reward_checkpoint_passed_as_an_mld_is_named():
    from easytune.checkpoint import ASSETS

    with pytest.raises(CheckpointError, match=r"reward\.pt: not an MLD model \(its config has keys"):
        MLD.from_checkpoint(ASSETS / "reward.pt")
