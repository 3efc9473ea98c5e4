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
    overwrite: bool = False
    allow_changed: tuple[str, ...] = ()
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
        _number("--reg-weight", self.reg_weight, low=0.0)
        _number("--weight-decay", self.weight_decay, low=0.0)
        _number("--reward-weight", self.reward_weight, low=0.0, low_open=True)
        _number("--lora-alpha", self.lora_alpha, low=0.0, low_open=True)
        if self.time_budget is not None:
            _number("--time-budget", self.time_budget, low=0.0, low_open=True, what="seconds")
        if self.max_grad_norm is not None:
            _number(
                "--max-grad-norm", self.max_grad_norm, low=0.0, low_open=True, what="(unset: no clipping)"
            )
        if self.guidance_scale is not None:
            _number("--guidance", self.guidance_scale, low=0.0)
        if self.ema is not None:
            _number("--ema", self.ema, low=0.0, high=1.0, low_open=True, high_open=True, what="decay")
        if self.lora_rank is not None and (isinstance(self.lora_rank, bool) or self.lora_rank < 1):
            raise ConfigError(
                f"--lora-rank must be an integer >= 1 (unset: full fine-tuning), got {self.lora_rank}"
            )
        for name, value, low in (
            ("--ckpt-every", self.ckpt_every, 0),
            ("--eval-every", self.eval_every, 0),
            ("--inference-steps", self.num_inference_steps, 1),
        ):
            if value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value}")
        unknown = [o for o in self.allow_changed if field_of(o) is None]
        if unknown:
            raise ConfigError(
                f"--allow-changed: {unknown} are not options a resume compares; choose among "
                f"{sorted(flag(k) for k in RESUME_CHECKED)}"
            )


# Options a --resume compares with the saved run (anything else may change: --steps, --out, --device, when to
# checkpoint, evaluate or stop, and what is shown). --allow-changed NAME lets one of them change, logged.
RESUME_CHECKED = (
    "method", "method_options", "base", "reward", "data", "batch_size", "lr", "warmup", "lr_schedule",
    "weight_decay", "max_grad_norm", "guidance_scale", "num_inference_steps", "reward_weight", "precision",
    "checkpoint_frozen", "ema", "lora_rank", "lora_alpha", "reg_weight", "seed",
)  # fmt: skip


# Command-line flags whose name is not the field's (``--`` + the field with dashes otherwise).
FLAGS = {"num_inference_steps": "--inference-steps", "guidance_scale": "--guidance"}


def flag(field_name: str) -> str:
    """The ``easytune finetune`` flag of a ``FinetuneConfig`` field."""
    return FLAGS.get(field_name, "--" + field_name.replace("_", "-"))


def field_of(option: str) -> str | None:
    """The field a flag (``--inference-steps``) or field name (``num_inference_steps``) names, or None."""
    text = option.strip()
    for name in RESUME_CHECKED:
        if text in (name, flag(name), flag(name).lstrip("-")):
            return name
    return None


def _number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    what: str = "",
) -> None:
    """Refuse a non-number, NaN, inf or a value outside the range, naming the option and the range."""
    lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
    hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
    accepted = f"{lo or '(-inf'}, {hi or 'inf)'}"
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise ConfigError(
            f"{name} must be a finite number in {accepted}{' ' + what if what else ''}, got {value!r}"
        )
