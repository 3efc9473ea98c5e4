"""``FinetuneConfig``: what ``easytune finetune`` runs, with its defaults.

No torch import here: the CLI reads the defaults to build its options and ``easytune --help`` stays fast."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from easytune.errors import ConfigError

PRECISIONS = ("fp32", "tf32", "bf16")
COMPILE_MODES = (None, "default", "reduce-overhead")  # easytune.trainer.COMPILE_MODES (tested equal)
# --method names, in the order of the docs table; easytune.training.finetune.METHODS maps them to classes.
METHOD_NAMES = ("easytune", "draft", "draft-lv", "refl", "drtune", "alignprop")
LR_SCHEDULES = ("constant", "cosine")


@dataclass
class FinetuneConfig:
    """What ``finetune`` runs. Checkpoint arguments accept ``default`` (the embedded tiny models)."""

    method: str = "easytune"
    method_options: dict[str, Any] = field(default_factory=dict)
    base: str = "default"
    reward: str = "default"
    data: str | None = None
    out: str = "runs/finetune"
    steps: int = 100
    batch_size: int = 8
    lr: float = 1e-5
    warmup: int = 10
    lr_schedule: str = "constant"
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    guidance_scale: float | None = None
    num_inference_steps: int = 50
    reward_weight: float = 1.0
    precision: str = "fp32"
    compile: str | None = None
    checkpoint_frozen: bool = False
    ema: float | None = None
    lora_rank: int | None = None
    lora_alpha: float = 16.0
    reg_weight: float = 0.0
    eval_every: int = 0
    ckpt_every: int = 50
    time_budget: float | None = None
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    progress: bool = True

    def validate(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError(f"--steps and --batch-size must be >= 1, got {self.steps}, {self.batch_size}")
        if self.warmup < 0:
            raise ConfigError(f"--warmup must be >= 0 trajectories, got {self.warmup}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"--lr-schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"--lr must be a finite number > 0, got {self.lr}")
        from easytune.training.finetune import build_method  # (imports torch: only when validating)

        build_method(self.method, **self.method_options)  # unknown method / inapplicable option: refused
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.compile not in COMPILE_MODES:
            raise ConfigError(f"--compile must be one of {COMPILE_MODES[1:]} or unset, got {self.compile!r}")
        if self.reg_weight < 0:
            raise ConfigError(f"--reg-weight must be >= 0, got {self.reg_weight}")
        if self.time_budget is not None and self.time_budget <= 0:
            raise ConfigError(f"--time-budget must be > 0 seconds, got {self.time_budget}")
