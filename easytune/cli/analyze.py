"""``easytune analyze``: recursive-dependence analysis of reward back-propagation (docs/analysis.md).

Samples DDIM trajectories of the base model (the fine-tuning sampler: CFG in one batch, eta = 0) for prompts
of the dataset's test split, and prints per step: the input-Jacobian norm of x_t -> x_{t-1} and of the guided
model output, their cumulative product back from the last step (the paper's Corollary-1 bound), and each
step's share of the DRaFT-K gradient. Writes OUT/analysis.json and OUT/analysis.png.
All ops run with their math backends (EASYTUNE_BACKEND=math unless set): the Jacobian-vector products need
second derivatives, which the fused kernels do not have.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from easytune.cli._common import DEVICE_HELP

log = logging.getLogger("easytune.analyze")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "analyze",
        help="per-step Jacobian norms and DRaFT-K gradient shares",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--base",
        default="default",
        help="MLD / MDM checkpoint ('default': embedded tiny MLD, 'default-flow': its flow-matching twin)",
    )
    p.add_argument("--reward", default="default", help="reward checkpoint ('default': embedded SPL model)")
    p.add_argument("--data", default=None, help="dataset folder for prompts (default: the base model's)")
    p.add_argument("--out", required=True, help="output folder for analysis.json and analysis.png")
    p.add_argument("--k", type=int, default=10, help="DRaFT-K: last steps whose gradient is split")
    p.add_argument("--trajectories", type=int, default=4, help="batches of trajectories")
    p.add_argument("--batch", type=int, default=4, help="prompts per trajectory batch")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the checkpoint's)")
    p.add_argument("--iters", type=int, default=20, help="Lanczos iterations per spectral norm")
    p.add_argument("--probes", type=int, default=8, help="Hutchinson probes per Frobenius norm (0: skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-plot", action="store_true", help="do not write analysis.png")
    p.set_defaults(func=_run)


@contextlib.contextmanager
def _math_backends() -> Iterator[None]:
    """``EASYTUNE_BACKEND=math`` for the duration (unless the user set it), restored afterwards."""
    key = "EASYTUNE_BACKEND"
    old = os.environ.get(key)
    os.environ.setdefault(key, "math")
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)


def _run(args: argparse.Namespace) -> int:
    import torch

    from easytune import analysis
    from easytune.errors import ConfigError
    from easytune.generation import load_pipeline
    from easytune.models.reward import RewardModel
    from easytune.train_utils import seed_everything
    from easytune.training.finetune import PromptSampler, dataset_prompts
    from easytune.training.objective import RewardObjective

    for name in ("k", "trajectories", "batch", "steps", "iters"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.k > args.steps:
        raise ConfigError(f"--k ({args.k}) must not exceed --steps ({args.steps})")
    if args.probes < 0:
        raise ConfigError(f"--probes must be >= 0, got {args.probes}")
    device = torch.device(args.device)  # resolved by easytune.cli.main
    rng = seed_everything(args.seed)
    pipe = load_pipeline(args.base, data=args.data, device=device)
    reward_model = RewardModel.from_checkpoint(args.reward).to(device)
    data = args.data or pipe.data_dir
    if data is None:
        raise ConfigError("--data is required: the base checkpoint names no dataset")
    prompts = PromptSampler(dataset_prompts(data, "test"), args.seed)
    objective = RewardObjective(pipe, reward_model)
    pipe.trainable.eval()  # deterministic denoiser: the gradient split recomputes every step
    params = [p for p in pipe.trainable.parameters() if p.requires_grad]
    pipe.scheduler.set_timesteps(args.steps)
    w = pipe.guidance_scale if args.guidance is None else args.guidance
    analyses = []
    start = time.perf_counter()
    with _math_backends():
        from easytune.progress import progress

        trajectories = range(args.trajectories)
        bar = progress(trajectories, total=args.trajectories, desc="analyze", unit="trajectory",
                       enabled=not args.no_progress)  # fmt: skip
        for j in bar:
            captions, lengths = prompts.draw(j, args.batch)
            batch = objective.batch(captions, lengths, device)
            step = analysis.GuidedDDIMStep(
                objective.denoise,
                pipe.scheduler,
                batch["cond"],
                batch["uncond"] if w != 1.0 else None,
                guidance_scale=w,
            )

            def reward_of(x0: torch.Tensor, batch: dict[str, Any] = batch) -> torch.Tensor:
                feats = objective.decode(x0, batch) if pipe.decode is not None else x0
                return objective.reward(feats, batch)

            x_T = torch.randn((args.batch, *pipe.latent_shape), generator=rng).to(device)
            x_T = x_T * pipe.scheduler.init_noise_sigma
            analyses.append(
                analysis.analyze_trajectory(
                    step,
                    x_T,
                    params,
                    reward_of,
                    k=args.k,
                    iters=args.iters,
                    probes=args.probes,
                    generator=rng,
                )
            )
            log.info(
                "trajectory batch %d/%d done (%.1f s)", j + 1, args.trajectories, time.perf_counter() - start
            )
    summary = analysis.summarize(analyses, iters=args.iters, probes=args.probes)
    summary["config"] = {
        "base": str(args.base),
        "reward": str(args.reward),
        "data": str(data),
        "kind": pipe.kind,
        "guidance_scale": w,
        "prediction_type": pipe.scheduler.config.prediction_type,
        "latent_shape": list(pipe.latent_shape),
        "batch": args.batch,
        "seed": args.seed,
        "device": str(device),
        "seconds": time.perf_counter() - start,
    }
    print(analysis.format_table(summary))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "analysis.json").write_text(json.dumps(summary, indent=1))
    written = [out / "analysis.json"]
    if not args.no_plot:
        written.append(analysis.plot(summary, out / "analysis.png"))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
