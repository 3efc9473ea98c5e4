"""``QuickstartConfig``: the sizes of ``easytune quickstart``; its fields are the command's options.

No torch import here: the CLI builds its options from this module (``easytune.config``)."""

from __future__ import annotations

from dataclasses import dataclass

from easytune.config import check_int, check_number, option


@dataclass
class QuickstartConfig:
    """Sizes of the comparison (``easytune compare`` of EasyTune-K and DRaFT-K); the defaults take about ten
    minutes on a 2-core CPU."""

    out: str = option("runs/quickstart", "folder for runs, GIFs and the table")
    data: str | None = option(None, "dataset folder (unset: the cached synthetic set)")
    budget_s: float = option(60.0, "training seconds per method and seed")
    seeds: int = option(3, "training seeds per method (the intervals are over these)")
    k: int = option(10, "K of EasyTune and of DRaFT-K")
    batch_size: int = option(8, "prompts per trajectory")
    lr: float = option(2e-5, "peak learning rate")
    warmup: int = option(2, "linear LR warm-up in trajectories (the same for both methods)")
    inference_steps: int = option(50, "DDIM steps per trajectory")
    eval_replications: int = option(1, "evaluation replications (the papers use 20)")
    gif_prompts: int = option(3, "test prompts rendered before/after as GIFs")
    base: str = option(
        "default", "MLD checkpoint ('default': the embedded tiny MLD, 'default-flow': its flow-matching twin)"
    )
    reward: str = option("default", "reward checkpoint ('default': the embedded SPL model)")
    evaluator: str = option("default", "evaluator checkpoint ('default': the embedded evaluator)")
    show_progress: bool = option(True, "progress bars", cli=False)

    def __post_init__(self) -> None:
        check_number("--budget-s", self.budget_s, low=0.0, low_open=True, what="seconds")
        check_number("--lr", self.lr, low=0.0, low_open=True)
        for name, value, low in (
            ("--k", self.k, 1),
            ("--batch-size", self.batch_size, 1),
            ("--warmup", self.warmup, 0),
            ("--inference-steps", self.inference_steps, 1),
            ("--eval-replications", self.eval_replications, 1),
            ("--seeds", self.seeds, 1),
            ("--gif-prompts", self.gif_prompts, 0),
        ):
            check_int(name, value, low)
