"""One adapter per text-to-motion model family behind one protocol, chosen once when a model is loaded.

Everything that differs between MLD and MDM for sampling, fine-tuning and pretraining is answered here, so
the pipeline (``easytune.generation``), the fine-tuning objective and the pretraining loop never branch on
the family:

=================  =========================================  =============================================
                   MLD (latent diffusion)                     MDM (frame diffusion)
=================  =========================================  =============================================
x (diffused)       VAE latent [B, latent_size, latent_dim]    normalised motion [B, T, nfeats], T = max len
condition          sentence embedding [B, 1, text_dim]        ``{"text": [B, text_dim], "lengths": [B]}``
null condition     the empty caption's embedding              a zero text embedding
trains             the latent denoiser (VAE frozen)           the whole model
decoder            the VAE decoder                            none (x is the motion)
frame mask         none (latents have no padding)             x_t and the loss masked to valid frames
=================  =========================================  =============================================

``FAMILIES[name]`` / ``family_of(model)`` give the adapter; adapters hold no state (the model is passed in).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from easytune.errors import ConfigError
from easytune.models import mdm, mld
from easytune.models.presets import MDM_SCHEDULER, MLD_SCHEDULER

MAX_FRAMES = 196  # HumanML3D's longest training crop; MDM samples are padded to it


class ModelFamily:
    """The protocol: what a model family must answer. ``name`` is the checkpoint's ``config["kind"]``."""

    name: str = ""
    trainable_prefix: str  # the key prefix of ``trainable(model)`` in the model's state dict
    model_class: type[nn.Module]  # with from_config / from_checkpoint
    default_guidance: float  # the CFG scale when a checkpoint names none
    default_scheduler: dict[str, Any]  # the scheduler config when a checkpoint names none

    def trainable(self, model: nn.Module) -> nn.Module:
        """The module fine-tuning (and the denoiser's pretraining) updates."""
        raise NotImplementedError

    def frozen(self, model: nn.Module) -> list[nn.Module]:
        """Modules on the reward path that never train (MLD's VAE)."""
        raise NotImplementedError

    def text_dim(self, model: nn.Module) -> int:
        raise NotImplementedError

    def max_frames(self, model: nn.Module) -> int:
        """The longest motion (frames) the model samples."""
        raise NotImplementedError

    def latent_shape(self, model: nn.Module) -> tuple[int, int]:
        """The per-sample shape of ``x`` at the longest motion."""
        raise NotImplementedError

    def noise_shape(self, model: nn.Module, lengths: list[int]) -> tuple[int, int, int]:
        """The shape of the initial noise for motions of ``lengths`` frames."""
        raise NotImplementedError

    def decoder(self, model: nn.Module) -> Callable[..., torch.Tensor] | None:
        """``decode(x0, lengths, num_frames=None) -> normalised feats [B, T, nfeats]``, or None (x is the
        motion)."""
        raise NotImplementedError

    def encode(self, model: nn.Module, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The clean ``x0`` of normalised motions ``feats`` [B, T, nfeats] (no gradient to frozen parts)."""
        raise NotImplementedError

    def denoise(self, model: nn.Module, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        """The model output for ``x_t`` at timesteps ``t`` [B] under ``cond``."""
        raise NotImplementedError

    def conditions(
        self, sentence: torch.Tensor, null_sentence: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[Any, Any]:
        """(condition, null condition) from sentence embeddings [B, text_dim], the empty caption's [1,
        text_dim] and the lengths [B] (frames)."""
        raise NotImplementedError

    def drop(self, cond: Any, null: Any, mask: torch.Tensor) -> Any:
        """Condition dropout: the null condition where ``mask`` [B] bool is True."""
        raise NotImplementedError

    def frame_mask(self, mask: torch.Tensor) -> torch.Tensor | None:
        """The mask [B, T] bool to apply to ``x_t`` and the loss, or None (no frame axis)."""
        raise NotImplementedError

    def full_state(
        self, model: nn.Module, trainable_state: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """The whole model's state dict with ``trainable_state`` as its trainable part."""
        raise NotImplementedError


class MLDFamily(ModelFamily):
    name = "mld"
    trainable_prefix = "denoiser."
    model_class = mld.MLD
    default_guidance = mld.DEFAULT_GUIDANCE
    default_scheduler = MLD_SCHEDULER

    def trainable(self, model):
        return model.denoiser

    def frozen(self, model):
        return [model.vae]

    def text_dim(self, model):
        return model.denoiser.config.text_dim

    def max_frames(self, model):
        return model.vae.max_frames

    def latent_shape(self, model):
        c = model.denoiser.config
        return (c.latent_size, c.latent_dim)

    def noise_shape(self, model, lengths):
        return (len(lengths), *self.latent_shape(model))

    def decoder(self, model):
        return model.vae.decode

    def encode(self, model, feats, lengths):
        with torch.no_grad():
            return model.vae.encode(feats, lengths)[0]

    def denoise(self, model, x, t, cond):
        return model.denoiser(x, t, cond)

    def conditions(self, sentence, null_sentence, lengths):
        return sentence[:, None], null_sentence.expand_as(sentence)[:, None]

    def drop(self, cond, null, mask):
        return torch.where(mask[:, None, None], null, cond)

    def frame_mask(self, mask):
        return None

    def full_state(self, model, trainable_state):
        p = self.trainable_prefix
        state = {k: v for k, v in model.state_dict().items() if not k.startswith(p)}
        state.update({p + k: v for k, v in trainable_state.items()})
        return state


class MDMFamily(ModelFamily):
    name = "mdm"
    trainable_prefix = ""
    model_class = mdm.MDM
    default_guidance = mdm.DEFAULT_GUIDANCE
    default_scheduler = MDM_SCHEDULER

    def trainable(self, model):
        return model

    def frozen(self, model):
        return []

    def text_dim(self, model):
        return model.config.text_dim

    def max_frames(self, model):
        return MAX_FRAMES

    def latent_shape(self, model):
        return (MAX_FRAMES, model.config.nfeats)

    def noise_shape(self, model, lengths):
        return (len(lengths), max(lengths), model.config.nfeats)

    def decoder(self, model):
        return None

    def encode(self, model, feats, lengths):
        return feats

    def denoise(self, model, x, t, cond):
        return model(x, t, cond["text"], cond["lengths"])

    def conditions(self, sentence, null_sentence, lengths):
        return {"text": sentence, "lengths": lengths}, {
            "text": torch.zeros_like(sentence),
            "lengths": lengths,
        }

    def drop(self, cond, null, mask):
        return {"text": torch.where(mask[:, None], null["text"], cond["text"]), "lengths": cond["lengths"]}

    def frame_mask(self, mask):
        return mask

    def full_state(self, model, trainable_state):
        return dict(trainable_state)


FAMILIES: dict[str, ModelFamily] = {f.name: f for f in (MLDFamily(), MDMFamily())}


def get_family(name: str, source: str = "") -> ModelFamily:
    """The adapter of ``name`` (a checkpoint's ``kind``); ``source`` names the checkpoint in the error."""
    if name not in FAMILIES:
        where = f"{source}: " if source else ""
        raise ConfigError(f"{where}model kind {name!r} is not one of {sorted(FAMILIES)}")
    return FAMILIES[name]
