"""``RewardTrainConfig``: what ``easytune reward train`` / ``refine`` run; its fields are their options.

The command line is generated from the fields (``easytune.config``; ``--config run.yaml`` sets fields from a
file, flags given override it). Unset ``steps`` / ``batch_size`` / ``lr`` take the preset's
``STAGE1_DEFAULTS`` when the config is built; ``refine`` starts from ``REFINE_DEFAULTS`` plus the values
``REFINE_INHERITED`` from its stage-1 checkpoint. No torch import here: ``easytune --help`` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from easytune.config import check_int, check_number, fill_from_preset, option
from easytune.errors import ConfigError

# The forward diffusion of the noise augmentation (the reward model sees q(x_t | x_0) of this schedule).
NOISE_SCHEDULE = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
)
MODES = ("M0T0", "M1T0", "M0T1", "M1T1")
# Stage-1 defaults per preset: ``paper`` is the reference recipe (lr 1e-4, batch 64, ~500 epochs of
# HumanML3D); ``tiny`` is the CPU recipe (a few minutes): a larger learning rate for a short run.
STAGE1_DEFAULTS: dict[str, dict[str, Any]] = {
    "paper": {"lr": 1e-4, "batch_size": 64, "steps": 180_000},
    "tiny": {"lr": 5e-4, "batch_size": 32, "steps": 300},
}
# Stage-2 (SPL refinement) defaults: a short, gentle continuation of the stage-1 model; the noise options,
# the preset and the batch size are inherited from the stage-1 checkpoint (``REFINE_INHERITED``).
REFINE_DEFAULTS: dict[str, Any] = {"steps": 150, "lr": 1e-5, "spl_weight": 1e-2, "spl_topk": 10}
REFINE_INHERITED = ("noise_prob", "max_t", "sample_scale", "preset", "batch_size")
# What refine does not take (the architecture comes from its --init checkpoint), and what train does not.
REFINE_ONLY = ("spl_weight", "spl_topk", "spl_high_sim", "spl_double_temperature")
TRAIN_ONLY = ("preset", "mode", "text_encoder")


@dataclass
class RewardTrainConfig:
    """Options of reward training (stage 1, or SPL with ``spl_weight`` > 0).

    ``filter_threshold``: InfoNCE negatives with caption cosine > ``2 * filter_threshold - 1`` are masked.
    SPL: ``spl_topk`` retrieval window; ``spl_high_sim`` (reference: 0.8) also counts a text as correctly
    retrieved when any similarity in its row exceeds it; ``spl_double_temperature`` divides by the
    temperature twice as the reference code does. ``sample_scale``: latents are
    ``mu + sample_scale * sigma * eps`` (TMR's ``fact``). ``bucket_pool``: batches of similar lengths
    (``training.loop.epoch_batches``; about 3x faster on CPU than random batches).
    """

    preset: str = option("tiny", "reward model preset", choices=tuple(STAGE1_DEFAULTS))
    mode: str = option(
        "M0T0",
        "time conditioning: M1 = motion encoder gets a timestep token, T1 = text encoder",
        choices=MODES,
    )
    text_encoder: str | None = option(None, "text encoder spec (unset: the preset's)", metavar="SPEC")
    steps: int | None = option(None, "optimizer steps (unset: the preset's, tiny 300, paper 180000)")
    batch_size: int | None = option(None, "batch size (unset: the preset's, tiny 32, paper 64)")
    lr: float | None = option(None, "AdamW learning rate (unset: the preset's, tiny 5e-4, paper 1e-4)")
    weight_decay: float = option(0.0, "AdamW weight decay")
    max_grad_norm: float | None = option(None, "gradient clipping norm (unset: none)")
    noise_prob: float = option(0.0, "probability of noising a training motion")
    max_t: int = option(500, "noise steps drawn from U{0..max_t}")
    temperature: float = option(0.1, "InfoNCE / SPL temperature")
    filter_threshold: float = option(0.9, "InfoNCE negatives whose captions are this similar are masked")
    sample_scale: float = option(1.0, "training latents mu + s * sigma * eps (1: the reference; 0: means)")
    lambda_recons: float = option(1.0, "weight of the reconstruction terms")
    lambda_kl: float = option(1e-5, "weight of the KL terms")
    lambda_latent: float = option(1e-5, "weight of the latent matching term")
    lambda_contrastive: float = option(0.1, "weight of the InfoNCE term")
    spl_weight: float = option(0.0, "weight of the SPL term (0: a plain continuation, the control run)")
    spl_topk: int = option(10, "SPL retrieval window")
    spl_high_sim: float | None = option(
        None, "reference-code variant: a row similarity above this also counts as retrieved (reference 0.8)"
    )
    spl_double_temperature: bool = option(
        False, "reference-code variant: divide the similarities by the temperature twice"
    )
    bucket_pool: int = option(8, "length buckets of this many batches (0: plain random batches)")
    seed: int = option(0, "seed of the model, batches and noise")
    log_every: int = option(50, "log the mean losses every N steps")
    ckpt_every: int = option(250, "rewrite the checkpoint every N steps")

    def __post_init__(self) -> None:
        """Unset sizes from the preset; every value checked, named as its flag, with the accepted range."""
        try:
            fill_from_preset(self, STAGE1_DEFAULTS, ("steps", "batch_size", "lr"))
            if self.mode not in MODES:
                raise ConfigError(f"--mode must be one of {MODES}, got {self.mode!r}")
            for name, low, what in (
                ("steps", 1, ""),
                ("batch_size", 2, "(the contrastive loss needs negatives)"),
                ("spl_topk", 1, ""),
                ("bucket_pool", 0, ""),
                ("log_every", 1, ""),
                ("ckpt_every", 1, ""),
                ("seed", 0, ""),
            ):
                check_int(_flag(name), getattr(self, name), low, what)
            check_int("--max-t", self.max_t, 0)
            check_number("--max-t", self.max_t, high=NOISE_SCHEDULE["num_train_timesteps"] - 1)
            for name, low_open in (
                ("lr", True),
                ("temperature", True),
                ("weight_decay", False),
                ("sample_scale", False),
                ("lambda_recons", False),
                ("lambda_kl", False),
                ("lambda_latent", False),
                ("lambda_contrastive", False),
                ("spl_weight", False),
            ):
                check_number(_flag(name), getattr(self, name), low=0, low_open=low_open)
            check_number("--noise-prob", self.noise_prob, low=0, high=1)
            check_number("--filter-threshold", self.filter_threshold, low=0, high=1)
            if self.max_grad_norm is not None:
                check_number("--max-grad-norm", self.max_grad_norm, low=0, low_open=True, what="(or unset)")
            if self.spl_high_sim is not None:
                check_number("--spl-high-sim", self.spl_high_sim, low=-1, high=1, what="(unset: off)")
        except ConfigError as err:
            raise ConfigError(f"reward training: {err}") from None


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")
