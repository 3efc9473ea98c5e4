"""Reward head: L2-normalise the motion and text latents and take their cosine, per sample.

``motion`` and ``text``: [B, D]; returns [B] with ``cos_b = <m_b, t_b> / (max(|m_b|, eps) * max(|t_b|, eps))``
(the ``torch.nn.functional.normalize`` convention). The mean over the batch is the fine-tuning reward.
"""

from __future__ import annotations

import torch

from easytune.ops import dispatch


def reward_head_ref(motion: torch.Tensor, text: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pure-PyTorch reference; [B, D] x [B, D] -> [B]."""
    m = motion / motion.norm(dim=-1, keepdim=True).clamp_min(eps)
    t = text / text.norm(dim=-1, keepdim=True).clamp_min(eps)
    return (m * t).sum(-1)


def _reward_head_math(motion, text, eps=1e-8):
    return reward_head_ref(motion, text, eps)


dispatch.register("reward_head", "math", _reward_head_math, lambda **_: [])


def reward_head(motion: torch.Tensor, text: torch.Tensor, *, eps: float = 1e-8, backend: str | None = None) -> torch.Tensor:
    """Cosine similarity of latents, [B, D] x [B, D] -> [B]; differentiable in both inputs."""
    if motion.dim() != 2 or motion.shape != text.shape:
        raise ValueError(f"reward_head expects motion and text latents of equal shape [B, D], got "
                         f"{tuple(motion.shape)} and {tuple(text.shape)}")
    impl = dispatch.resolve("reward_head", backend, motion=motion, text=text)
    return impl.fn(motion, text, eps=eps)
