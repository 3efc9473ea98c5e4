"""MDM: reference equivalence (cond and zeroed-text uncond), state-dict loading, padding invariance."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from easytune.checkpoint import save_atomic
from easytune.errors import CheckpointError, ConfigError
from easytune.models import MDM, MDMConfig

FIXTURE = Path(__file__).parent / "data" / "mdm_reference_tiny.pt"


def _fixture() -> dict:
    return torch.load(FIXTURE, weights_only=True)


@pytest.mark.parametrize("layout", ["raw", "wrapped", "with_clip"])
def test_reference_state_dict_loads_and_matches(tmp_path, layout):
    fx = _fixture()
    sd = dict(fx["state_dict"])
    assert "sequence_pos_encoder.pe" in sd and "embed_timestep.sequence_pos_encoder.pe" in sd
    if layout == "with_clip":
        sd["clip_model.token_embedding.weight"] = torch.randn(3, 4)
    obj = {"state_dict": sd} if layout == "wrapped" else sd
    path = tmp_path / "model000100000.pt"
    torch.save(obj, path)
    model = MDM.from_checkpoint(path).double().eval()
    assert model.config == MDMConfig(
        nfeats=263, latent_dim=16, ff_size=32, num_layers=2, num_heads=4, text_dim=512
    )
    i, o = fx["inputs"], fx["outputs"]
    x, text = i["x"].double(), i["text"].double()
    with torch.no_grad():
        cond = model(x, i["timesteps"], text, i["lengths"])
        uncond = model(x, i["timesteps"], torch.zeros_like(text), i["lengths"])
    torch.testing.assert_close(cond.float(), o["cond"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(uncond.float(), o["uncond"], rtol=1e-5, atol=1e-5)


def test_fixed_table_matches_reference_buffer():
    fx = _fixture()
    model = MDM(MDMConfig(latent_dim=16, ff_size=32, num_layers=2, max_len=200))
    torch.testing.assert_close(model.pos_table, fx["state_dict"]["sequence_pos_encoder.pe"][:, 0])
    assert "pos_table" not in model.state_dict()


def test_strict_loading_errors_list_keys(tmp_path):
    sd = dict(_fixture()["state_dict"])
    del sd["output_process.poseFinal.bias"]
    sd["embed_action.action_embedding"] = torch.zeros(3, 16)
    path = tmp_path / "bad.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as err:
        MDM.from_checkpoint(path)
    assert "missing keys (1): output_process.poseFinal.bias" in str(err.value)
    assert "unexpected keys (1): embed_action.action_embedding" in str(err.value)
    torch.save({"foo": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="input_process.poseEmbedding.weight"):
        MDM.from_checkpoint(path)


def test_own_checkpoint_roundtrip(tmp_path):
    model = MDM(MDMConfig(latent_dim=32, ff_size=64, num_layers=2, text_dim=24))
    path = save_atomic({"state_dict": model.state_dict(), "config": model.config_dict}, tmp_path / "m.pt")
    loaded = MDM.from_checkpoint(path)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0)


def test_padding_invariance_and_zero_padded_output():
    model = MDM(MDMConfig(latent_dim=32, ff_size=64, num_layers=2, text_dim=24)).double().eval()
    lengths = torch.tensor([10, 3, 1])
    x = torch.randn(3, 10, 263, dtype=torch.float64)
    text = torch.randn(3, 24, dtype=torch.float64)
    t = torch.tensor([999, 5, 0])
    with torch.no_grad():
        out = model(x, t, text, lengths)
        garbage = x.clone()
        garbage[1, 3:] = 1e4
        torch.testing.assert_close(model(garbage, t, text, lengths), out)
        for b, n in enumerate(lengths.tolist()):
            alone = model(x[b : b + 1, :n], t[b : b + 1], text[b : b + 1], lengths[b : b + 1])
            torch.testing.assert_close(alone[0], out[b, :n])
            torch.testing.assert_close(model(x[b : b + 1, :n], t[b : b + 1], text[b : b + 1]), alone)
    valid = torch.arange(10)[None, :] < lengths[:, None]
    assert (out[~valid] == 0).all()


def test_masking_is_nan_free_with_gradients():
    model = MDM(MDMConfig(latent_dim=32, ff_size=64, num_layers=2, text_dim=24)).train()
    x = torch.randn(2, 6, 263, requires_grad=True)
    out = model(x, torch.tensor([3, 900]), torch.randn(2, 24), torch.tensor([6, 1]))
    out.square().sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    assert (x.grad[1, 1:] == 0).all()


def test_bad_inputs_raise_config_errors():
    model = MDM(MDMConfig(latent_dim=32, ff_size=64, num_layers=2, text_dim=24, max_len=50))
    x, text = torch.zeros(2, 6, 263), torch.zeros(2, 24)
    with pytest.raises(ConfigError, match="timesteps must be integers"):
        model(x, torch.tensor([1.5, 2.0]), text)
    with pytest.raises(ConfigError, match=r"text_emb must be \[2, 24\]"):
        model(x, torch.tensor([1, 2]), torch.zeros(2, 1, 24))
    with pytest.raises(ConfigError, match="positional table"):
        model(torch.zeros(1, 60, 263), torch.tensor([1]), torch.zeros(1, 24))
