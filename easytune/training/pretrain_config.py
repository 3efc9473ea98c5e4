"""``PretrainOptions``: what ``easytune pretrain {vae,mld,mdm}`` runs; its fields are the command's options.

Unset fields take the preset's ``train[stage]`` values when the run starts (``TRAIN_KEYS``, recorded in the
checkpoint's ``meta["train"]``). No torch import here: the CLI builds its options from this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from easytune.config import check_int, check_number, option
from easytune.errors import ConfigError

STAGES = ("vae", "mld", "mdm")
# The model preset of each stage when --preset is unset.
DEFAULT_PRESET = {"vae": "tiny", "mld": "tiny", "mdm": "mdm-tiny"}
# Options that default to the preset's ``train[stage]`` values and are recorded in ``meta["train"]``.
TRAIN_KEYS = ("steps", "batch_size", "lr", "warmup", "ema", "rec_loss", "kl_weight", "joints_weight")
# VAE loss settings a preset may leave out: MotionLCM's (smooth-L1 features + joints + 1e-4 KL).
VAE_LOSS_DEFAULTS: dict[str, Any] = {"rec_loss": "smooth_l1", "kl_weight": 1e-4, "joints_weight": 1.0}
REC_LOSSES = ("smooth_l1", "mse")
# Options only some stages take (the command line of the others does not offer them).
STAGE_ONLY = {
    "vae": ("mld",),
    "rec_loss": ("vae",),
    "kl_weight": ("vae",),
    "joints_weight": ("vae",),
    "objective": ("mld",),  # MDM's timestep table takes integer timesteps, a flow's are real
}
OBJECTIVES = ("diffusion", "flow")


@dataclass
class PretrainOptions:
    """What ``pretrain`` runs. ``None`` fields take the preset's defaults (``preset['train'][stage]``).

    VAE loss: ``rec_loss`` (``smooth_l1`` or ``mse`` on the normalised features, valid frames), plus
    ``joints_weight`` x smooth-L1 on joint positions recovered from the features, plus ``kl_weight`` x KL;
    unset in the preset too, they are ``VAE_LOSS_DEFAULTS``.

    ``resume``: a training checkpoint to continue from (its config wins over ``preset`` / ``text_encoder``).
    ``vae``: the VAE (or MLD) checkpoint whose frozen VAE the ``mld`` stage trains on.
    """

    stage: str = option(help="vae | mld | mdm", cli=False)
    data: str = option(help="dataset folder", cli=False)
    out: str = option(help="checkpoint to write", cli=False)
    preset: str | None = option(None, "model preset (unset: tiny; mdm: mdm-tiny; see docs/models.md)")
    steps: int | None = option(None, "optimizer steps (unset: the preset's)")
    batch_size: int | None = option(None, "batch size (unset: the preset's)")
    lr: float | None = option(None, "AdamW learning rate (unset: the preset's)")
    warmup: int | None = option(None, "linear LR warm-up steps, then cosine decay (unset: the preset's)")
    ema: float | None = option(
        None,
        "keep an EMA of the trained weights with this decay, e.g. 0.999; samples use it",
        metavar="DECAY",
    )
    ckpt_every: int = option(500, "checkpoint period in steps")
    resume: str | None = option(None, "training checkpoint to continue", cli=False, saved=False)
    seed: int = option(0, "seed of the model, batches, noise and condition dropout")
    text_encoder: str | None = option(
        None,
        "text encoder spec (unset: the preset's, e.g. builtin:token_dim=64,sentence_dim=128)",
        metavar="SPEC",
    )
    vae: str | None = option(
        None, "VAE checkpoint (from `easytune pretrain vae`, or an MLD / MotionLCM one)", metavar="CKPT"
    )
    objective: str | None = option(
        None,
        "denoiser objective (unset: diffusion): diffusion (the preset's DDPM noising and prediction type) "
        "| flow (flow matching: x_t = (1 - s) x0 + s eps, velocity targets, sampled with "
        "FlowMatchEulerDiscreteScheduler)",
        choices=OBJECTIVES,
    )
    device: str = option("cpu", "device", cli=False)
    cond_drop: float = option(0.1, "condition dropout for classifier-free guidance")
    rec_loss: str | None = option(
        None, "feature reconstruction loss (unset: the preset's, else smooth_l1)", choices=REC_LOSSES
    )
    kl_weight: float | None = option(None, "weight of the KL term (unset: the preset's, else 1e-4)")
    joints_weight: float | None = option(
        None, "weight of the joint-position loss (unset: the preset's, else 1.0)"
    )
    max_grad_norm: float = option(1.0, "gradient clipping norm")
    log_every: int = option(100, "log the mean losses every N steps")
    show_progress: bool = option(True, "progress bar", cli=False, saved=False)
    overwrite: bool = option(False, "replace an existing --out", cli=False, saved=False)
    skip_data_check: bool = option(False, "skip the data check", cli=False, saved=False)
    wandb: str | None = option(None, "Weights & Biases project", cli=False, saved=False)

    def __post_init__(self) -> None:
        """Every value checked, named as its flag; ``preset`` resolved from the stage."""
        if self.stage not in STAGES:
            raise ConfigError(f"pretrain stage must be one of {STAGES}, got {self.stage!r}")
        if self.preset is None:
            self.preset = DEFAULT_PRESET[self.stage]
        if self.stage == "mld" and self.vae is None and self.resume is None:
            raise ConfigError(
                "pretrain mld needs --vae CKPT (a VAE from `easytune pretrain vae`, or an MLD checkpoint)"
            )
        for name, stages in STAGE_ONLY.items():
            if getattr(self, name) is not None and self.stage not in stages:
                flag, where = "--" + name.replace("_", "-"), " / ".join(stages)
                raise ConfigError(f"{flag} only applies to the {where} stage, not {self.stage!r}")
        for name in ("steps", "batch_size", "ckpt_every", "log_every"):
            value = getattr(self, name)
            if value is not None:
                check_int(f"--{name.replace('_', '-')}", value, 1)
        if self.warmup is not None:
            check_int("--warmup", self.warmup, 0)
        check_int("--seed", self.seed, 0)
        if self.lr is not None:
            check_number("--lr", self.lr, low=0, low_open=True)
        check_number("--max-grad-norm", self.max_grad_norm, low=0, low_open=True)
        check_number("--cond-drop", self.cond_drop, low=0, high=1, high_open=True)
        if self.ema is not None:
            check_number("--ema", self.ema, low=0, high=1, low_open=True, high_open=True, what="(a decay)")
        if self.objective is not None and self.objective not in OBJECTIVES:
            raise ConfigError(f"--objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.rec_loss is not None and self.rec_loss not in REC_LOSSES:
            raise ConfigError(f"--rec-loss must be one of {REC_LOSSES}, got {self.rec_loss!r}")
        for name in ("kl_weight", "joints_weight"):
            if getattr(self, name) is not None:
                check_number(f"--{name.replace('_', '-')}", getattr(self, name), low=0)
