"""LoRA for fine-tuning: low-rank updates on chosen weight matrices via ``torch.nn.utils.parametrize``.

Works on any 2-D parameter (``nn.Linear.weight`` and attention ``in_proj_weight`` alike), so models
need no special layers. ``W' = W + (alpha / rank) * B @ A`` with ``A`` [rank, in] (Kaiming-uniform) and
``B`` [out, rank] (zeros), so a fresh adapter leaves the model unchanged. ``merge_lora`` bakes the
update into the weights and removes the parametrizations (plain state-dict keys again).
"""

from __future__ import annotations

import fnmatch
import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from easytune.errors import ConfigError


class LoRADelta(nn.Module):
    """Parametrization ``W -> W + scale * B @ A``; only ``A`` and ``B`` train."""

    def __init__(self, weight: torch.Tensor, rank: int, alpha: float) -> None:
        super().__init__()
        out_features, in_features = weight.shape
        self.scale = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, in_features, dtype=weight.dtype, device=weight.device))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, dtype=weight.dtype, device=weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.scale * (self.lora_B @ self.lora_A)


DEFAULT_TARGETS = ("*in_proj_weight", "*linear*.weight", "*out_proj.weight")


def apply_lora(
    model: nn.Module, rank: int = 8, alpha: float = 16.0, targets: tuple[str, ...] = DEFAULT_TARGETS
) -> list[str]:
    """Freeze ``model`` and add LoRA adapters to every 2-D parameter whose name matches a glob in ``targets``.

    Returns the adapted parameter names. Raises ``ConfigError`` if ``rank`` < 1 or nothing matches.
    """
    if rank < 1:
        raise ConfigError(f"--lora-rank must be >= 1, got {rank}")
    model.requires_grad_(False)
    names = [
        n for n, p in model.named_parameters() if p.dim() == 2 and any(fnmatch.fnmatch(n, t) for t in targets)
    ]
    if not names:
        raise ConfigError(f"LoRA targets {targets} match no 2-D parameter of {type(model).__name__}")
    for name in names:
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        parametrize.register_parametrization(owner, attr, LoRADelta(getattr(owner, attr), rank, alpha))
    return names


@torch.no_grad()
def merge_lora(model: nn.Module) -> None:
    """Fold every LoRA update into its weight and remove the parametrizations (in place)."""
    for module in list(model.modules()):
        if not parametrize.is_parametrized(module):
            continue
        for attr in list(module.parametrizations.keys()):
            if any(isinstance(p, LoRADelta) for p in module.parametrizations[attr]):
                parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
