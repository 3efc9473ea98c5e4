"""MLD: a motion VAE (feature frames <-> a few latent tokens) and a latent denoiser conditioned on text.

Architecture and parameter names follow Motion Latent Diffusion and its MotionLCM / EasyTune lineage
(``vae.*``, ``denoiser.*`` keys), so their checkpoints load strictly after the clean-up documented in
``docs/models.md``. Motion features are the dataset-normalised features ``[B, T, nfeats]``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
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
    strip_prefix,
)
from easytune.errors import CheckpointError, ConfigError
from easytune.models.layers import (
    LearnedPositionalEncoding,
    SkipTransformerDecoder,
    SkipTransformerEncoder,
    TimestepEmbedding,
    activation,
    check_lengths,
    sinusoidal_table,
    timestep_embedding,
)
from easytune.ops.lengths import offset

log = logging.getLogger("easytune.models")

DEFAULT_GUIDANCE = 7.5  # MLD's classifier-free guidance scale (a checkpoint's own value wins)


@dataclass
class VAEConfig:
    """Motion VAE size. ``hidden_dim`` is the transformer width (None = ``latent_dim``); when it differs
    from ``latent_dim`` the latent is projected by ``latent_pre`` / ``latent_post`` (MotionLCM-V2 style)."""

    nfeats: int = 263
    latent_size: int = 1
    latent_dim: int = 256
    hidden_dim: int | None = None
    ff_size: int = 1024
    num_layers: int = 9
    num_heads: int = 4
    dropout: float = 0.1
    max_len: int = 500

    @property
    def width(self) -> int:
        return self.latent_dim if self.hidden_dim is None else self.hidden_dim


@dataclass
class DenoiserConfig:
    """Latent denoiser size. ``text_dim``: the sentence-embedding width of the text encoder;
    ``time_dim``: the sinusoidal timestep feature width; ``text_act``: activation before the text
    projection (``relu`` in MLD / EasyTune checkpoints, None in MotionLCM-V2)."""

    latent_size: int = 1
    latent_dim: int = 256
    hidden_dim: int | None = None
    text_dim: int = 768
    time_dim: int = 768
    ff_size: int = 1024
    num_layers: int = 9
    num_heads: int = 4
    dropout: float = 0.1
    text_act: str | None = "relu"
    flip_sin_to_cos: bool = True
    freq_shift: float = 0.0
    max_len: int = 500

    @property
    def width(self) -> int:
        return self.latent_dim if self.hidden_dim is None else self.hidden_dim


def _projection(src: int, dst: int) -> nn.Module:
    return nn.Identity() if src == dst else nn.Linear(src, dst)


class MotionVAE(nn.Module):
    """Transformer VAE: ``2 * latent_size`` distribution tokens + frames through a skip encoder give
    (mu, logvar); per-frame positional queries cross-attend to the latent in a skip decoder."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        c, w = config, config.width
        self.latent_pre = _projection(w, c.latent_dim)
        self.latent_post = _projection(c.latent_dim, w)
        self.query_pos_encoder = LearnedPositionalEncoding(w, c.max_len)
        self.encoder = SkipTransformerEncoder(w, c.num_heads, c.ff_size, c.num_layers, c.dropout)
        self.query_pos_decoder = LearnedPositionalEncoding(w, c.max_len)
        self.decoder = SkipTransformerDecoder(w, c.num_heads, c.ff_size, c.num_layers, c.dropout)
        self.global_motion_token = nn.Parameter(torch.randn(2 * c.latent_size, w))
        self.skel_embedding = nn.Linear(c.nfeats, w)
        self.final_layer = nn.Linear(w, c.nfeats)
        # The frame position tables stay learned (checkpoint layout unchanged) but start as a sinusoid
        # instead of i.i.d. uniform rows: neighbouring frames then begin with similar queries, which the
        # decoder needs to produce motion that varies over time (measured in docs/models.md).
        with torch.no_grad():
            for table in (self.query_pos_encoder.pe, self.query_pos_decoder.pe):
                table.copy_(sinusoidal_table(c.max_len, w)[:, None])

    def encode(
        self, feats: torch.Tensor, lengths: torch.Tensor | None = None, *, sample: bool = True
    ) -> tuple[torch.Tensor, torch.distributions.Normal]:
        """``feats`` [B, T, nfeats] (padded frames ignored), ``lengths`` int [B] (None = all T valid).

        Returns ``z`` [B, latent_size, latent_dim] (a reparameterised draw, or the mean when
        ``sample=False``) and the posterior ``Normal(mu, std)`` of the same shape.
        """
        c = self.config
        if feats.dim() != 3 or feats.shape[-1] != c.nfeats:
            raise ConfigError(f"MotionVAE.encode: feats must be [B, T, {c.nfeats}], got {tuple(feats.shape)}")
        b, t, _ = feats.shape
        lengths = check_lengths(lengths, b, t, "MotionVAE.encode")
        n_tok = 2 * c.latent_size
        tokens = torch.cat([self.global_motion_token.expand(b, -1, -1), self.skel_embedding(feats)], dim=1)
        token_lengths = None if lengths is None else offset(lengths, n_tok)
        tokens = self.encoder(self.query_pos_encoder(tokens), token_lengths)
        dist = self.latent_pre(tokens[:, :n_tok])
        mu, logvar = dist[:, : c.latent_size], dist[:, c.latent_size :]
        # No argument validation: NaN from diverged weights must reach the trainers' loss check, which
        # names the step and the cause, not fail here inside torch.distributions.
        posterior = torch.distributions.Normal(mu, logvar.exp().sqrt(), validate_args=False)
        return (posterior.rsample() if sample else mu), posterior

    @property
    def max_frames(self) -> int:
        """The longest motion (frames) both ``encode`` and ``decode`` take: the position rows minus the
        ``2 * latent_size`` distribution tokens the encoder puts in front of the frames."""
        return self.config.max_len - 2 * self.config.latent_size

    def decode(
        self, z: torch.Tensor, lengths: torch.Tensor | Sequence[int], num_frames: int | None = None
    ) -> torch.Tensor:
        """``z`` [B, latent_size, latent_dim], ``lengths`` int [B] (a tensor, or a list of ints as the
        reference MLD API takes) -> feats [B, T, nfeats] with T = ``num_frames`` or ``max(lengths)``; padded
        frames are exactly zero."""
        c = self.config
        if z.dim() != 3 or z.shape[1:] != (c.latent_size, c.latent_dim):
            raise ConfigError(
                f"MotionVAE.decode: z must be [B, {c.latent_size}, {c.latent_dim}], got {tuple(z.shape)}"
            )
        if not isinstance(lengths, torch.Tensor):
            if not isinstance(lengths, (list, tuple)) or not all(
                isinstance(n, int) and not isinstance(n, bool) for n in lengths
            ):
                raise ConfigError(
                    f"MotionVAE.decode: lengths must be an integer tensor [B] or a list of B "
                    f"ints (frames per sample), got {type(lengths).__name__} {lengths!r:.80}"
                )
            lengths = torch.tensor(lengths, dtype=torch.int64, device=z.device)
        t = int(lengths.max()) if num_frames is None else num_frames
        lengths = check_lengths(lengths, z.shape[0], t, "MotionVAE.decode")
        queries = self.query_pos_decoder(z.new_zeros(z.shape[0], t, c.width))
        out = self.final_layer(self.decoder(queries, self.latent_post(z), lengths))
        valid = torch.arange(t, device=z.device)[None, :] < lengths[:, None]
        return out * valid[..., None]

    def forward(
        self, feats: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.distributions.Normal]:
        """Reconstruction: ``(feats_rec [B, T, nfeats], z, posterior)``."""
        z, posterior = self.encode(feats, lengths)
        return self.decode(z, lengths, feats.shape[1]), z, posterior


class LatentDenoiser(nn.Module):
    """Skip-transformer over the tokens ``[latent (latent_size), time (1), text (L)]``; returns the
    prediction at the latent tokens (epsilon for MLD's scheduler)."""

    def __init__(self, config: DenoiserConfig) -> None:
        super().__init__()
        self.config = config
        c, w = config, config.width
        self.latent_pre = _projection(c.latent_dim, w)
        self.latent_post = _projection(w, c.latent_dim)
        self.time_embedding = TimestepEmbedding(c.time_dim, w, "silu")
        self.emb_proj = nn.Sequential(activation(c.text_act), nn.Linear(c.text_dim, w))
        self.query_pos = LearnedPositionalEncoding(w, c.max_len)
        self.encoder = SkipTransformerEncoder(w, c.num_heads, c.ff_size, c.num_layers, c.dropout)

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor | int, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        """``sample`` [B, latent_size, latent_dim]; ``timestep`` [B] or a scalar (int or float);
        ``encoder_hidden_states`` [B, L, text_dim] (L = 1: the sentence embedding)
        -> [B, latent_size, latent_dim]."""
        c = self.config
        if sample.dim() != 3 or sample.shape[1:] != (c.latent_size, c.latent_dim):
            raise ConfigError(
                f"LatentDenoiser: sample must be [B, {c.latent_size}, {c.latent_dim}], "
                f"got {tuple(sample.shape)}"
            )
        b = sample.shape[0]
        if (
            encoder_hidden_states.dim() != 3
            or encoder_hidden_states.shape[0] != b
            or encoder_hidden_states.shape[-1] != c.text_dim
        ):
            raise ConfigError(
                f"LatentDenoiser: encoder_hidden_states must be [{b}, L, {c.text_dim}], "
                f"got {tuple(encoder_hidden_states.shape)}"
            )
        timestep = torch.as_tensor(timestep, device=sample.device).reshape(-1)
        if timestep.numel() not in (1, b):
            raise ConfigError(
                f"LatentDenoiser: timestep must be a scalar or [{b}], got {tuple(timestep.shape)}"
            )
        timestep = timestep.expand(b)
        time_emb = self.time_embedding(
            timestep_embedding(timestep, c.time_dim, c.flip_sin_to_cos, c.freq_shift).to(sample.dtype)
        )
        text_emb = self.emb_proj(encoder_hidden_states)
        tokens = torch.cat([self.latent_pre(sample), time_emb[:, None], text_emb], dim=1)
        out = self.encoder(self.query_pos(tokens))
        return self.latent_post(out[:, : c.latent_size])


# Keys of MLD / MotionLCM / EasyTune Lightning checkpoints that are not part of vae + denoiser:
# the frozen text encoder, the T2M evaluator, EasyTune's attached reward model, and the original MLD's
# unused ``mem_pos`` table (created but never used by its ``trans_enc`` denoiser).
LINEAGE_DROP_PREFIXES = (
    "text_encoder.",
    "t2m_textencoder.",
    "t2m_moveencoder.",
    "t2m_motionencoder.",
    "reward_model.",
)
LINEAGE_DROP_KEYS = ("denoiser.mem_pos.pe",)


def clean_lineage_state_dict(
    state_dict: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Drop the documented non-model keys of a lineage checkpoint: ``(kept, dropped key names)``."""
    kept, dropped = {}, []
    for k, v in state_dict.items():
        if k.startswith(LINEAGE_DROP_PREFIXES) or k in LINEAGE_DROP_KEYS:
            dropped.append(k)
        else:
            kept[k] = v
    return kept, dropped


def _count_blocks(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"input_blocks\.(\d+)\.")
    n = {int(m.group(1)) for k in sd if (m := pattern.match(k))}
    return 2 * len(n) + 1


def _shape(sd: Mapping[str, torch.Tensor], key: str, source: str) -> tuple[int, ...]:
    if key not in sd:
        raise CheckpointError(f"{source}: expected key {key!r} to infer the architecture; not present")
    return tuple(sd[key].shape)


def infer_vae_config(
    sd: Mapping[str, torch.Tensor], source: str, num_heads: int = 4, dropout: float = 0.1
) -> VAEConfig:
    """A ``VAEConfig`` from the shapes of a ``vae.*``-stripped state dict (heads are not stored: given)."""
    w, nfeats = _shape(sd, "skel_embedding.weight", source)
    latent_dim = _shape(sd, "latent_pre.weight", source)[0] if "latent_pre.weight" in sd else w
    return VAEConfig(
        nfeats=nfeats,
        latent_size=_shape(sd, "global_motion_token", source)[0] // 2,
        latent_dim=latent_dim,
        hidden_dim=None if latent_dim == w else w,
        ff_size=_shape(sd, "encoder.middle_block.linear1.weight", source)[0],
        num_layers=_count_blocks(sd, "encoder."),
        num_heads=num_heads,
        dropout=dropout,
        max_len=_shape(sd, "query_pos_encoder.pe", source)[0],
    )


def infer_denoiser_config(
    sd: Mapping[str, torch.Tensor],
    source: str,
    latent_size: int,
    num_heads: int = 4,
    dropout: float = 0.1,
    text_act: str | None = "auto",
) -> DenoiserConfig:
    """A ``DenoiserConfig`` from a ``denoiser.*``-stripped state dict. ``text_act="auto"`` is ``relu``
    without latent projections (MLD / EasyTune) and None with them (MotionLCM-V2)."""
    w, text_dim = _shape(sd, "emb_proj.1.weight", source)
    has_proj = "latent_pre.weight" in sd
    latent_dim = _shape(sd, "latent_pre.weight", source)[1] if has_proj else w
    return DenoiserConfig(
        latent_size=latent_size,
        latent_dim=latent_dim,
        hidden_dim=w if has_proj else None,
        text_dim=text_dim,
        time_dim=_shape(sd, "time_embedding.linear_1.weight", source)[1],
        ff_size=_shape(sd, "encoder.middle_block.linear1.weight", source)[0],
        num_layers=_count_blocks(sd, "encoder."),
        num_heads=num_heads,
        dropout=dropout,
        text_act=(None if has_proj else "relu") if text_act == "auto" else text_act,
        max_len=_shape(sd, "query_pos.pe", source)[0],
    )


class MLD(nn.Module):
    """Motion latent diffusion model: ``.vae`` (``MotionVAE``) and ``.denoiser`` (``LatentDenoiser``)."""

    def __init__(self, vae: VAEConfig, denoiser: DenoiserConfig) -> None:
        super().__init__()
        if (vae.latent_size, vae.latent_dim) != (denoiser.latent_size, denoiser.latent_dim):
            raise ConfigError(
                f"VAE latent [{vae.latent_size}, {vae.latent_dim}] and denoiser latent "
                f"[{denoiser.latent_size}, {denoiser.latent_dim}] differ"
            )
        self.vae = MotionVAE(vae)
        self.denoiser = LatentDenoiser(denoiser)

    @property
    def config_dict(self) -> dict[str, Any]:
        """Plain-python description ``from_config`` rebuilds the model from (a checkpoint's ``config``)."""
        return {"kind": "mld", "vae": asdict(self.vae.config), "denoiser": asdict(self.denoiser.config)}

    def trim_positions(self, max_frames: int | None = None, max_text_tokens: int | None = None) -> None:
        """Drop learned position rows that inputs within these bounds never read (smaller checkpoints;
        outputs unchanged up to the bounds, longer inputs then raise a ``ConfigError``). ``max_frames``:
        the VAE tables keep ``max_frames + 2 latent_size`` rows (encoder: distribution tokens + frames);
        ``max_text_tokens``: the denoiser keeps ``latent_size + 1 + max_text_tokens`` (latent, time, text)."""
        from dataclasses import replace

        plans = []
        if max_frames is not None:
            rows = max_frames + 2 * self.vae.config.latent_size
            plans += [(self.vae, (self.vae.query_pos_encoder, self.vae.query_pos_decoder), rows)]
        if max_text_tokens is not None:
            rows = self.denoiser.config.latent_size + 1 + max_text_tokens
            plans += [(self.denoiser, (self.denoiser.query_pos,), rows)]
        for module, tables, rows in plans:
            if not 1 <= rows <= module.config.max_len:
                raise ConfigError(
                    f"trim_positions: {type(module).__name__} has {module.config.max_len} "
                    f"position rows; cannot keep {rows}"
                )
            for table in tables:
                kept = table.pe.detach()[:rows].clone()
                table.pe = nn.Parameter(kept, requires_grad=table.pe.requires_grad)
            module.config = replace(module.config, max_len=rows)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> MLD:
        if config.get("kind") != "mld" or "vae" not in config or "denoiser" not in config:
            raise ConfigError(
                f"an MLD config needs kind='mld', 'vae' and 'denoiser' entries, got keys {sorted(config)}"
            )
        return cls(
            config_from_dict(VAEConfig, config["vae"], "config.vae"),
            config_from_dict(DenoiserConfig, config["denoiser"], "config.denoiser"),
        )

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        *,
        use_ema: bool = True,
        num_heads: int = 4,
        text_act: str | None = "auto",
    ) -> MLD:
        """Load an easytune MLD checkpoint (has ``config``; EMA weights preferred when ``use_ema``) or a
        MLD / MotionLCM / EasyTune Lightning checkpoint ``{'state_dict': {'vae.*', 'denoiser.*', ...}}``.

        Lineage checkpoints carry no config: the architecture is read from tensor shapes; ``num_heads``
        (not stored in weights, 4 in every released model) and ``text_act`` (see
        ``infer_denoiser_config``) can be given. Loading is strict; ``CheckpointError`` lists problems.
        """
        ckpt = load_checkpoint(path)
        state = model_state_dict(ckpt, path, use_ema)
        if "config" in ckpt:
            config = ckpt["config"] if isinstance(ckpt["config"], dict) else {}
            if config.get("kind") != "mld":
                what = f"kind {config['kind']!r}" if "kind" in config else f"keys {sorted(config)[:8]}"
                raise CheckpointError(
                    f"{path}: not an MLD model (its config has {what}; a reward model or evaluator?); pass "
                    "an MLD checkpoint (`easytune pretrain mld`, or a lineage MLD / MotionLCM file)"
                )
            model = build_for_state(lambda: cls.from_config(ckpt["config"]), state, str(path), ckpt["config"])
        else:
            if "denoiser.time_embedding.cond_proj.weight" in state:
                raise CheckpointError(
                    f"{path}: a MotionLCM consistency-distilled denoiser (has "
                    "'denoiser.time_embedding.cond_proj.weight'); only DDPM/DDIM "
                    "MLD denoisers are supported"
                )
            state, dropped = clean_lineage_state_dict(state)
            if dropped:
                log.info(
                    "%s: dropped %d non-model keys (text encoder, evaluator, reward model, mem_pos)",
                    path,
                    len(dropped),
                )
            vae_cfg = infer_vae_config(strip_prefix(state, "vae."), f"{path} (vae.*)", num_heads)
            den_cfg = infer_denoiser_config(
                strip_prefix(state, "denoiser."),
                f"{path} (denoiser.*)",
                vae_cfg.latent_size,
                num_heads,
                text_act=text_act,
            )
            model = cls(vae_cfg, den_cfg)
        load_state_dict_strict(model, state, str(path))
        return model


def load_vae(path: str | os.PathLike, *, use_ema: bool = True, num_heads: int = 4) -> MotionVAE:
    """The ``MotionVAE`` of an easytune VAE or MLD checkpoint, or of a lineage checkpoint's ``vae.*`` keys."""
    ckpt = load_checkpoint(path)
    state = strip_prefix(model_state_dict(ckpt, path, use_ema), "vae.")
    if not state:
        raise CheckpointError(f"{path}: no 'vae.*' weights in the state dict")
    config = ckpt.get("config")
    if config is not None:
        if "vae" not in config:
            raise CheckpointError(f"{path}: config has no 'vae' entry (kind {config.get('kind')!r})")
        vae = MotionVAE(config_from_dict(VAEConfig, config["vae"], f"{path}: config.vae"))
    else:
        vae = MotionVAE(infer_vae_config(state, f"{path} (vae.*)", num_heads))
    load_state_dict_strict(vae, state, f"{path} (vae.*)")
    return vae
