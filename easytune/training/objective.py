"""What a reward fine-tuning run trains and what it holds frozen: one builder for finetune and the benchmarks.

``build_finetuning(pipe, reward_model, ...)`` freezes the reward path (the MLD VAE and the reward model: eval
mode, ``requires_grad=False``, optional activation checkpointing), puts the trainable module (MLD's latent
denoiser or the whole MDM) in eval mode (dropout off: sampling during fine-tuning matches inference),
optionally swaps its weights for LoRA adapters, and builds the AdamW optimizer over exactly the trainable
parameters. ``easytune finetune`` and ``easytune bench methods`` both go through it, so a benchmark holds
what a real run holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from easytune.config import check_number
from easytune.errors import ConfigError
from easytune.generation import MotionPipeline
from easytune.ops import lengths as lengths_range
from easytune.training.finetune_config import PRECISIONS


def set_precision(precision: str) -> None:
    """``tf32``: let float32 matmuls and convolutions use TF32 tensor cores (CUDA; no effect on the CPU);
    ``fp32`` turns that off; ``bf16`` leaves it (the bf16 autocast of ``RewardObjective`` does the rest)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "bf16":
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        torch.backends.cudnn.allow_tf32 = precision == "tf32"


class RewardObjective:
    """The trainer's callables for a loaded generator + reward model: ``denoise``, ``decode``, ``reward`` and
    ``batch`` (captions + frame lengths -> the trainer's batch dict: ``cond``, ``uncond``, ``captions``,
    ``lengths`` int64 [B], ``num_frames``).

    ``precision="bf16"``: the denoiser, the VAE decoder and the reward model run under bf16 autocast; their
    outputs, the reward value, the loss and the optimizer state stay float32. ``fp32`` / ``tf32``: no
    autocast (``set_precision`` sets TF32)."""

    def __init__(
        self,
        pipe: MotionPipeline,
        reward_model: torch.nn.Module,
        precision: str = "fp32",
        terms: list[tuple[str, float]] | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {PRECISIONS}, got {precision!r}")
        self.pipe = pipe
        self.reward_model = reward_model
        self.precision = precision
        self.reward_fn = self._reward_fn(terms)

    def _reward_fn(self, terms: list[tuple[str, float]] | None):
        """The trainer's ``reward_fn``: the reward model alone (``terms`` None or ``[("spl", 1.0)]``), else
        an ``easytune.rewards.Composite`` of ``spl`` (the reward model) and motion-quality terms."""
        if not terms or list(terms) == [("spl", 1.0)]:
            return self.spl
        from easytune.rewards import Composite, QualityReward

        parts = [
            (w, self.spl if name == "spl" else QualityReward(name, self.pipe.mean, self.pipe.std), name)
            for name, w in terms
        ]
        return Composite(parts)

    def _autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def denoise(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        with self._autocast(x.device):
            out = self.pipe.denoise(x, t, cond)
        return out.float()

    def decode(self, x0: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        with self._autocast(x0.device):
            feats = self.pipe.decode(x0, batch["lengths"], batch.get("num_frames"))
        return feats.float()

    def spl(self, feats: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """The reward model's reward [B] (under the bf16 autocast with ``precision="bf16"``)."""
        with self._autocast(feats.device):
            reward = self.reward_model.reward(feats, batch["lengths"], batch["captions"])
        return reward.float()

    def reward(self, feats: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """The run's reward [B]: ``reward_fn`` (the reward model, or the composite of the run's terms)."""
        return self.reward_fn(feats, batch)

    def named_parameters(self):
        """The trainable module's parameters with their names (the trainer names a bad tensor with them)."""
        return self.pipe.trainable.named_parameters()

    @property
    def decode_fn(self):
        """``decode`` for latent models (MLD), None for models that denoise features directly (MDM)."""
        return self.decode if self.pipe.decode is not None else None

    def batch(
        self, captions: list[str], lengths: list[int] | torch.Tensor, device: torch.device
    ) -> dict[str, Any]:
        host = [int(n) for n in lengths]  # the frame counts are host values: no device read later
        if len(host) != len(captions) or not host or min(host) < 1:
            raise ConfigError(
                f"batch: need one length >= 1 (frames) per caption, got {len(captions)} captions and lengths "
                f"{host[:8]}"
            )
        lens = torch.tensor(host, dtype=torch.int64).to(device)
        lengths_range.mark_host(lens, host)  # known on the host: no model reads it again
        cond, uncond = self.pipe.conditions(captions, lens, device)
        return {
            "cond": cond,
            "uncond": uncond,
            "captions": list(captions),
            "lengths": lens,
            "num_frames": max(host),
        }


@dataclass
class FinetuneModels:
    """The result of ``build_finetuning``: ``objective`` (the trainer's callables), ``optimizer`` (AdamW over
    ``params``), ``params`` (every parameter that trains), ``lora`` (adapted weight names, None: full)."""

    objective: RewardObjective
    optimizer: torch.optim.Optimizer
    params: list[torch.Tensor]
    lora: list[str] | None

    @property
    def trainable(self) -> torch.nn.Module:
        return self.objective.pipe.trainable


def build_finetuning(
    pipe: MotionPipeline,
    reward_model: torch.nn.Module,
    *,
    lr: float,
    weight_decay: float = 0.0,
    lora_rank: int | None = None,
    lora_alpha: float = 16.0,
    checkpoint_frozen: bool = False,
    frame_layout: str = "auto",
    precision: str = "fp32",
    reward_terms: list[tuple[str, float]] | None = None,
) -> FinetuneModels:
    """Freeze the reward path, prepare the trainable module and its optimizer (see the module docstring).

    ``checkpoint_frozen``: per-layer activation checkpointing in the VAE decoder and the reward model (same
    losses and gradients, less memory). ``frame_layout``: ``padded | packed`` frames in the VAE decoder and
    the reward model (``models.packing``; same results up to float rounding), ``auto`` the measured faster
    one for the models' device type. ``precision``: ``fp32 | tf32 | bf16`` (see ``RewardObjective``).
    Raises ``ConfigError`` if anything outside the trainable parameters
    would still receive gradients.
    """
    from easytune.models.layers import set_frame_layout, set_gradient_checkpointing
    from easytune.models.packing import resolve_frame_layout
    from easytune.training.lora import apply_lora

    check_number("--lr", lr, low=0.0, low_open=True)
    layout = resolve_frame_layout(frame_layout, next(pipe.model.parameters()).device)
    frozen = [reward_model, *pipe.family.frozen(pipe.model)]
    for module in frozen:
        module.eval().requires_grad_(False)
        set_gradient_checkpointing(module, checkpoint_frozen)
        set_frame_layout(module, layout)
    trainable = pipe.trainable
    trainable.eval()
    lora = apply_lora(trainable, lora_rank, lora_alpha) if lora_rank is not None else None
    params = [p for p in trainable.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(f"{type(trainable).__name__} has no parameter that requires grad to fine-tune")
    held = {id(p) for p in params}
    stray = [
        f"{owner}.{name}"
        for owner, module in (("model", pipe.model), ("reward_model", reward_model))
        for name, p in module.named_parameters()
        if p.requires_grad and id(p) not in held
    ]
    if stray:
        raise ConfigError(
            f"parameters outside the trainable module still require grad (they would collect gradients "
            f"that no optimizer zeroes): {stray[:5]}{' ...' if len(stray) > 5 else ''}"
        )
    # fused: one kernel per step, and it skips a non-finite update on the device (GradScaler's found_inf),
    # which keeps the trainer's NaN guard free of host syncs
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    optimizer = torch.optim.AdamW(
        params, lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay, fused=fused or None
    )
    set_precision(precision)
    objective = RewardObjective(pipe, reward_model, precision, reward_terms)
    return FinetuneModels(objective, optimizer, params, lora)
