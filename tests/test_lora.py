"""LoRA adapters: identity at start, only adapters train, merge reproduces the adapted model."""

import pytest
import torch
from torch import nn

from easytune.errors import ConfigError
from easytune.training.lora import apply_lora, merge_lora


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.in_proj_weight = nn.Parameter(torch.randn(12, 4))
        self.linear1 = nn.Linear(4, 4)

    def forward(self, x):
        return self.linear1(x @ self.in_proj_weight[:4].T)


def test_lora_identity_train_and_merge():
    model = Block().double()
    x = torch.randn(3, 4, dtype=torch.float64)
    before = model(x)
    names = apply_lora(model, rank=2, alpha=4.0)
    assert set(names) == {"in_proj_weight", "linear1.weight"}
    torch.testing.assert_close(model(x), before)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        model(x).square().sum().backward()
        opt.step()
    adapted = model(x).detach()
    assert not torch.allclose(adapted, before)
    merge_lora(model)
    assert set(dict(model.named_parameters())) == {"in_proj_weight", "linear1.weight", "linear1.bias"}
    torch.testing.assert_close(model(x), adapted)


def test_lora_rejects_bad_rank_and_no_match():
    with pytest.raises(ConfigError, match="lora-rank"):
        apply_lora(Block(), rank=0)
    with pytest.raises(ConfigError, match="match no"):
        apply_lora(Block(), targets=("nothing*",))
