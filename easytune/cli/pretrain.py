"""``easytune pretrain {vae,mld,mdm}``: pretrain the motion VAE, the MLD latent denoiser or MDM."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from easytune.cli._common import DEVICE_HELP

STAGE_HELP = {
    "vae": "the MLD motion VAE (feature reconstruction [+ joint positions] + KL; weights from the preset)",
    "mld": "the MLD latent denoiser on a frozen VAE (--vae CKPT), epsilon prediction",
    "mdm": "the MDM frame denoiser, x0 prediction",
}
DEFAULT_PRESET = {"vae": "tiny", "mld": "tiny", "mdm": "mdm-tiny"}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("pretrain", help="pretrain a motion model (MLD VAE, MLD denoiser, MDM)")
    sub = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for stage, text in STAGE_HELP.items():
        p = sub.add_parser(stage, help=text, description=f"Pretrain {text}.")
        p.add_argument("--data", required=True, help="dataset folder (HumanML3D layout; the 'train' split)")
        p.add_argument(
            "--out", required=True, help="checkpoint to write (atomically, every --ckpt-every steps)"
        )
        p.add_argument(
            "--preset",
            default=DEFAULT_PRESET[stage],
            help=f"model preset (default {DEFAULT_PRESET[stage]}; see docs/models.md)",
        )
        p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the preset's)")
        p.add_argument("--batch-size", type=int, default=None, help="default: the preset's")
        p.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default: the preset's)")
        p.add_argument("--warmup", type=int, default=None, help="linear LR warm-up steps (then cosine decay)")
        p.add_argument(
            "--ema",
            type=float,
            default=None,
            metavar="DECAY",
            help="keep an EMA of the trained weights (e.g. 0.999); samples use it",
        )
        p.add_argument("--ckpt-every", type=int, default=500, help="checkpoint period in steps")
        p.add_argument("--overwrite", action="store_true", help="replace an existing --out checkpoint")
        p.add_argument(
            "--skip-data-check",
            action="store_true",
            help="do not read every clip before the first step (for data checked with `easytune data check`)",
        )
        p.add_argument(
            "--resume",
            action="store_true",
            help="continue --out if it exists (exact: optimizer, step, RNG, EMA)",
        )
        p.add_argument("--seed", type=int, default=0)
        p.add_argument(
            "--text-encoder",
            default=None,
            metavar="SPEC",
            help="text encoder spec (default: the preset's, e.g. builtin:token_dim=64,sentence_dim=128)",
        )
        if stage == "mld":
            p.add_argument(
                "--vae",
                default=None,
                metavar="CKPT",
                help="VAE checkpoint (from `easytune pretrain vae`, or an MLD / MotionLCM one)",
            )
        if stage == "vae":
            p.add_argument(
                "--rec-loss",
                choices=["smooth_l1", "mse"],
                default=None,
                help="feature reconstruction loss (default: the preset's, else smooth_l1)",
            )
            p.add_argument("--kl-weight", type=float, default=None, help="default: the preset's, else 1e-4")
            p.add_argument(
                "--joints-weight",
                type=float,
                default=None,
                help="weight of the joint-position loss (default: the preset's, else 1.0)",
            )
        p.add_argument(
            "--cond-drop", type=float, default=0.1, help="condition dropout for classifier-free guidance"
        )
        p.add_argument("--device", default="auto", help=DEVICE_HELP)
        p.add_argument("--log-every", type=int, default=100)
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from easytune.training.pretrain import PretrainOptions, pretrain

    out = Path(args.out)
    opts = PretrainOptions(
        stage=args.stage,
        data=args.data,
        out=out,
        preset=args.preset,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup=args.warmup,
        ema=args.ema,
        ckpt_every=args.ckpt_every,
        resume=out if args.resume and out.is_file() else None,
        seed=args.seed,
        text_encoder=args.text_encoder,
        vae=getattr(args, "vae", None),
        device=args.device,
        cond_drop=args.cond_drop,
        log_every=args.log_every,
        show_progress=not args.no_progress,
        rec_loss=getattr(args, "rec_loss", None),
        kl_weight=getattr(args, "kl_weight", None),
        joints_weight=getattr(args, "joints_weight", None),
        overwrite=args.overwrite,
        skip_data_check=args.skip_data_check,
    )
    result = pretrain(opts)
    tail = [v for _, v in result.losses[-50:]]
    print(
        f"pretrain {args.stage}: {len(result.losses)} steps (to step {result.steps}) in "
        f"{result.seconds:.1f} s; mean loss of the last {len(tail)} steps {sum(tail) / len(tail):.5f}; "
        f"wrote {out}"
    )
    return 0
