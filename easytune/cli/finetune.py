"""``easytune finetune``: reward fine-tuning of an MLD / MDM checkpoint with EasyTune or a baseline.

Writes RUN_DIR/metrics.jsonl (one line per trajectory), RUN_DIR/last.pt (atomic, for --resume) and
RUN_DIR/model.pt (the fine-tuned model, loadable by `easytune sample` and `easytune eval`).
Launch with `torchrun --nproc-per-node N -m easytune.cli finetune ...` for data-parallel runs.
"""

from __future__ import annotations

import argparse
from typing import Any

from easytune.cli._common import DEVICE_HELP


def register(subparsers: Any) -> None:
    from easytune.training.finetune_config import (
        COMPILE_MODES,
        LR_SCHEDULES,
        METHOD_NAMES,
        PRECISIONS,
        FinetuneConfig,
    )

    d = FinetuneConfig  # the defaults live in the config dataclass
    p = subparsers.add_parser("finetune", help="reward fine-tuning with EasyTune or a baseline",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default=d.method, choices=METHOD_NAMES)
    m = p.add_argument_group("method options (unset: the method's default; an option the method does not "
                             "take is refused)")
    m.add_argument("--k", type=int, help="EasyTune / DRaFT / DRTune: number of steps with gradients")
    m.add_argument("--weighting", choices=["uniform", "early", "late"], help="EasyTune per-step weights")
    m.add_argument("--variant", choices=["step", "chain"], help="EasyTune: step or chain optimisation")
    m.add_argument("--n", type=int, help="DRaFT-LV: re-noised copies")
    m.add_argument("--m", type=int, help="ReFL / DRTune: early stop drawn among the last m steps")
    m.add_argument("--mean", type=float, help="AlignProp: mean backprop start step (default 0.84 x steps)")
    m.add_argument("--std", type=float, help="AlignProp: std of the start step (default 0.1 x steps)")
    m.add_argument("--distribution", choices=["normal", "uniform"], help="AlignProp: start distribution")
    m.add_argument("--low", type=int, help="AlignProp: earliest start step (default 1)")
    m.add_argument("--high", type=int, help="AlignProp: latest start step (default: inference steps - 1)")
    p.add_argument("--base", default="default", help="MLD / MDM checkpoint ('default': embedded tiny MLD)")
    p.add_argument("--reward", default="default", help="reward checkpoint ('default': embedded SPL model)")
    p.add_argument("--data", default=None, help="dataset folder for prompts (default: the base model's)")
    p.add_argument("--evaluator", default=None, help="evaluator checkpoint for periodic evaluation")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--steps", type=int, default=d.steps, help="trajectories (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="default %(default)s")
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (default %(default)s)")
    p.add_argument("--warmup", type=int, default=d.warmup,
                   help="linear LR warm-up in trajectories, the same for every method (default %(default)s)")
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=d.lr_schedule,
                   help="after warm-up: constant, or cosine decay to 0 at --steps (default %(default)s)")
    p.add_argument("--max-grad-norm", type=float, default=1.0, help="<= 0 disables clipping")
    p.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the checkpoint's)")
    p.add_argument("--inference-steps", type=int, default=50, help="DDIM steps per trajectory")
    p.add_argument("--reward-weight", type=float, default=1.0)
    p.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                   help="fp32 | tf32 (TF32 matmuls on CUDA) | bf16 (autocast of denoiser, VAE and reward "
                        "model; reward, loss and optimizer state in fp32) (default %(default)s)")
    p.add_argument("--compile", choices=[m for m in COMPILE_MODES if m], default=None,
                   help="torch.compile the denoiser (no-grad and gradient steps separately); "
                        "reduce-overhead: CUDA graphs for the no-grad steps")
    p.add_argument("--checkpoint-frozen", action="store_true",
                   help="activation checkpointing in the frozen VAE decoder and reward model (less memory)")
    p.add_argument("--ema", type=float, default=None, metavar="DECAY", help="keep an EMA of the weights")
    p.add_argument("--lora-rank", type=int, default=None, help="train LoRA adapters of this rank only")
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--reg-weight", type=float, default=0.0,
                   help="pull toward the pretrained weights (against reward hacking)")
    p.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps (needs --evaluator)")
    p.add_argument("--eval-samples", type=int, default=64, help="prompts per periodic evaluation")
    p.add_argument("--ckpt-every", type=int, default=50)
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--resume", action="store_true", help="continue RUN_DIR/last.pt exactly")
    p.add_argument("--overwrite", action="store_true", help="replace a previous run in RUN_DIR")
    p.add_argument("--allow-changed", action="append", default=[], metavar="OPTION",
                   help="with --resume: let this option differ from the saved run (repeatable; logged)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from easytune.training.distributed import cleanup_distributed
    from easytune.training.finetune import FinetuneConfig, Run

    options = {"k": args.k, "weighting": args.weighting, "variant": args.variant, "n": args.n, "m": args.m,
               "mean": args.mean, "std": args.std, "distribution": args.distribution, "low": args.low,
               "high": args.high}
    cfg = FinetuneConfig(
        method=args.method, method_options={k: v for k, v in options.items() if v is not None},
        base=args.base, reward=args.reward, data=args.data, out=args.out, steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, warmup=args.warmup, lr_schedule=args.lr_schedule,
        max_grad_norm=None if args.max_grad_norm <= 0 else args.max_grad_norm,  # nan stays (refused)
        guidance_scale=args.guidance,
        num_inference_steps=args.inference_steps, reward_weight=args.reward_weight, precision=args.precision,
        compile=args.compile,
        checkpoint_frozen=args.checkpoint_frozen,
        ema=args.ema, lora_rank=args.lora_rank, lora_alpha=args.lora_alpha, reg_weight=args.reg_weight,
        eval_every=args.eval_every, ckpt_every=args.ckpt_every, time_budget=args.time_budget, seed=args.seed,
        device=args.device, resume=args.resume, overwrite=args.overwrite,
        allow_changed=tuple(args.allow_changed), progress=not args.no_progress,
    )
    evaluate_fn = None
    if args.eval_every and not args.evaluator:
        from easytune.errors import ConfigError

        raise ConfigError(f"--eval-every {args.eval_every} needs --evaluator CKPT (what to evaluate with)")
    if args.evaluator:
        from easytune.training.evaluate import periodic_evaluator

        evaluate_fn = periodic_evaluator(args.evaluator, args.data, samples=args.eval_samples, seed=args.seed)
    try:
        run = Run(cfg, evaluate_fn)
        history = run.train()
        if run.info.is_main:
            path = run.export()
            last = history[-1] if history else {}
            print(f"{cfg.method}: {run.step} trajectories, reward {last.get('reward', float('nan')):.4f}, "
                  f"{run.elapsed:.1f} s; wrote {path}")
    finally:
        cleanup_distributed()
    return 0
