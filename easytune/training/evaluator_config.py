"""``EvaluatorTrainConfig``: what ``easytune evaluator train`` runs; its fields are the command's options.

Unset ``steps`` / ``lr`` take the preset's ``EVALUATOR_DEFAULTS`` when the config is built. No torch import
here: the CLI builds its options from this module (``easytune.config``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from easytune.config import check_int, check_number, fill_from_preset, option
from easytune.errors import ConfigError

# Defaults per preset: ``tiny`` is the CPU recipe (minutes); ``t2m`` uses the official learning rate and
# batch size (the official schedule trains by epochs with early stopping on a validation split).
EVALUATOR_DEFAULTS: dict[str, dict[str, Any]] = {
    "tiny": {"lr": 5e-4, "steps": 1000},
    "t2m": {"lr": 1e-4, "steps": 20_000},
}


@dataclass
class EvaluatorTrainConfig:
    """Options of evaluator training (margin contrastive loss, ``easytune.training.evaluator``)."""

    preset: str = option("tiny", "evaluator preset", choices=tuple(EVALUATOR_DEFAULTS))
    text_encoder: str | None = option(None, "text encoder spec (unset: the preset's)", metavar="SPEC")
    steps: int | None = option(None, "optimizer steps (unset: the preset's, tiny 1000, t2m 20000)")
    batch_size: int = option(32, "batch size")
    lr: float | None = option(None, "Adam learning rate (unset: the preset's, tiny 5e-4, t2m 1e-4)")
    margin: float = option(10.0, "negatives are pushed beyond this distance")
    filter_threshold: float | None = option(
        0.9, "negatives whose captions are this similar are not used (unset: all are)"
    )
    max_grad_norm: float | None = option(1.0, "gradient clipping norm (unset: none)")
    bucket_pool: int = option(8, "length buckets of this many batches (0: plain random batches)")
    seed: int = option(0, "seed of the model and batches")
    log_every: int = option(50, "log the mean loss every N steps")
    ckpt_every: int = option(250, "rewrite the checkpoint every N steps")

    def __post_init__(self) -> None:
        try:
            fill_from_preset(self, EVALUATOR_DEFAULTS, ("steps", "lr"))
            check_int("--steps", self.steps, 1)
            check_int("--batch-size", self.batch_size, 2, "(the loss needs negatives)")
            for name in ("bucket_pool", "seed"):
                check_int("--" + name.replace("_", "-"), getattr(self, name), 0)
            check_int("--log-every", self.log_every, 1)
            check_int("--ckpt-every", self.ckpt_every, 1)
            check_number("--lr", self.lr, low=0, low_open=True)
            check_number("--margin", self.margin, low=0, low_open=True)
            if self.filter_threshold is not None:
                check_number("--filter-threshold", self.filter_threshold, low=0, high=1, what="(or unset)")
            if self.max_grad_norm is not None:
                check_number("--max-grad-norm", self.max_grad_norm, low=0, low_open=True, what="(or unset)")
        except ConfigError as err:
            raise ConfigError(f"evaluator training: {err}") from None
