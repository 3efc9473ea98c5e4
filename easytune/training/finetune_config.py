"""``FinetuneConfig``: what ``easytune finetune`` runs; its fields are the command's options.

The command line is generated from the fields (``easytune.config``); ``--config run.yaml`` sets fields from a
file (flags given override it) and every run writes its resolved ``config.yaml`` into its run directory.
No torch import here: the CLI builds its options from this module and ``easytune --help`` stays fast."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from easytune.config import check_int, flag_of, option
from easytune.config import check_number as _number
from easytune.errors import ConfigError
from easytune.methods import registry

PRECISIONS = ("fp32", "tf32", "bf16")
COMPILE_MODES = (None, "default", "reduce-overhead")  # easytune.trainer.COMPILE_MODES (tested equal)
LR_SCHEDULES = ("constant", "cosine")


@dataclass
class FinetuneConfig:
    """What ``finetune`` runs. Checkpoint arguments accept ``default`` (the embedded tiny models).
    ``method`` may be a spec (``draft-50``): its count goes into ``method_options``."""

    method: str = option(
        "easytune", "method name or spec NAME[-K] (easytune.methods.registry)", metavar="METHOD"
    )
    method_options: dict[str, Any] = option(
        help="the method's options (unset: its defaults)", default_factory=dict, cli=False
    )
    base: str = option(
        "default",
        "MLD / MDM checkpoint ('default': embedded tiny MLD, 'default-flow': its flow-matching twin)",
    )
    reward: str = option("default", "reward checkpoint ('default': embedded SPL model)")
    data: str | None = option(None, "dataset folder for prompts (unset: the base model's)")
    out: str = option("runs/finetune", "run directory")
    steps: int = option(100, "trajectories")
    batch_size: int = option(8, "prompts per trajectory")
    lr: float = option(1e-5, "peak learning rate")
    warmup: int = option(10, "linear LR warm-up in trajectories, the same for every method")
    lr_schedule: str = option(
        "constant", "after warm-up: constant, or cosine decay to 0 at --steps", choices=LR_SCHEDULES
    )
    weight_decay: float = option(0.0, "AdamW weight decay")
    max_grad_norm: float | None = option(1.0, "gradient clipping norm (<= 0 or unset: no clipping)")
    guidance_scale: float | None = option(None, "CFG scale (unset: the checkpoint's)", flag="--guidance")
    num_inference_steps: int = option(50, "DDIM steps per trajectory", flag="--inference-steps")
    reward_weight: float = option(1.0, "scale of the reward loss")
    reward_terms: tuple[str, ...] = option(
        help="a reward term NAME[:WEIGHT], repeatable: spl (the --reward model), foot_skate, penetration, "
        "floating, jitter (motion-quality rewards, easytune.rewards); e.g. --reward-term spl "
        "--reward-term foot_skate:0.5 (default: spl)",
        default_factory=lambda: ("spl",),
        flag="--reward-term",
        metavar="TERM",
    )
    precision: str = option(
        "fp32",
        "fp32 | tf32 (TF32 matmuls on CUDA) | bf16 (autocast of denoiser, VAE "
        "and reward model; reward, loss and optimizer state in fp32)",
        choices=PRECISIONS,
    )
    compile: str | None = option(
        None,
        "torch.compile the denoiser (no-grad and gradient steps separately); "
        "reduce-overhead: CUDA graphs for the no-grad steps",
        choices=tuple(m for m in COMPILE_MODES if m),
    )
    checkpoint_frozen: bool = option(
        False, "activation checkpointing in the frozen VAE decoder and reward model (less memory)"
    )
    frame_layout: str = option(
        "auto",
        "frames in the frozen VAE decoder and reward model: padded, or packed (valid frames only: "
        "fewer GEMM rows); auto: the one measured faster on the device type (docs/bench.md)",
        choices=("auto", "padded", "packed"),
    )
    ema: float | None = option(None, "keep an EMA of the weights with this decay", metavar="DECAY")
    lora_rank: int | None = option(None, "train LoRA adapters of this rank only (unset: full fine-tuning)")
    lora_alpha: float = option(16.0, "LoRA scale numerator")
    reg_weight: float = option(0.0, "pull toward the pretrained weights (against reward hacking)")
    evaluator: str | None = option(None, "evaluator checkpoint for periodic evaluation")
    eval_every: int = option(0, "evaluate every N trajectories (needs --evaluator; 0: never)")
    eval_samples: int = option(64, "prompts per periodic evaluation")
    sample_prompts: int = option(
        2, "prompts sampled into RUN_DIR/samples (GIF) and TensorBoard at each evaluation (0: none)"
    )
    ckpt_every: int = option(50, "write last.pt every N trajectories (0: at the end only)")
    time_budget: float | None = option(None, "stop after this many seconds", metavar="SECONDS")
    seed: int = option(0, "seed of prompts, noise and method draws")
    device: str = option("auto", "auto | cpu | cuda | cuda:N (auto: CUDA when available, else the CPU)")
    resume: bool = option(False, "continue RUN_DIR/last.pt exactly", saved=False)
    overwrite: bool = option(False, "replace a previous run in RUN_DIR", saved=False)
    allow_changed: tuple[str, ...] = option(
        help="with --resume: let this option differ from the saved run, logged (its name without the "
        "dashes: --allow-changed lr)",
        default_factory=tuple,
        metavar="OPTION",
        saved=False,
    )
    progress: bool = option(True, "progress bar", saved=False)
    wandb: str | None = option(
        None, "also log to this Weights & Biases project (WANDB_MODE=offline: no network)", metavar="PROJECT"
    )
    skip_data_check: bool = option(
        False,
        "do not read every clip before the first step (data checked with `easytune data check`)",
        saved=False,
    )

    def __post_init__(self) -> None:
        self.method_options = dict(self.method_options)
        name, count = registry.parse_spec(self.method)
        if count is not None:
            arg = registry.info(name).count
            given = self.method_options.get(arg)
            if given is not None and given != count:
                raise ConfigError(
                    f"--method {self.method} sets --{arg} {count}, but --{arg} {given} is given"
                )
            self.method_options[arg] = count
        self.method = name
        if isinstance(self.max_grad_norm, (int, float)) and self.max_grad_norm <= 0:
            self.max_grad_norm = None  # <= 0: no clipping (NaN stays and is refused below)
        self.allow_changed = tuple(self.allow_changed)
        self.reward_terms = tuple(self.reward_terms)
        self.validate()

    def parsed_reward_terms(self) -> list[tuple[str, float]]:
        """``reward_terms`` as (name, weight), checked."""
        return _parse_terms(tuple(self.reward_terms))

    def validate(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError(f"--steps and --batch-size must be >= 1, got {self.steps}, {self.batch_size}")
        if self.warmup < 0:
            raise ConfigError(f"--warmup must be >= 0 trajectories, got {self.warmup}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"--lr-schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        _number("--lr", self.lr, low=0.0, low_open=True)
        _check_method_options(self.method, self.method_options)
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
            ("--eval-samples", self.eval_samples, 1),
            ("--sample-prompts", self.sample_prompts, 0),
            ("--inference-steps", self.num_inference_steps, 1),
        ):
            check_int(name, value, low)
        if self.eval_every and not self.evaluator:
            raise ConfigError(
                f"--eval-every {self.eval_every} needs --evaluator CKPT (what to evaluate with)"
            )
        self.parsed_reward_terms()
        unknown = [o for o in self.allow_changed if field_of(o) is None]
        if unknown:
            raise ConfigError(
                f"--allow-changed: {unknown} are not options a resume compares; choose among "
                f"{sorted(flag(k) for k in RESUME_CHECKED)}"
            )


REWARD_TERMS = ("spl", "foot_skate", "penetration", "floating", "jitter")  # easytune.rewards.QUALITY + spl


def _parse_terms(texts: tuple[str, ...]) -> list[tuple[str, float]]:
    from easytune.rewards import parse_term

    terms = [parse_term(t) for t in texts]
    names = [n for n, _ in terms]
    bad = [n for n in names if n not in REWARD_TERMS]
    if bad or not terms or len(set(names)) != len(names):
        raise ConfigError(
            f"--reward-term: {list(texts)}: each of {list(REWARD_TERMS)} at most once, at least one term"
        )
    return terms


def _check_method_options(method: str, options: dict[str, Any]) -> None:
    """Names, types and choices of the method's options, from the registry; then their ranges, by building
    the method."""
    entry = registry.info(method)
    accepted = {o.name: o for o in entry.options}
    for key, value in options.items():
        if value is None:
            continue
        if key not in accepted:
            flags = ", ".join(f"--{a}" for a in accepted)
            raise ConfigError(f"--{key} does not apply to --method {entry.name} (it takes {flags})")
        opt = accepted[key]
        ok = isinstance(value, opt.type) and not isinstance(value, bool)
        if opt.type is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok:
            raise ConfigError(f"--{key} of --method {entry.name} must be {opt.type.__name__}, got {value!r}")
        if opt.choices and value not in opt.choices:
            raise ConfigError(f"--{key} of --method {entry.name} must be one of {opt.choices}, got {value!r}")
    try:  # the ranges: the method's constructor (a small object), before the run writes anything
        registry.build(method, **options)
    except ConfigError as err:
        raise ConfigError(f"--method {entry.name}: {err}") from None


# Options a --resume compares with the saved run (anything else may change: --steps, --out, --device, when to
# checkpoint, evaluate or stop, and what is shown). --allow-changed NAME lets one of them change, logged.
RESUME_CHECKED = (
    "method", "method_options", "base", "reward", "data", "batch_size", "lr", "warmup", "lr_schedule",
    "weight_decay", "max_grad_norm", "guidance_scale", "num_inference_steps", "reward_weight", "reward_terms",
    "precision",
    "checkpoint_frozen", "frame_layout", "ema", "lora_rank", "lora_alpha", "reg_weight", "seed",
)  # fmt: skip


def flag(field_name: str) -> str:
    """The ``easytune finetune`` flag of a ``FinetuneConfig`` field."""
    return flag_of(next(f for f in fields(FinetuneConfig) if f.name == field_name))


def field_of(option: str) -> str | None:
    """The field a flag (``--inference-steps``) or field name (``num_inference_steps``) names, or None."""
    text = option.strip()
    for name in RESUME_CHECKED:
        if text in (name, flag(name), flag(name).lstrip("-")):
            return name
    return None
