"""SPM-style retrieval reward model (TMR / TEMOS family) used as the fine-tuning reward.

A motion encoder and a text encoder, each a skip-connected transformer over its sequence with a learned
distribution token prepended, give Gaussian latents (mu, logvar); a shared transformer decoder
reconstructs motion features from either latent. The reward of (motion, caption) is the cosine of the
two latent MEANS (``easytune.ops.reward_head``), with dropout off and frozen weights.

Optional time conditioning (``mode``): ``M1T0`` inserts a timestep token after the distribution token of
the motion encoder, ``M0T1`` in the text encoder, ``M1T1`` in both, ``M0T0`` in neither.

With the ``paper`` preset, parameter names and shapes are those of the EasyTune reference SPM
checkpoints (``GradGuidance/spm.py``), which ``RewardModel.from_checkpoint`` loads directly.
Conventions: motion features are normalised with the dataset Mean/Std; lengths are int64 [B]; frame
``j`` of sample ``b`` is valid iff ``j < lengths[b]``.
"""

from __future__ import annotations

import logging
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from easytune import ops
from easytune.checkpoint import (
    ConfigCheckpointMixin,
    config_from_dict,
    load_checkpoint,
    load_state_dict_strict,
    resolve_checkpoint,
)
from easytune.errors import CheckpointError, ConfigError
from easytune.models.layers import (
    LearnedPositionalEncoding,
    SkipTransformerDecoder,
    SkipTransformerEncoder,
    TimestepEmbedding,
    timestep_embedding,
)
from easytune.ops.lengths import check_range, offset

log = logging.getLogger(__name__)

MODES = ("M0T0", "M1T0", "M0T1", "M1T1")


@dataclass(frozen=True)
class RewardConfig:
    """Architecture of the reward model (plain types only: stored in checkpoints as ``config``).

    ``text_dim`` is the token width of the frozen text encoder named by ``text_encoder`` (a
    ``easytune.text.build_text_encoder`` spec); ``max_len`` bounds the token count of every sequence
    (distribution token + optional time token + frames or caption tokens).
    """

    nfeats: int = 263
    latent_dim: int = 256
    ff_size: int = 1024
    num_layers: int = 9
    num_heads: int = 4
    dropout: float = 0.1
    activation: str = "gelu"
    text_dim: int = 1024
    text_encoder: str = "sentence-transformers:sentence-t5-large"
    max_len: int = 500
    time_channels: int = 512
    mode: str = "M0T0"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"reward model mode must be one of {MODES}, got {self.mode!r}")
        if self.time_channels % 2:
            raise ConfigError(f"reward model time_channels must be even, got {self.time_channels}")

    @property
    def motion_time(self) -> bool:
        return self.mode[1] == "1"

    @property
    def text_time(self) -> bool:
        return self.mode[3] == "1"


# ``paper``: the reference SPM sizes (sentence-T5-large tokens, 1024-d). ``tiny``: trains on a 2-core CPU in
# minutes with the built-in text encoder (``text_dim`` follows the encoder when the model is built); no
# dropout, because drawing dropout masks for the [B, H, T, T] attention maps costs ~2/3 of a CPU step.
PRESETS: dict[str, RewardConfig] = {
    "paper": RewardConfig(),
    "tiny": RewardConfig(
        latent_dim=64,
        ff_size=128,
        num_layers=3,
        num_heads=4,
        dropout=0.0,
        text_encoder="builtin",
        time_channels=64,
        max_len=320,
    ),
}


def _as_timesteps(
    timestep: int | torch.Tensor | None, batch: int, device: torch.device
) -> torch.Tensor | None:
    """None, an int, a 0-d tensor or a [B] tensor -> int64 [B] (None stays None)."""
    if timestep is None:
        return None
    t = torch.as_tensor(timestep, device=device)
    if t.dtype.is_floating_point and not torch.equal(t, t.round()):
        raise ConfigError(f"timestep must hold integers, got {t.flatten()[:4].tolist()}")
    if t.dim() == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ConfigError(f"timestep must be an int or a tensor of shape [{batch}], got {tuple(t.shape)}")
    return t.long()


def _prefix_lengths(mask: torch.Tensor, what: str) -> torch.Tensor:
    """Boolean [B, L] padding mask (True = valid) -> int64 lengths [B]; the mask must be a prefix."""
    lengths = mask.sum(1)
    if not torch.equal(mask, torch.arange(mask.shape[1], device=mask.device)[None] < lengths[:, None]):
        raise ConfigError(f"{what}: the token mask must mark a prefix of valid tokens (right padding)")
    return lengths.long()


class RewardModel(ConfigCheckpointMixin, nn.Module):
    """Text-motion retrieval model; ``reward(...)`` is the fine-tuning reward.

    ``text_encoder`` (an ``easytune.text.TextEncoder``, frozen, not part of the state dict) turns captions
    into token embeddings [B, L, text_dim] with a padding mask, and sentence embeddings used by the
    training loss; built from ``config.text_encoder`` when not given.
    """

    def __init__(self, config: RewardConfig, text_encoder: Any | None = None) -> None:
        super().__init__()
        from easytune.text import config_text_encoder

        text_encoder = config_text_encoder(config, text_encoder, "reward model")
        self.config = config
        d = config.latent_dim
        # Kept out of the state dict and of .to(): the encoder is frozen and moves its outputs itself.
        self.__dict__["text_model"] = text_encoder
        self.query_motion_pos_encoder = LearnedPositionalEncoding(d, config.max_len)
        self.query_text_pos_encoder = LearnedPositionalEncoding(d, config.max_len)
        self.query_pos_decoder = LearnedPositionalEncoding(d, config.max_len)
        sizes = (d, config.num_heads, config.ff_size, config.num_layers, config.dropout, config.activation)
        self.motion_encoder = SkipTransformerEncoder(*sizes)
        self.text_encoder = SkipTransformerEncoder(*sizes)
        self.decoder = SkipTransformerDecoder(*sizes)
        self.global_motion_token = nn.Parameter(torch.randn(1, d))
        self.dist_motion_layer = nn.Linear(d, 2 * d)
        self.global_text_token = nn.Parameter(torch.randn(1, d))
        self.dist_text_layer = nn.Linear(d, 2 * d)
        self.skel_embedding = nn.Linear(config.nfeats, d)
        self.text_embedding = nn.Linear(config.text_dim, d)
        self.final_layer = nn.Linear(d, config.nfeats)
        self.time_embedding = TimestepEmbedding(config.time_channels, d, "silu")
        # Small initial positions and distribution tokens (the reference draws them from U(0, 1) and
        # N(0, 1)): large constant inputs swamp the frame / caption embeddings, every latent starts at the
        # same point and a short CPU run learns no retrieval at all.
        for table in (self.query_motion_pos_encoder, self.query_text_pos_encoder, self.query_pos_decoder):
            nn.init.normal_(table.pe, std=0.02)
        nn.init.normal_(self.global_motion_token, std=0.02)
        nn.init.normal_(self.global_text_token, std=0.02)
        self._text_cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.text_cache_size = 65536

    # ------------------------------------------------------------------ encoders / decoder
    def _encode(
        self,
        x: torch.Tensor,
        lengths: torch.Tensor,
        token: torch.Tensor,
        positions: LearnedPositionalEncoding,
        encoder: SkipTransformerEncoder,
        dist_layer: nn.Linear,
        timesteps: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b = x.shape[0]
        parts = [token[None].expand(b, -1, -1)]
        if timesteps is not None:
            feats = timestep_embedding(
                timesteps, self.config.time_channels, flip_sin_to_cos=True, freq_shift=0.0
            )
            parts.append(self.time_embedding(feats).to(x.dtype)[:, None])
        n_extra = len(parts)
        seq = torch.cat([*parts, x], dim=1)
        if seq.shape[1] > self.config.max_len:
            raise ConfigError(
                f"reward model: sequence of {x.shape[1]} frames/tokens (+{n_extra} special) exceeds "
                f"max_len={self.config.max_len} of its position table"
            )
        out = encoder(positions(seq), offset(lengths.to(seq.device), n_extra))
        mu, logvar = dist_layer(out[:, 0]).chunk(2, dim=-1)
        return mu, logvar

    def _time(
        self, flag: bool, timestep: int | torch.Tensor | None, batch: int, device: torch.device
    ) -> torch.Tensor | None:
        t = _as_timesteps(timestep, batch, device)
        if not flag:
            if t is not None:
                raise ConfigError(
                    f"this reward model (mode {self.config.mode}) is not time-conditioned on that "
                    "side; pass timestep=None"
                )
            return None
        return torch.zeros(batch, dtype=torch.long, device=device) if t is None else t

    def encode_motion(
        self, feats: torch.Tensor, lengths: torch.Tensor, timestep: int | torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Motion features [B, T, nfeats] (normalised), lengths [B] -> (mu, logvar), each [B, latent_dim].

        ``timestep`` (time-conditioned motion side only): the diffusion step of the (noisy) input;
        None means clean input (t = 0).
        """
        self._check_motion(feats, lengths)
        t = self._time(self.config.motion_time, timestep, feats.shape[0], feats.device)
        return self._encode(
            self.skel_embedding(feats),
            lengths,
            self.global_motion_token,
            self.query_motion_pos_encoder,
            self.motion_encoder,
            self.dist_motion_layer,
            t,
        )

    def encode_text_tokens(
        self, tokens: torch.Tensor, mask: torch.Tensor, timestep: int | torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings [B, L, text_dim] with mask [B, L] (True = valid, a prefix) -> (mu, logvar),
        each [B, latent_dim]."""
        if tokens.dim() != 3 or tokens.shape[-1] != self.config.text_dim or mask.shape != tokens.shape[:2]:
            raise ConfigError(
                f"reward model: expected text tokens [B, L, {self.config.text_dim}] and mask [B, L], "
                f"got {tuple(tokens.shape)} and {tuple(mask.shape)}"
            )
        lengths = _prefix_lengths(mask.bool(), "reward model text tokens")
        t = self._time(self.config.text_time, timestep, tokens.shape[0], tokens.device)
        return self._encode(
            self.text_embedding(tokens),
            lengths,
            self.global_text_token,
            self.query_text_pos_encoder,
            self.text_encoder,
            self.dist_text_layer,
            t,
        )

    def embed_captions(self, captions: list[str], device: torch.device | None = None):
        """Run the frozen text encoder: ``TextEmbedding(tokens, mask, sentence)`` on ``device``."""
        with torch.no_grad():
            emb = self.text_model.encode(list(captions), device=device)
        return emb

    def decode(self, z: torch.Tensor, lengths: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        """Latent [B, latent_dim] -> motion features [B, T, nfeats], exactly zero on padded frames.

        ``T = num_frames`` (default ``max(lengths)``). Frame queries are the learned positions.
        """
        t = int(lengths.max()) if num_frames is None else num_frames
        if t > self.config.max_len:
            raise ConfigError(f"reward model decode: {t} frames exceed max_len={self.config.max_len}")
        queries = self.query_pos_decoder.pe[:t, 0][None].expand(z.shape[0], -1, -1)
        out = self.final_layer(self.decoder(queries, z[:, None], lengths.to(z.device)))
        valid = torch.arange(t, device=z.device)[None] < lengths.to(z.device)[:, None]
        return out * valid[..., None]

    # ------------------------------------------------------------------ reward
    def text_latents(
        self,
        captions: list[str],
        timestep: int | torch.Tensor | None = None,
        device: torch.device | None = None,
    ) -> torch.Tensor:
        """Means of the text latents [B, latent_dim] (no grad), cached per (caption, timestep)."""
        device = device or self.skel_embedding.weight.device
        t = self._time(self.config.text_time, timestep, len(captions), device)
        keys = [(c, None if t is None else int(t[i]), str(device)) for i, c in enumerate(captions)]
        todo = sorted({k for k in keys if k not in self._text_cache}, key=str)
        for k in todo:  # one caption at a time: a cached latent never depends on its batch-mates
            emb = self.embed_captions([k[0]], device=device)
            tt = None if t is None else torch.tensor([k[1]], device=device)
            with torch.no_grad():
                mu, _ = self.encode_text_tokens(emb.tokens.to(device), emb.mask.to(device), tt)
            self._text_cache[k] = mu[0]
            if len(self._text_cache) > self.text_cache_size:
                self._text_cache.popitem(last=False)
        return torch.stack([self._text_cache[k] for k in keys])

    def reward(
        self,
        motion_feats: torch.Tensor,
        lengths: torch.Tensor,
        captions: list[str],
        timestep: int | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Cosine of the text and motion latent means, [B] (float32); differentiable w.r.t. ``motion_feats``.

        ``motion_feats`` [B, T, nfeats] normalised features; ``lengths`` int [B]; ``captions`` B strings;
        ``timestep``: diffusion step of a noisy input for a time-conditioned model (``M1T0``/``M1T1``:
        motion side; ``M0T1``/``M1T1``: text side), None = clean. The model must be frozen
        (``freeze()``): eval mode, no parameter requiring grad, so the reward is deterministic.
        """
        if self.training or any(p.requires_grad for p in self.parameters()):
            raise ConfigError(
                "RewardModel.reward needs a frozen model (eval mode, requires_grad False): call "
                ".freeze() first (RewardModel.from_checkpoint does)"
            )
        if len(captions) != motion_feats.shape[0]:
            raise ConfigError(f"reward: {len(captions)} captions for {motion_feats.shape[0]} motions")
        c = self.config
        m_time = timestep if c.motion_time else None
        t_time = timestep if c.text_time else None
        if timestep is not None and not (c.motion_time or c.text_time):
            raise ConfigError(
                f"reward: timestep given but the reward model (mode {c.mode}) is not time-conditioned"
            )
        text = self.text_latents(list(captions), t_time, device=motion_feats.device)
        motion, _ = self.encode_motion(motion_feats, lengths, m_time)
        return ops.reward_head(motion.float(), text.float())

    def freeze(self) -> RewardModel:
        """Eval mode and ``requires_grad=False`` on every parameter; returns ``self``."""
        self.eval()
        self.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> RewardModel:
        self._text_cache.clear()  # weights may change (or have changed): cached text latents are stale
        return super().train(mode)

    def _apply(self, fn, recurse: bool = True):
        self._text_cache.clear()
        return super()._apply(fn, recurse)

    def _check_motion(self, feats: torch.Tensor, lengths: torch.Tensor) -> None:
        if feats.dim() != 3 or feats.shape[-1] != self.config.nfeats:
            raise ConfigError(
                f"reward model: expected motion features [B, T, {self.config.nfeats}], "
                f"got {tuple(feats.shape)}"
            )
        if (
            not isinstance(lengths, torch.Tensor)
            or lengths.shape != (feats.shape[0],)
            or lengths.dtype.is_floating_point
        ):
            raise ConfigError(
                f"reward model: lengths must be an integer tensor of shape [{feats.shape[0]}], got "
                f"{getattr(lengths, 'dtype', type(lengths))} {tuple(getattr(lengths, 'shape', ()))}"
            )
        check_range(lengths, 1, feats.shape[1], "reward model")

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike = "default",
        *,
        text_encoder: Any | None = None,
        mode: str | None = None,
        map_location: str | torch.device = "cpu",
        freeze: bool = True,
    ) -> RewardModel:
        """Load an easytune reward checkpoint or a reference SPM checkpoint (``{"state_dict": ...}``).

        ``path="default"`` is the embedded ``easytune/assets/reward.pt``. For a reference SPM file the
        architecture is read from the weight shapes, the mode from ``mode`` or the file name (as the
        reference does: ``M1T0`` in the name, else ``M0T0``) and the text encoder defaults to
        sentence-T5-large (pass ``text_encoder`` to use a local copy). Frozen unless ``freeze=False``.
        """
        path = resolve_checkpoint(path, "reward.pt", "reward model")
        ckpt = load_checkpoint(path, map_location)
        sd = ckpt.get("state_dict")
        if not isinstance(sd, dict):
            raise CheckpointError(f"{path}: no 'state_dict' dict in the checkpoint")
        if "config" in ckpt:
            config = config_from_dict(RewardConfig, dict(ckpt["config"]), f"{path}: config")
        else:
            sd, config = _reference_layout(sd, path)
        if mode is not None:
            config = replace(config, mode=mode)
        elif "config" not in ckpt:
            config = replace(config, mode="M1T0" if "M1T0" in path.name else "M0T0")
        model = cls(config, text_encoder)
        load_state_dict_strict(model, sd, str(path))
        return model.freeze() if freeze else model


def _reference_layout(
    sd: dict[str, torch.Tensor], path: Path
) -> tuple[dict[str, torch.Tensor], RewardConfig]:
    """Architecture of a reference SPM state dict, read from its shapes (the sentence-encoder ``clip.*``
    weights, when present, are not part of the reward model and are left out, with a log line)."""
    clip = [k for k in sd if k.startswith("clip.")]
    if clip:
        log.info("%s: leaving out %d frozen sentence-encoder weights (clip.*)", path, len(clip))
        sd = {k: v for k, v in sd.items() if not k.startswith("clip.")}
    try:
        d, nfeats = sd["skel_embedding.weight"].shape
        text_dim = sd["text_embedding.weight"].shape[1]
        ff = sd["motion_encoder.middle_block.linear1.weight"].shape[0]
        half = len(
            {int(m.group(1)) for k in sd if (m := re.match(r"motion_encoder\.input_blocks\.(\d+)\.", k))}
        )
        max_len = sd["query_motion_pos_encoder.pe"].shape[0]
        time_channels = sd["time_embedding.linear_1.weight"].shape[1]
    except KeyError as err:
        raise CheckpointError(
            f"{path}: not an easytune or reference SPM reward checkpoint (missing {err})"
        ) from err
    config = replace(
        PRESETS["paper"],
        nfeats=nfeats,
        latent_dim=d,
        text_dim=text_dim,
        ff_size=ff,
        num_layers=2 * half + 1,
        max_len=max_len,
        time_channels=time_channels,
    )
    return sd, config


def build_reward_model(
    preset: str = "tiny", *, text_encoder: Any | None = None, **overrides: Any
) -> RewardModel:
    """A fresh (trainable) reward model from a preset (``paper`` | ``tiny``) with field overrides.

    ``text_encoder``: an encoder object or a spec string (default: the preset's spec); ``text_dim`` and the
    config's ``text_encoder`` follow it.
    """
    if preset not in PRESETS:
        raise ConfigError(f"reward model preset must be one of {sorted(PRESETS)}, got {preset!r}")
    from easytune.text import bind_text_encoder

    return RewardModel(*bind_text_encoder(replace(PRESETS[preset], **overrides), text_encoder))
