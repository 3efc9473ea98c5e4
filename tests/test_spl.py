"""SPL (self-refining preference learning of the reward model): ``spl_loss`` against a per-text loop
reference (loss and gradients, every option),
and ``reward_losses`` mining its pairs from the latent means of the batch, weighted by ``spl_weight``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from easytune.models.reward import build_reward_model
from easytune.text import build_text_encoder
from easytune.training.reward import RewardTrainConfig, reward_losses, spl_loss


def _loop_reference(text, motion, topk, temperature, high_sim, double_temperature):
    """One text at a time: rank the batch's motions by cosine, mine (ground truth, top-1 retrieved)."""
    scale = 1.0 / temperature ** (2 if double_temperature else 1)
    terms, failed = [], []
    for i in range(len(text)):
        sims = torch.stack([F.cosine_similarity(text[i], m, dim=0) for m in motion])
        order = sorted(range(len(motion)), key=lambda j: -float(sims[j].detach()))
        ok = i in order[:topk] or (high_sim is not None and bool((sims > high_sim).any()))
        p_gt = torch.softmax(torch.stack([sims[i], sims[order[0]]]) * scale, 0)[0]
        # KL((1, 0) || p) = -log p_gt; KL((.5, .5) || p) = -.5 log(4 p_gt (1 - p_gt))
        terms.append(-0.5 * torch.log(4 * p_gt * (1 - p_gt)) if ok else -torch.log(p_gt))
        failed.append(not ok)
    return torch.stack(terms).mean(), failed


@pytest.mark.parametrize(
    "topk,high_sim,double_temperature",
    [(1, None, False), (3, None, False), (1, 0.75, False), (2, None, True)],
)
def test_spl_loss_matches_loop_reference_and_gradients(topk, high_sim, double_temperature):
    g = torch.Generator().manual_seed(3)
    text0 = torch.randn(10, 6, generator=g)
    motion0 = text0 + 1.2 * torch.randn(10, 6, generator=g)  # some texts retrieve their motion, some fail
    kw = dict(topk=topk, temperature=0.5, high_sim=high_sim, double_temperature=double_temperature)
    text, motion = text0.clone().requires_grad_(), motion0.clone().requires_grad_()
    loss, failed = spl_loss(text, motion, **kw)
    loss.backward()
    text_r, motion_r = text0.clone().requires_grad_(), motion0.clone().requires_grad_()
    ref, failed_r = _loop_reference(text_r, motion_r, **kw)
    ref.backward()
    assert failed.tolist() == failed_r
    assert 0 < sum(failed_r) < len(failed_r)  # both targets are exercised
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(text.grad, text_r.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(motion.grad, motion_r.grad, rtol=1e-4, atol=1e-6)


def test_reward_losses_mines_spl_pairs_on_latent_means():
    """Training latents are sampled (here with a large scale); the SPL pairs and similarities must come
    from the means, and the term enters the total with weight ``spl_weight``."""
    enc = build_text_encoder("builtin:token_dim=16,sentence_dim=16")
    torch.manual_seed(0)
    model = build_reward_model(
        "tiny", text_encoder=enc, mode="M0T0", latent_dim=16, ff_size=32, num_layers=1, max_len=64
    ).train()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 20, 263, generator=g)
    lengths = torch.tensor([20, 18, 16, 20, 12, 20, 15, 19])
    emb = model.embed_captions([f"a person does move {i}" for i in range(8)])
    t = torch.zeros(8, dtype=torch.long)
    cfg = RewardTrainConfig(spl_weight=0.3, spl_topk=2, sample_scale=5.0)
    out = reward_losses(model, x, x, lengths, emb, t, cfg)
    m_mu, _ = model.encode_motion(x, lengths)
    t_mu, _ = model.encode_text_tokens(emb.tokens, emb.mask)
    expected, failed = spl_loss(t_mu, m_mu, topk=2, temperature=cfg.temperature)
    torch.testing.assert_close(out["spl"], expected)
    assert out["spl_failed"].item() == pytest.approx(failed.float().mean().item())
    stage1 = out["recons"] + 1e-5 * out["kl"] + 1e-5 * out["latent"] + 0.1 * out["contrastive"]
    torch.testing.assert_close(out["total"], stage1 + 0.3 * expected)
