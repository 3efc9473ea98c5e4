"""The word vectorizer of the official T2M evaluator (Guo et al. 2022): ``t2m-glove:<dir>`` text encoder.

``<dir>`` holds the files of T2M's ``glove`` download: ``our_vab_data.npy`` (float [V, 300] word vectors),
``our_vab_words.pkl`` (the V words, a list) and ``our_vab_idx.pkl`` (word -> row, a dict). The ``.pkl``
files are read with ``easytune.checkpoint.load_plain_pickle`` (plain data only: a pickle that would import
anything is refused, never ``pickle.load``).

Input: a caption's HumanML3D tokens, ``"word/POS word/POS ..."`` (the second field of ``texts/*.txt``; the
evaluation passes them when the dataset has them). Per token, as the official vectorizer does:
- a word in the vocabulary gets its vector; its POS one-hot is its VIP category when the word is in one of
  the VIP lists (``VIP``: location, body part, object, action, manner words), else its tag (a tag outside
  ``POS`` counts as ``OTHER``);
- a word outside the vocabulary gets the ``unk`` vector and ``OTHER``.
The sequence is ``sos/OTHER``, the first ``MAX_TEXT_LEN`` (20) tokens, ``eos/OTHER``; the official code pads
with ``unk/OTHER`` up to 22, which the GRU never reads (it stops at the length): the mask says the length
here. A token is the 300-d word vector followed by the 15-d POS one-hot (``token_dim`` 315, what
``MotionTextEvaluator.from_t2m_official`` takes); the sentence embedding is the mean word vector.

A plain caption (no ``/``) is split into lower-case words, all tagged ``OTHER`` except the VIP words: close
to, not the same as, the official features (it has no POS tagger); a warning says so once.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from easytune.errors import CheckpointError, ConfigError
from easytune.text import TextEncoder, tokenize_words

log = logging.getLogger("easytune.text")

POS = ("VERB", "NOUN", "DET", "ADP", "NUM", "AUX", "PRON", "ADJ", "ADV",
       "Loc_VIP", "Body_VIP", "Obj_VIP", "Act_VIP", "Desc_VIP", "OTHER")  # fmt: skip


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# The official vectorizer's VIP lists, checked in this order (a word's first category wins).
VIP: dict[str, frozenset[str]] = {
    "Loc_VIP": _words("left right clockwise counterclockwise anticlockwise forward back backward up down "
                      "straight curve"),
    "Body_VIP": _words("arm chin foot feet face hand mouth leg waist eye knee shoulder thigh"),
    "Obj_VIP": _words("stair dumbbell chair window floor car ball handrail baseball basketball"),
    "Act_VIP": _words("walk run swing pick bring kick put squat throw hop dance jump turn stumble stop sit "
                      "lift lower raise wash stand kneel stroll rub bend balance flap jog shuffle lean "
                      "rotate spin spread climb"),
    "Desc_VIP": _words("slowly carefully fast careful slow quickly happy angry sad happily angrily "
                       "sadly"),
}  # fmt: skip
MAX_TEXT_LEN = 20
FILES = ("our_vab_data.npy", "our_vab_words.pkl", "our_vab_idx.pkl")


def read_glove_dir(directory: str | os.PathLike) -> tuple[np.ndarray, dict[str, int]]:
    """(vectors float32 [V, D], word -> row) of a T2M ``glove`` folder, every file and entry checked."""
    root = Path(directory)
    missing = [name for name in FILES if not (root / name).is_file()]
    if missing:
        raise ConfigError(f"t2m-glove:{root}: missing {missing} (T2M's glove download: {list(FILES)})")
    from easytune.checkpoint import load_plain_pickle

    try:
        vectors = np.load(root / FILES[0], allow_pickle=False)
    except ValueError as err:
        raise CheckpointError(f"{root / FILES[0]}: not a plain .npy array ({err})") from None
    words = load_plain_pickle(root / FILES[1], "a list of words")
    index = load_plain_pickle(root / FILES[2], "a dict word -> row of our_vab_data.npy")
    if vectors.ndim != 2 or vectors.dtype.kind != "f":
        raise CheckpointError(
            f"{root / FILES[0]}: expected float word vectors [V, D], got {vectors.dtype} {vectors.shape}"
        )
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise CheckpointError(f"{root / FILES[1]}: expected a list of words (str)")
    if not isinstance(index, dict) or not all(
        isinstance(k, str) and type(v) is int for k, v in index.items()
    ):
        raise CheckpointError(f"{root / FILES[2]}: expected a dict word (str) -> row (int)")
    bad = [w for w in words if not 0 <= index.get(w, -1) < len(vectors)]
    if bad:
        raise CheckpointError(f"{root}: words without a row of {FILES[0]} ({len(vectors)} rows): {bad[:5]}")
    for needed in ("unk", "sos", "eos"):
        if needed not in words:
            raise CheckpointError(
                f"{root / FILES[1]}: the vocabulary has no {needed!r} (the T2M vectorizer needs it)"
            )
    return vectors.astype(np.float32), {w: index[w] for w in words}


def pos_one_hot(word: str, tag: str) -> np.ndarray:
    """The official POS one-hot [15] of a vocabulary word: its VIP category, else its tag (else OTHER)."""
    category = next((name for name, words in VIP.items() if word in words), tag)
    out = np.zeros(len(POS), dtype=np.float32)
    out[POS.index(category) if category in POS else POS.index("OTHER")] = 1.0
    return out


def t2m_tokens(text: str) -> list[tuple[str, str]]:
    """(word, tag) pairs of a caption's ``word/POS`` tokens (cropped to ``MAX_TEXT_LEN``) between sos and
    eos; a plain caption's words are tagged OTHER."""
    if "/" in text:
        pairs = []
        for token in text.split():
            word, sep, tag = token.rpartition("/")
            if not sep or not word:
                raise ConfigError(f"t2m-glove: token {token!r} of {text!r:.80} is not of the form word/POS")
            pairs.append((word, tag))
    else:
        pairs = [(w, "OTHER") for w in tokenize_words(text)]
    return [("sos", "OTHER"), *pairs[:MAX_TEXT_LEN], ("eos", "OTHER")]


class T2MGloveEncoder(TextEncoder):
    """``t2m-glove:<dir>``: the official T2M word vectorizer (see the module docstring)."""

    input_kind = "tokens"  # the evaluation passes the dataset's word/POS tokens when it has them

    def __init__(self, directory: str | os.PathLike, **kw: Any) -> None:
        super().__init__(**kw)
        self.directory = Path(directory)
        self.vectors, self.index = read_glove_dir(self.directory)
        self.spec = f"t2m-glove:{self.directory}"
        self.token_dim = self.vectors.shape[1] + len(POS)
        self.sentence_dim = self.vectors.shape[1]
        self._warned = False

    def features(self, text: str) -> np.ndarray:
        """[L, 315]: per token its word vector and POS one-hot (``t2m_tokens``)."""
        rows = []
        for word, tag in t2m_tokens(text):
            if word in self.index:
                rows.append(np.concatenate([self.vectors[self.index[word]], pos_one_hot(word, tag)]))
            else:
                rows.append(np.concatenate([self.vectors[self.index["unk"]], pos_one_hot("unk", "OTHER")]))
        return np.stack(rows)

    def _encode_uncached(self, captions: list[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if not self._warned and any("/" not in c for c in captions):
            log.warning(
                "%s: captions without word/POS tokens are tagged OTHER (no POS tagger): close to, not the "
                "same as, the official T2M features; evaluate on a dataset whose texts carry tokens",
                self.spec,
            )
            self._warned = True
        out = []
        for caption in captions:
            feats = torch.from_numpy(self.features(caption))
            out.append(
                (
                    feats,
                    feats[1:-1, : self.sentence_dim].mean(0)
                    if len(feats) > 2
                    else feats[0, : self.sentence_dim],
                )
            )
        return out
