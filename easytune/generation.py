"""A loaded text-to-motion model ready to sample or fine-tune: ``load_pipeline(ckpt)`` -> ``MotionPipeline``.

One object bundles the model with its text encoder, sampling scheduler (DDIM or flow Euler), guidance scale
and dataset statistics (a diffusers-style pipeline); the MLD / MDM differences are answered by the model's
family adapter (``easytune.models.families``), chosen once at load, so nothing here branches on the family.

Sampled motions are returned de-normalised (``new_joint_vecs`` format) by ``sample``; everything else works
on normalised features.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from easytune.checkpoint import load_checkpoint, resolve_checkpoint, save_atomic
from easytune.errors import CheckpointError, ConfigError
from easytune.models.families import FAMILIES, MAX_FRAMES, ModelFamily

# the embedded base models: name -> (file in easytune/assets, what it is)
EMBEDDED_BASES = {
    "default": ("mld_tiny.pt", "MLD model"),
    "default-flow": ("mld_tiny_flow.pt", "flow-matching MLD model"),
}
log = logging.getLogger("easytune.generation")

__all__ = ["MAX_FRAMES", "MotionPipeline", "load_pipeline"]


@dataclass
class MotionPipeline:
    """A text-to-motion model (``family`` answers what differs between MLD and MDM) with its text encoder,
    DDIM scheduler, guidance scale and dataset statistics ``mean`` / ``std`` [nfeats]."""

    family: ModelFamily
    model: torch.nn.Module
    text: Any
    scheduler: Any
    guidance_scale: float
    mean: torch.Tensor
    std: torch.Tensor
    config: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """The model family's name (``mld`` | ``mdm``), as in the checkpoint's ``config["kind"]``."""
        return self.family.name

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def trainable(self) -> torch.nn.Module:
        """The module fine-tuning updates: MLD's latent denoiser, or the whole MDM."""
        return self.family.trainable(self.model)

    @property
    def latent_shape(self) -> tuple[int, int]:
        """The per-sample shape of the diffused variable at the longest motion."""
        return self.family.latent_shape(self.model)

    @property
    def max_frames(self) -> int:
        """The longest motion (frames) this model samples: its VAE's for MLD, ``MAX_FRAMES`` for MDM."""
        return self.family.max_frames(self.model)

    @property
    def data_dir(self) -> str | None:
        """The dataset folder the model was trained on, when its checkpoint records one."""
        return self.meta.get("data")

    @property
    def decode(self):
        """``decode(x0, lengths, num_frames=None) -> normalised feats [B, T, nfeats]`` (MLD's VAE decoder,
        T = ``num_frames`` or max(lengths), the latter a device read); None for MDM."""
        return self.family.decoder(self.model)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        """The model output for ``x_t`` at timesteps ``t`` [B] under ``cond`` (see ``models.families``)."""
        return self.family.denoise(self.model, x, t, cond)

    def conditions(
        self, captions: list[str], lengths: list[int] | torch.Tensor, device: torch.device | None = None
    ) -> tuple[Any, Any]:
        """(cond, null condition) for ``captions``; ``lengths`` are frames per sample."""
        device = self.device if device is None else device
        sentence = self.text.encode(captions, device=device).sentence
        null = self.text.encode([""], device=device).sentence
        return self.family.conditions(sentence, null, torch.as_tensor(lengths, device=device))

    @torch.no_grad()
    def sample_normalised(
        self,
        captions: list[str],
        lengths: list[int],
        *,
        steps: int = 50,
        guidance_scale: float | None = None,
        seed: int = 0,
    ) -> torch.Tensor:
        """Normalised features [B, max(lengths), nfeats] (zero past each length), DDIM with CFG."""
        from easytune.diffusion import ddim_sample

        if len(captions) != len(lengths) or not captions:
            raise ConfigError(
                f"sample: need one length per caption, got {len(captions)} captions and "
                f"{len(lengths)} lengths"
            )
        if min(lengths) < 1 or steps < 1:
            raise ConfigError(f"sample: lengths and steps must be >= 1, got lengths {lengths}, steps {steps}")
        if max(lengths) > self.max_frames:
            raise ConfigError(
                f"sample: length {max(lengths)} frames is longer than this {self.kind.upper()} can generate "
                f"({self.max_frames} frames at most); lengths are in frames (20 fps in HumanML3D)"
            )
        w = self.guidance_scale if guidance_scale is None else guidance_scale
        device = self.device
        self.scheduler.set_timesteps(steps)
        rng = torch.Generator().manual_seed(seed)
        lens = torch.tensor(lengths, device=device)
        cond, null = self.conditions(captions, lens, device)
        x_T = torch.randn(self.family.noise_shape(self.model, lengths), generator=rng).to(device)
        x0 = ddim_sample(
            self.denoise, self.scheduler, x_T, cond, null if w != 1.0 else None, guidance_scale=w
        )
        decode = self.decode
        feats = x0 if decode is None else decode(x0, lens)
        valid = torch.arange(feats.shape[1], device=device)[None, :] < lens[:, None]
        return feats * valid[..., None]

    def sample(self, captions: list[str], lengths: list[int], **kw: Any) -> list[np.ndarray]:
        """One de-normalised motion per caption, float32 [lengths[i], nfeats] (kw: ``sample_normalised``)."""
        feats = self.sample_normalised(captions, lengths, **kw).float().cpu() * self.std + self.mean
        return [feats[i, :n].numpy() for i, n in enumerate(lengths)]

    def save(
        self,
        path: str | os.PathLike,
        trainable_state: dict[str, torch.Tensor],
        meta: dict[str, Any] | None = None,
    ) -> Path:
        """Write the whole model, ``trainable_state`` as its fine-tuned part, as an easytune checkpoint."""
        state = self.family.full_state(self.model, trainable_state)
        state = {k: v.detach().cpu() for k, v in state.items()}
        merged_meta = {**self.meta, **(meta or {}), "mean": self.mean.tolist(), "std": self.std.tolist()}
        config = {
            **self.config,
            **self.model.config_dict,
            "text_encoder": self.text.spec,
            "scheduler": dict(self.scheduler.config),
            "guidance_scale": self.guidance_scale,
        }
        return save_atomic({"state_dict": state, "config": config, "meta": merged_meta}, path)


def load_pipeline(
    ckpt: str | os.PathLike,
    *,
    text_encoder: str | None = None,
    data: str | os.PathLike | None = None,
    use_ema: bool = True,
    device: str | torch.device = "cpu",
) -> MotionPipeline:
    """Load an MLD or MDM checkpoint (``"default"``: the embedded tiny MLD; ``"default-flow"``: its
    flow-matching twin on the same VAE) with everything sampling needs.

    Reference checkpoints carry no text encoder, scheduler or statistics: the preset defaults apply,
    ``text_encoder`` must name an encoder of the right width and ``data`` must give Mean/Std.
    """
    from easytune.data.humanml import load_mean_std
    from easytune.diffusion import is_flow, sampling_scheduler
    from easytune.text import build_text_encoder

    name = str(ckpt)
    if name in EMBEDDED_BASES:
        path = resolve_checkpoint("default", EMBEDDED_BASES[name][0], EMBEDDED_BASES[name][1])
    else:
        path = Path(ckpt)
    raw = load_checkpoint(path)
    config = dict(raw.get("config") or {})
    state = raw.get("state_dict", raw)
    kind = config.get("kind") or ("mdm" if "input_process.poseEmbedding.weight" in state else "mld")
    if kind not in FAMILIES:
        raise CheckpointError(
            f"{path}: a {kind!r} checkpoint cannot sample; pass an MLD or MDM model "
            "(train the denoiser with `easytune pretrain mld --vae ...`)"
        )
    family = FAMILIES[kind]
    model = family.model_class.from_checkpoint(path, use_ema=use_ema).to(device).eval()
    for name, tensor in model.state_dict().items():  # a NaN weight would sample NaN motions
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{path}: weight {name} holds NaN or inf values; the model cannot sample")
    text_dim = family.text_dim(model)
    spec = text_encoder or config.get("text_encoder")
    if spec is None:
        raise ConfigError(
            f"{path}: the checkpoint does not name its text encoder; pass --text-encoder SPEC "
            f"(a {text_dim}-d sentence encoder)"
        )
    text = build_text_encoder(spec)
    if text.sentence_dim != text_dim:
        raise ConfigError(
            f"text encoder {spec!r} gives {text.sentence_dim}-d sentences but {path} expects "
            f"{text_dim}-d ones"
        )
    meta = dict(raw.get("meta") or {})
    if data is not None:
        mean, std = load_mean_std(data)
        meta["data"] = str(data)
    elif "mean" in meta and "std" in meta:
        mean, std = np.asarray(meta["mean"]), np.asarray(meta["std"])
    else:
        raise ConfigError(f"{path}: no dataset Mean/Std in the checkpoint; pass --data DIR to de-normalise")
    scheduler = sampling_scheduler(config.get("scheduler") or family.default_scheduler)
    if (
        not is_flow(scheduler)
        and not scheduler.config.set_alpha_to_one
        and scheduler.config.steps_offset == 0
        and scheduler.config.timestep_spacing == "leading"
    ):
        log.warning(
            "%s: its DDIM scheduler ends at t=0 with set_alpha_to_one=False, so the last step is the "
            "identity (samples keep residual noise; DRaFT-1 / DRaFT-LV get no gradient). Loaded as saved; "
            "the %s preset now uses set_alpha_to_one=True",
            path,
            kind,
        )
    guidance = float(config.get("guidance_scale", family.default_guidance))
    return MotionPipeline(
        family=family,
        model=model,
        text=text,
        scheduler=scheduler,
        guidance_scale=guidance,
        mean=torch.as_tensor(mean, dtype=torch.float32),
        std=torch.as_tensor(std, dtype=torch.float32),
        config=config,
        meta=meta,
    )
