"""MDM: a frame-level transformer denoiser that predicts the clean motion x0 (Tevet et al.).

Parameter names follow the reference ``model/mdm.py`` (``input_process.poseEmbedding``,
``embed_timestep.time_embed``, ``embed_text``, ``seqTransEncoder.layers.*``, ``output_process.poseFinal``),
so an MDM state dict saved without its CLIP weights loads strictly. Classifier-free guidance uses the
unconditional branch ``text_emb = 0`` (the reference's masked condition), scale 2.5 by default.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from easytune.checkpoint import (
    build_for_state,
    config_from_dict,
    load_checkpoint,
    load_state_dict_strict,
    model_state_dict,
)
from easytune.errors import CheckpointError, ConfigError
from easytune.models.layers import TransformerEncoderLayer, check_lengths, sinusoidal_table
from easytune.ops.lengths import offset

log = logging.getLogger("easytune.models")

DEFAULT_GUIDANCE = 2.5  # MDM's classifier-free guidance scale (a checkpoint's own value wins)


@dataclass
class MDMConfig:
    """MDM size. ``text_dim``: text-embedding width (512 for the reference CLIP ViT-B/32); ``max_len``:
    rows of the fixed sinusoid table, which also embeds timesteps (so it must exceed the train steps)."""

    nfeats: int = 263
    latent_dim: int = 512
    ff_size: int = 1024
    num_layers: int = 8
    num_heads: int = 4
    dropout: float = 0.1
    text_dim: int = 512
    max_len: int = 5000


class _Linear(nn.Module):
    """Holds one ``nn.Linear`` under a reference attribute name (``poseEmbedding`` / ``poseFinal``)."""

    def __init__(self, name: str, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.name = name
        self.add_module(name, nn.Linear(in_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, self.name)(x)


class _TimestepEmbedder(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.time_embed = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, table_rows: torch.Tensor) -> torch.Tensor:
        return self.time_embed(table_rows)


class _Encoder(nn.Module):
    def __init__(self, c: MDMConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerEncoderLayer(c.latent_dim, c.num_heads, c.ff_size, c.dropout, "gelu")
            for _ in range(c.num_layers)
        )

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, lengths)
        return x


class MDM(nn.Module):
    """``MDM(x [B, T, nfeats], timesteps int [B], text_emb [B, text_dim], lengths [B] | None)`` -> x0
    [B, T, nfeats].

    Tokens: ``[embed_text(text_emb) + embed_timestep(t), frames...]`` plus the sinusoid table, through a
    post-norm transformer encoder with frame padding masked by ``lengths``; padded output frames are zero.
    """

    def __init__(self, config: MDMConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.register_buffer("pos_table", sinusoidal_table(c.max_len, c.latent_dim), persistent=False)
        self.input_process = _Linear("poseEmbedding", c.nfeats, c.latent_dim)
        self.embed_timestep = _TimestepEmbedder(c.latent_dim)
        self.embed_text = nn.Linear(c.text_dim, c.latent_dim)
        self.seqTransEncoder = _Encoder(c)
        self.output_process = _Linear("poseFinal", c.latent_dim, c.nfeats)
        self.pos_dropout = nn.Dropout(c.dropout)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        text_emb: torch.Tensor,
        lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        c = self.config
        if x.dim() != 3 or x.shape[-1] != c.nfeats:
            raise ConfigError(f"MDM: x must be [B, T, {c.nfeats}], got {tuple(x.shape)}")
        b, t, _ = x.shape
        if text_emb.shape != (b, c.text_dim):
            raise ConfigError(f"MDM: text_emb must be [{b}, {c.text_dim}], got {tuple(text_emb.shape)}")
        timesteps = torch.as_tensor(timesteps, device=x.device).reshape(-1)
        if timesteps.numel() not in (1, b):
            raise ConfigError(f"MDM: timesteps must be a scalar or [{b}], got {tuple(timesteps.shape)}")
        timesteps = timesteps.expand(b)
        if timesteps.dtype.is_floating_point:
            raise ConfigError(
                f"MDM: timesteps must be integers (they index the sinusoid table), got {timesteps.dtype}"
            )
        if t + 1 > c.max_len:
            raise ConfigError(f"MDM: {t} frames exceed the positional table ({c.max_len - 1} frames max)")
        lengths = check_lengths(lengths, b, t, "MDM")
        emb = self.embed_text(text_emb) + self.embed_timestep(self.pos_table[timesteps])
        tokens = torch.cat([emb[:, None], self.input_process(x)], dim=1)
        tokens = self.pos_dropout(tokens + self.pos_table[: t + 1])
        hidden = self.seqTransEncoder(tokens, None if lengths is None else offset(lengths, 1))
        out = self.output_process(hidden[:, 1:])
        if lengths is not None:
            out = out * (torch.arange(t, device=x.device)[None, :] < lengths[:, None])[..., None]
        return out

    @property
    def config_dict(self) -> dict[str, Any]:
        """Plain-python description ``from_config`` rebuilds the model from (a checkpoint's ``config``)."""
        return {"kind": "mdm", "mdm": asdict(self.config)}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> MDM:
        if config.get("kind") != "mdm" or "mdm" not in config:
            raise ConfigError(f"an MDM config needs kind='mdm' and an 'mdm' entry, got keys {sorted(config)}")
        return cls(config_from_dict(MDMConfig, config["mdm"], "config.mdm"))

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, *, use_ema: bool = True, num_heads: int = 4) -> MDM:
        """Load an easytune MDM checkpoint (with ``config``) or a reference MDM state dict (raw, as
        ``model*.pt``, or under ``state_dict``) saved without CLIP weights. Reference clean-up:
        ``clip_model.*`` and the fixed tables ``sequence_pos_encoder.pe`` and
        ``embed_timestep.sequence_pos_encoder.pe`` are dropped (as the reference loader does); the size is
        read from shapes, ``num_heads`` given."""
        ckpt = load_checkpoint(path)
        if "config" in ckpt:
            state = model_state_dict(ckpt, path, use_ema)
            model = build_for_state(lambda: cls.from_config(ckpt["config"]), state, str(path), ckpt["config"])
        else:
            state = dict(ckpt["state_dict"]) if isinstance(ckpt.get("state_dict"), Mapping) else ckpt
            state = {
                k: v
                for k, v in state.items()
                if not k.startswith("clip_model.")
                and k not in ("sequence_pos_encoder.pe", "embed_timestep.sequence_pos_encoder.pe")
            }
            model = cls(infer_mdm_config(state, str(path), num_heads))
        load_state_dict_strict(model, state, str(path))
        return model


def infer_mdm_config(sd: Mapping[str, torch.Tensor], source: str, num_heads: int = 4) -> MDMConfig:
    """An ``MDMConfig`` from the shapes of a reference MDM state dict (heads are not stored: given)."""
    ff_key = "seqTransEncoder.layers.0.linear1.weight"
    for key in ("input_process.poseEmbedding.weight", "embed_text.weight", ff_key):
        if key not in sd or not isinstance(sd[key], torch.Tensor):
            raise CheckpointError(
                f"{source}: expected MDM key {key!r} to infer the architecture; not present"
            )
    d, nfeats = sd["input_process.poseEmbedding.weight"].shape
    layers = {int(m.group(1)) for k in sd if (m := re.match(r"seqTransEncoder\.layers\.(\d+)\.", k))}
    return MDMConfig(
        nfeats=nfeats,
        latent_dim=d,
        ff_size=sd[ff_key].shape[0],
        num_layers=len(layers),
        num_heads=num_heads,
        text_dim=sd["embed_text.weight"].shape[1],
    )
