"""Independent text-motion evaluator for generation metrics (R-Precision, FID, MM-Dist, Diversity, MM).

Deliberately unlike the reward model (so that reward hacking stays visible): it follows the T2M
evaluator of Guo et al. (2022) -- a convolutional movement encoder (two stride-2 Conv1d, 4x temporal
down-sampling) on the motion features WITHOUT the foot contacts, a bidirectional GRU over the movement
codes, a bidirectional GRU over the caption's token embeddings, and Euclidean embeddings trained with a
margin contrastive loss (``easytune.training.evaluator``). Module and parameter names follow the official
evaluator (``movement_encoder``, ``motion_encoder``, ``text_encoder``) so that
``MotionTextEvaluator.from_t2m_official`` can load its released weights (see docs/evaluation.md).

Inputs: motion features [B, T, nfeats] normalised with the dataset Mean/Std, lengths int [B] (frame ``j``
valid iff ``j < lengths[b]``; padded frames are zeroed and ``unit_length`` zero frames appended before the
convolution, so results do not depend on the batch's padding). An optional affine re-normalisation
(buffers ``input_scale``/``input_shift``, identity by default) maps the dataset normalisation to the
evaluator's own when they differ.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from easytune.checkpoint import (
    ConfigCheckpointMixin,
    config_from_dict,
    load_checkpoint,
    load_state_dict_strict,
    resolve_checkpoint,
)
from easytune.errors import CheckpointError, ConfigError
from easytune.ops.lengths import check_range


@dataclass(frozen=True)
class EvaluatorConfig:
    """Evaluator architecture (plain types; stored in checkpoints as ``config``).

    ``text_dim``: token width of the text encoder named by ``text_encoder`` (a ``build_text_encoder`` spec).
    ``unit_length``: temporal down-sampling of the movement encoder (4 = two stride-2 convolutions).
    """

    nfeats: int = 263
    foot_contact_dims: int = 4
    move_hidden: int = 512
    move_latent: int = 512
    motion_hidden: int = 1024
    text_hidden: int = 512
    embed_dim: int = 512
    text_dim: int = 300
    text_encoder: str = "builtin:token_dim=300,sentence_dim=256"
    unit_length: int = 4

    def __post_init__(self) -> None:
        if self.unit_length != 4:
            raise ConfigError(
                f"evaluator unit_length must be 4 (two stride-2 convolutions), got {self.unit_length}"
            )
        if not 0 <= self.foot_contact_dims < self.nfeats:
            raise ConfigError(
                f"evaluator foot_contact_dims must lie in [0, nfeats), got {self.foot_contact_dims}"
            )


PRESETS: dict[str, EvaluatorConfig] = {
    "t2m": EvaluatorConfig(),
    "tiny": EvaluatorConfig(
        move_hidden=128, move_latent=128, motion_hidden=128, text_hidden=128, embed_dim=128
    ),
}


class MovementConvEncoder(nn.Module):
    """[B, T, D] -> [B, T/4, out]: Conv1d(4, stride 2) -> Dropout -> LeakyReLU, twice, then Linear."""

    def __init__(self, input_size: int, hidden: int, out: int) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv1d(input_size, hidden, 4, 2, 1),
            nn.Dropout(0.2),
            nn.LeakyReLU(0.2),
            nn.Conv1d(hidden, out, 4, 2, 1),
            nn.Dropout(0.2),
            nn.LeakyReLU(0.2),
        )
        self.out_net = nn.Linear(out, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_net(self.main(x.transpose(1, 2)).transpose(1, 2))


class BiGRUEncoder(nn.Module):
    """[B, T, input] with lengths [B] -> [B, out]: Linear, bidirectional GRU (learned initial state
    ``hidden``), final states of both directions -> Linear/LayerNorm/LeakyReLU/Linear."""

    def __init__(self, input_size: int, hidden: int, out: int) -> None:
        super().__init__()
        self.input_emb = nn.Linear(input_size, hidden)
        self.gru = nn.GRU(hidden, hidden, batch_first=True, bidirectional=True)
        self.output_net = nn.Sequential(
            nn.Linear(2 * hidden, hidden), nn.LayerNorm(hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, out)
        )
        self.hidden = nn.Parameter(torch.randn(2, 1, hidden))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(
            self.input_emb(x), lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        _, last = self.gru(packed, self.hidden.expand(-1, x.shape[0], -1).contiguous())
        return self.output_net(torch.cat([last[0], last[1]], dim=-1))


class MotionTextEvaluator(ConfigCheckpointMixin, nn.Module):
    """Text and motion embeddings [B, embed_dim] in one Euclidean space (matched pairs close)."""

    def __init__(self, config: EvaluatorConfig, text_encoder: Any | None = None) -> None:
        super().__init__()
        from easytune.text import config_text_encoder

        text_encoder = config_text_encoder(config, text_encoder, "evaluator")
        self.config = config
        self.__dict__["text_model"] = text_encoder  # frozen, outside the state dict
        c = config
        self.movement_encoder = MovementConvEncoder(
            c.nfeats - c.foot_contact_dims, c.move_hidden, c.move_latent
        )
        self.motion_encoder = BiGRUEncoder(c.move_latent, c.motion_hidden, c.embed_dim)
        self.text_encoder = BiGRUEncoder(c.text_dim, c.text_hidden, c.embed_dim)
        self.register_buffer("input_scale", torch.ones(c.nfeats))
        self.register_buffer("input_shift", torch.zeros(c.nfeats))

    def encode_motion(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Motion features [B, T, nfeats] (dataset-normalised), lengths int [B] (>= 4) -> [B, embed_dim]."""
        c = self.config
        if feats.dim() != 3 or feats.shape[-1] != c.nfeats:
            raise ConfigError(
                f"evaluator: expected motion features [B, T, {c.nfeats}], got {tuple(feats.shape)}"
            )
        if lengths.shape != (feats.shape[0],) or lengths.dtype.is_floating_point:
            raise ConfigError(f"evaluator: lengths must be an integer tensor of shape [{feats.shape[0]}]")
        check_range(lengths, c.unit_length, feats.shape[1], "evaluator")
        valid = torch.arange(feats.shape[1], device=feats.device)[None] < lengths.to(feats.device)[:, None]
        x = (feats * self.input_scale + self.input_shift) * valid[..., None]
        if c.foot_contact_dims:
            x = x[..., : c.nfeats - c.foot_contact_dims]
        # Trailing zero frames, so that the last movement unit of every sample sees zeros past its end
        # (as in the official zero-padded batches) whatever the batch's padding.
        x = torch.nn.functional.pad(x, (0, 0, 0, c.unit_length))
        movements = self.movement_encoder(x)
        return self.motion_encoder(movements, lengths // c.unit_length)

    def encode_text_tokens(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Token embeddings [B, L, text_dim], mask [B, L] (True = valid, a prefix) -> [B, embed_dim]."""
        if tokens.dim() != 3 or tokens.shape[-1] != self.config.text_dim or mask.shape != tokens.shape[:2]:
            raise ConfigError(
                f"evaluator: expected text tokens [B, L, {self.config.text_dim}] and mask [B, L], "
                f"got {tuple(tokens.shape)} and {tuple(mask.shape)}"
            )
        lengths = mask.sum(1)
        if (lengths < 1).any():
            raise ConfigError("evaluator: every caption needs at least one valid token")
        return self.text_encoder(tokens, lengths)

    def encode_text(self, captions: list[str]) -> torch.Tensor:
        """Captions -> [B, embed_dim] through the frozen text encoder."""
        device = self.input_scale.device
        emb = self.text_model.encode(list(captions), device=device)
        return self.encode_text_tokens(emb.tokens, emb.mask)

    def text_inputs(self, captions: list[str], tokens: list[str]) -> list[str]:
        """What the text side reads per item: the caption, or, when the text encoder takes ``word/POS``
        tokens (the official T2M vectorizer, ``input_kind == "tokens"``), the caption's tokens where the
        dataset has them (``tokens[i]`` non-empty)."""
        if getattr(self.text_model, "input_kind", "caption") != "tokens":
            return list(captions)
        return [t or c for c, t in zip(captions, tokens)]

    def freeze(self) -> MotionTextEvaluator:
        """Eval mode (dropout off), no gradients; returns ``self``."""
        self.eval()
        self.requires_grad_(False)
        return self

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike = "default",
        *,
        text_encoder: Any | None = None,
        map_location: str | torch.device = "cpu",
    ) -> MotionTextEvaluator:
        """Load an easytune evaluator checkpoint, frozen (``"default"``: the embedded
        ``easytune/assets/evaluator.pt``)."""
        path = resolve_checkpoint(path, "evaluator.pt", "evaluator")
        ckpt = load_checkpoint(path, map_location)
        if "config" not in ckpt or not isinstance(ckpt.get("state_dict"), dict):
            raise CheckpointError(
                f"{path}: not an easytune evaluator checkpoint (needs 'state_dict' and 'config'); "
                "official T2M weights load with MotionTextEvaluator.from_t2m_official"
            )
        model = cls(config_from_dict(EvaluatorConfig, dict(ckpt["config"]), f"{path}: config"), text_encoder)
        load_state_dict_strict(model, ckpt["state_dict"], str(path))
        return model.freeze()

    @classmethod
    def from_t2m_official(
        cls,
        path: str | os.PathLike,
        text_encoder: Any,
        *,
        dataset_mean: np.ndarray | None = None,
        dataset_std: np.ndarray | None = None,
        eval_mean: np.ndarray | None = None,
        eval_std: np.ndarray | None = None,
    ) -> MotionTextEvaluator:
        """Load the official T2M evaluator (``text_mot_match/model/finest.tar``: ``movement_encoder``,
        ``motion_encoder``, ``text_encoder``), frozen.

        ``text_encoder`` must give, per word, the 300-d GloVe vector followed by the 15-d POS one-hot
        (``token_dim`` 315) as the official word vectorizer does; the official ``pos_emb`` layer is folded
        into ``input_emb`` (``W_in (w + W_pos p + b_pos) + b_in`` is linear in ``[w, p]``). Pass the
        dataset's and the evaluator's Mean/Std to re-normalise motions
        (``x_eval = (x * std_d + mean_d - mean_e) / std_e``).
        """
        raw = load_checkpoint(path)
        try:
            move, mot, txt = (dict(raw[k]) for k in ("movement_encoder", "motion_encoder", "text_encoder"))
        except KeyError as err:
            raise CheckpointError(
                f"{path}: not an official T2M evaluator checkpoint (missing {err})"
            ) from err
        w_in, b_in = txt.pop("input_emb.weight"), txt.pop("input_emb.bias")
        w_pos, b_pos = txt.pop("pos_emb.weight"), txt.pop("pos_emb.bias")
        txt["input_emb.weight"] = torch.cat([w_in, w_in @ w_pos], dim=1)
        txt["input_emb.bias"] = b_in + w_in @ b_pos
        nfeats = move["main.0.weight"].shape[1] + 4
        config = EvaluatorConfig(
            nfeats=nfeats,
            move_hidden=move["main.0.weight"].shape[0],
            move_latent=move["main.3.weight"].shape[0],
            motion_hidden=mot["input_emb.weight"].shape[0],
            text_hidden=txt["input_emb.weight"].shape[0],
            embed_dim=mot["output_net.3.weight"].shape[0],
            text_dim=txt["input_emb.weight"].shape[1],
            text_encoder=getattr(text_encoder, "spec", "custom"),
        )
        model = cls(config, text_encoder)
        scale, shift = torch.ones(nfeats), torch.zeros(nfeats)
        stats = (dataset_mean, dataset_std, eval_mean, eval_std)
        if any(s is not None for s in stats):
            if any(s is None for s in stats):
                raise ConfigError(
                    "from_t2m_official: pass all four of dataset_mean/std and eval_mean/std, or none"
                )
            md, sd, me, se = (torch.as_tensor(np.asarray(s), dtype=torch.float32) for s in stats)
            scale, shift = sd / se, (md - me) / se
        sd_all = {
            **{f"movement_encoder.{k}": v for k, v in move.items()},
            **{f"motion_encoder.{k}": v for k, v in mot.items()},
            **{f"text_encoder.{k}": v for k, v in txt.items()},
            "input_scale": scale,
            "input_shift": shift,
        }
        load_state_dict_strict(model, sd_all, str(path))
        return model.freeze()


def build_evaluator(
    preset: str = "tiny", *, text_encoder: Any | None = None, **overrides: Any
) -> MotionTextEvaluator:
    """A fresh evaluator from a preset (``t2m``: official sizes, ``tiny``); ``text_encoder``: an encoder
    object or a spec string (default: the preset's spec); ``text_dim`` follows it."""
    if preset not in PRESETS:
        raise ConfigError(f"evaluator preset must be one of {sorted(PRESETS)}, got {preset!r}")
    from easytune.text import bind_text_encoder

    return MotionTextEvaluator(*bind_text_encoder(replace(PRESETS[preset], **overrides), text_encoder))


# Where ``t2m:<dir>`` finds the official files (the first that exists): the evaluator weights, T2M's
# ``glove`` folder, and the Mean/Std the evaluator normalises motions with (MDM ships them as
# ``dataset/t2m_mean.npy``; the T2M release as ``meta/mean.npy`` of its checkpoint folder).
T2M_LAYOUT: dict[str, tuple[str, ...]] = {
    "weights": ("t2m/text_mot_match/model/finest.tar", "text_mot_match/model/finest.tar", "finest.tar"),
    "glove": ("glove",),
    "mean": ("t2m_mean.npy", "t2m/meta/mean.npy", "meta/mean.npy"),
    "std": ("t2m_std.npy", "t2m/meta/std.npy", "meta/std.npy"),
}


def t2m_files(directory: str | os.PathLike) -> dict[str, str]:
    """The official T2M evaluator files under ``directory`` (``T2M_LAYOUT``); a missing one is named with
    the places looked at."""
    from pathlib import Path

    root = Path(directory)
    found, missing = {}, []
    for key, candidates in T2M_LAYOUT.items():
        hit = next((root / c for c in candidates if (root / c).exists()), None)
        if hit is None:
            missing.append(f"{key} ({' or '.join(candidates)})")
        else:
            found[key] = str(hit)
    if missing:
        raise ConfigError(f"t2m:{root}: missing {', '.join(missing)} under {root}")
    return found


def load_evaluator(
    spec: str, *, dataset_mean: Any = None, dataset_std: Any = None, device: str | torch.device = "cpu"
) -> MotionTextEvaluator:
    """The evaluator named by ``spec``: ``t2m:<dir>`` (the official T2M evaluator and its GloVe word
    vectorizer, ``t2m_files``; motions normalised with ``dataset_mean`` / ``dataset_std`` are re-normalised
    to its statistics), an easytune evaluator checkpoint, or ``default``. Frozen, on ``device``."""
    if spec.startswith("t2m:"):
        from easytune.text import build_text_encoder

        if dataset_mean is None or dataset_std is None:
            raise ConfigError(f"{spec}: the official evaluator needs the dataset's Mean/Std to re-normalise")
        files = t2m_files(spec[len("t2m:") :])
        stats = {}
        for key in ("mean", "std"):
            try:
                stats[key] = np.load(files[key], allow_pickle=False)
            except ValueError as err:
                raise CheckpointError(f"{files[key]}: not a plain .npy array ({err})") from None
        model = MotionTextEvaluator.from_t2m_official(
            files["weights"],
            build_text_encoder(f"t2m-glove:{files['glove']}"),
            dataset_mean=dataset_mean,
            dataset_std=dataset_std,
            eval_mean=stats["mean"],
            eval_std=stats["std"],
        )
    else:
        model = MotionTextEvaluator.from_checkpoint(spec)
    return model.to(device)
