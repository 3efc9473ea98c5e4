"""``CompareConfig``: what ``easytune compare`` runs; its fields are the command's options.

No torch import here: the CLI builds its options from this module (``easytune.config``)."""

from __future__ import annotations

from dataclasses import dataclass

from easytune.config import check_int, check_number, option
from easytune.errors import ConfigError

# The paper's main table: EasyTune (step and chain), DRaFT-K, DRaFT-LV, ReFL, DRTune, AlignProp.
PAPER_METHODS = (
    "easytune-10,easytune-10:variant=chain,draft-1,draft-10,draft-50,draft-lv,refl,drtune,alignprop"
)


@dataclass
class CompareConfig:
    """Methods x seeds at an equal budget, each fine-tuned model evaluated on the same prompts and noise."""

    out: str = option("runs/compare", "folder for the runs, compare.json, compare.md and the plots")
    methods: str = option(
        PAPER_METHODS,
        "methods, comma-separated specs with optional :OPTION=VALUE (ablations: "
        "easytune-10:weighting=early, easytune-1 ... easytune-50)",
    )
    reference: str = option("draft-50", "method the paired differences are taken against (besides the base)")
    seeds: int = option(3, "training seeds per method (intervals need >= 2)")
    trajectories: int | None = option(None, "budget: trajectories per run (unset: --budget-s decides)")
    budget_s: float | None = option(None, "budget: training seconds per run (unset with --trajectories: 20)")
    base: str = option(
        "default", "MLD / MDM checkpoint ('default': embedded tiny MLD, 'default-flow': its flow twin)"
    )
    reward: str = option("default", "reward checkpoint ('default': the embedded SPL model)")
    evaluator: str = option("default", "evaluator checkpoint or t2m:DIR ('default': the embedded evaluator)")
    data: str | None = option(None, "dataset folder (unset: the cached synthetic set)")
    batch_size: int = option(8, "prompts per trajectory")
    lr: float = option(2e-5, "peak learning rate (the same for every method)")
    warmup: int = option(2, "linear LR warm-up in trajectories")
    inference_steps: int = option(50, "sampling steps per trajectory and per evaluated sample")
    eval_samples: int | None = option(None, "test prompts evaluated per run (unset: the whole test split)")
    eval_replications: int = option(1, "evaluation replications per run (each seed's runs share them)")
    time_levels: int = option(3, "reward levels of the time-to-reward table (between start and final reward)")
    device: str = option("auto", "auto | cpu | cuda | cuda:N (auto: CUDA when available)")
    plots: bool = option(True, "write reward_time.png and memory.png (needs matplotlib)")
    show_progress: bool = option(True, "progress bars", cli=False)

    def __post_init__(self) -> None:
        check_int("--seeds", self.seeds, 1)
        if self.trajectories is not None:
            check_int("--trajectories", self.trajectories, 1)
        if self.budget_s is not None:
            check_number("--budget-s", self.budget_s, low=0.0, low_open=True, what="seconds")
        if self.trajectories is not None and self.budget_s is not None:
            raise ConfigError("--trajectories and --budget-s are two budgets; give one")
        if self.trajectories is None and self.budget_s is None:
            self.trajectories = 20
        check_number("--lr", self.lr, low=0.0, low_open=True)
        for name, value, low in (
            ("--batch-size", self.batch_size, 1),
            ("--warmup", self.warmup, 0),
            ("--inference-steps", self.inference_steps, 1),
            ("--eval-replications", self.eval_replications, 1),
            ("--time-levels", self.time_levels, 0),
        ):
            check_int(name, value, low)
        if self.eval_samples is not None:
            check_int("--eval-samples", self.eval_samples, 2)
        if not self.methods.strip():
            raise ConfigError("--methods: give at least one method")
