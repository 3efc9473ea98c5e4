"""The independent evaluator: shapes, padding, official-weight conversion, margin loss, training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from easytune.checkpoint import save_atomic
from easytune.errors import CheckpointError, ConfigError
from easytune.models.evaluator import BiGRUEncoder, MotionTextEvaluator, build_evaluator
from easytune.text import build_text_encoder
from easytune.training.evaluator import margin_loss


class FixedWidthEncoder:
    """Stands in for a GloVe (300) + POS one-hot (15) word featurizer: the interface only."""

    token_dim, sentence_dim, spec = 315, 4, "test:glove+pos"

    def encode(self, captions, device=None):
        raise AssertionError("not used")


SMALL = dict(move_hidden=16, move_latent=16, motion_hidden=16, text_hidden=16, embed_dim=8)


@pytest.fixture(scope="module")
def text_encoder():
    return build_text_encoder("builtin:token_dim=12,sentence_dim=8")


def test_embeddings_ignore_padding_and_foot_contacts(text_encoder):
    ev = build_evaluator("tiny", text_encoder=text_encoder, **SMALL).freeze()
    x = torch.randn(3, 40, 263)
    lengths = torch.tensor([40, 23, 4])
    e = ev.encode_motion(x, lengths)
    assert e.shape == (3, 8)
    padded = torch.cat([x, torch.randn(3, 7, 263)], 1)
    torch.testing.assert_close(ev.encode_motion(padded, lengths), e, atol=1e-6, rtol=0)
    contacts = x.clone()
    contacts[..., -4:] = torch.randn(3, 40, 4)
    torch.testing.assert_close(ev.encode_motion(contacts, lengths), e, atol=0, rtol=0)
    assert ev.encode_text(["a person walks", "a person waves"]).shape == (2, 8)
    with pytest.raises(ConfigError, match="lengths must lie"):
        ev.encode_motion(x, torch.tensor([40, 23, 3]))


def test_official_t2m_weights_convert_exactly(tmp_path):
    torch.manual_seed(0)
    word, pos, hid, out = 300, 15, 16, 8
    ref = build_evaluator(
        "t2m",
        text_encoder=build_text_encoder("builtin:token_dim=300,sentence_dim=8"),
        move_hidden=16,
        move_latent=16,
        motion_hidden=16,
        text_hidden=hid,
        embed_dim=out,
    )
    pos_emb = nn.Linear(pos, word)
    text_sd = dict(ref.text_encoder.state_dict())
    text_sd.update({"pos_emb.weight": pos_emb.weight.detach(), "pos_emb.bias": pos_emb.bias.detach()})
    path = tmp_path / "finest.tar"
    save_atomic(
        {
            "movement_encoder": ref.movement_encoder.state_dict(),
            "motion_encoder": ref.motion_encoder.state_dict(),
            "text_encoder": text_sd,
            "epoch": 1,
        },
        path,
    )
    with pytest.raises(ConfigError, match="text_dim"):  # the featurizer must give 300 + 15 values per word
        MotionTextEvaluator.from_t2m_official(
            path, build_text_encoder("builtin:token_dim=316,sentence_dim=8")
        )
    enc315 = FixedWidthEncoder()
    rng = np.random.default_rng(0)
    mean_d, std_d = rng.normal(size=263), rng.uniform(0.5, 2, 263)
    mean_e, std_e = rng.normal(size=263), rng.uniform(0.5, 2, 263)
    ev = MotionTextEvaluator.from_t2m_official(
        path, enc315, dataset_mean=mean_d, dataset_std=std_d, eval_mean=mean_e, eval_std=std_e
    )
    # text: official computes input_emb(word + pos_emb(onehot)); ours input_emb'([word, onehot]).
    w = torch.randn(2, 5, word)
    p = torch.nn.functional.one_hot(torch.randint(0, pos, (2, 5)), pos).float()
    lengths = torch.tensor([5, 3])
    with torch.no_grad():
        official = ref.text_encoder(w + pos_emb(p), lengths)
        ours = ev.text_encoder(torch.cat([w, p], -1), lengths)
    torch.testing.assert_close(ours, official, atol=1e-5, rtol=1e-5)
    # motion: the dataset-normalised input is re-normalised with the evaluator's statistics.
    x = torch.randn(2, 16, 263)
    raw = x * torch.as_tensor(std_d).float() + torch.as_tensor(mean_d).float()
    x_eval = (raw - torch.as_tensor(mean_e).float()) / torch.as_tensor(std_e).float()
    with torch.no_grad():
        ref_m = ref.freeze().encode_motion(x_eval, torch.tensor([16, 12]))
        torch.testing.assert_close(ev.encode_motion(x, torch.tensor([16, 12])), ref_m, atol=1e-4, rtol=1e-4)
    save_atomic({"state_dict": {}}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not an official"):
        MotionTextEvaluator.from_t2m_official(tmp_path / "plain.pt", enc315)


def test_bigru_uses_lengths_not_padding():
    torch.manual_seed(0)
    enc = BiGRUEncoder(4, 6, 3).eval()
    x = torch.randn(2, 7, 4)
    lengths = torch.tensor([7, 3])
    a = enc(x, lengths)
    b = enc(x[1:2, :3], lengths[1:])
    torch.testing.assert_close(a[1:], b, atol=1e-6, rtol=0)


def test_margin_loss_hand_example():
    t = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    m = torch.tensor([[0.0, 1.0], [3.0, 0.0]])
    # d[i, j] = |t_i - m_j| = [[1, 3], [sqrt(10), 0]]; positives: mean(1, 0) = 0.5;
    # negatives (margin 4): (4 - 3)^2 and (4 - sqrt(10))^2, averaged
    expected = 0.5 + (1.0 + (4 - 10**0.5) ** 2) / 2
    assert margin_loss(t, m, 4.0).item() == pytest.approx(expected, rel=1e-6)
    keep = torch.tensor([[True, False], [True, True]])  # (0, 1) is not a negative
    assert margin_loss(t, m, 4.0, keep).item() == pytest.approx(0.5 + (4 - 10**0.5) ** 2, rel=1e-6)


def test_checkpoint_round_trip_and_errors(tmp_path, text_encoder):
    ev = build_evaluator("tiny", text_encoder=text_encoder, **SMALL)
    path = ev.save(tmp_path / "ev.pt")
    loaded = MotionTextEvaluator.from_checkpoint(path, text_encoder=text_encoder)
    assert loaded.config == ev.config and not loaded.training
    save_atomic({"state_dict": {}}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="from_t2m_official"):
        MotionTextEvaluator.from_checkpoint(tmp_path / "x.pt", text_encoder=text_encoder)
