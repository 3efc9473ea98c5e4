"""Reward head: L2-normalise the motion and text latents and take their cosine, per sample.

``motion`` and ``text``: [B, D]; returns [B] with ``cos_b = <m_b, t_b> / (max(|m_b|, eps) * max(|t_b|, eps))``
(the ``torch.nn.functional.normalize`` convention). The mean over the batch is the fine-tuning reward
(taken by the caller: a mean of B numbers gains nothing from fusion).
"""

from __future__ import annotations

import torch

from easytune.errors import ConfigError
from easytune.ops import _triton, dispatch


def reward_head_ref(motion: torch.Tensor, text: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pure-PyTorch reference; [B, D] x [B, D] -> [B]."""
    m = motion / motion.norm(dim=-1, keepdim=True).clamp_min(eps)
    t = text / text.norm(dim=-1, keepdim=True).clamp_min(eps)
    return (m * t).sum(-1)


def _reward_head_math(motion, text, eps=1e-8):
    return reward_head_ref(motion, text, eps)


def _reward_head_triton(motion, text, eps=1e-8):
    from easytune_kernels.reward_head import reward_head as triton_reward_head

    return triton_reward_head(motion, text, eps)


def _reasons_triton(motion, text, **_):
    return _triton.reasons("reward_head", {"motion": motion, "text": text})


dispatch.register(
    "reward_head",
    "triton",
    _reward_head_triton,
    _reasons_triton,
    auto_reasons=_triton.auto_reasons,
    capabilities=_triton.CAPABILITIES,
)
dispatch.register("reward_head", "math", _reward_head_math)
_HITS = dispatch.hits("reward_head")
_compiling, _grad_enabled, _tensor_key = dispatch.compiling, dispatch.grad_enabled, dispatch.tensor_key


def _check_inputs(motion: torch.Tensor, text: torch.Tensor) -> None:
    """Metadata checks (run once per call signature by ``dispatch.resolve``)."""
    if motion.dim() != 2 or motion.shape != text.shape:
        raise ConfigError(
            f"reward_head expects motion and text latents of equal shape [B, D], got "
            f"{tuple(motion.shape)} and {tuple(text.shape)}"
        )


def reward_head(
    motion: torch.Tensor, text: torch.Tensor, *, eps: float = 1e-8, backend: str | None = None
) -> torch.Tensor:
    """Cosine similarity of latents, [B, D] x [B, D] -> [B]; differentiable in both inputs.

    ``backend``: ``auto | triton | cuda | math`` (see ``easytune.ops.dispatch``).
    """
    if _compiling():
        key = hit = None
    else:  # the memo key (see dispatch.resolve)
        key = (backend, _grad_enabled(), _tensor_key(motion), _tensor_key(text))
        hit = _HITS.get(key)
    if hit is None:  # the first call of this signature, or traced by torch.compile
        fn = dispatch.resolve("reward_head", backend, _check_inputs, key=key, motion=motion, text=text).fn
    else:
        hit.calls += 1
        fn = hit.fn
    return fn(motion, text, eps=eps)
