"""``easytune pretrain {vae,mld,mdm}``: pretrain the motion VAE, the MLD latent denoiser or MDM."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from easytune.cli._common import add_run_arguments

STAGE_HELP = {
    "vae": "the MLD motion VAE (feature reconstruction [+ joint positions] + KL; weights from the preset)",
    "mld": "the MLD latent denoiser on a frozen VAE (--vae CKPT), epsilon prediction",
    "mdm": "the MDM frame denoiser, x0 prediction",
}


def register(subparsers: Any) -> None:
    from easytune.config import add_arguments
    from easytune.training.pretrain_config import DEFAULT_PRESET, STAGE_ONLY, PretrainOptions

    parser = subparsers.add_parser("pretrain", help="pretrain a motion model (MLD VAE, MLD denoiser, MDM)")
    sub = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for stage, text in STAGE_HELP.items():
        p = sub.add_parser(stage, help=text, description=f"Pretrain {text}.")
        add_run_arguments(
            p,
            out_help="checkpoint to write (atomically, every --ckpt-every steps)",
            resume_help="continue --out if it exists (exact: optimizer, step, RNG, EMA)",
        )
        others = tuple(name for name, stages in STAGE_ONLY.items() if stage not in stages)
        add_arguments(p, PretrainOptions, exclude=others, shown={"preset": DEFAULT_PRESET[stage]})
        p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from easytune.config import from_command_line
    from easytune.training.pretrain import pretrain
    from easytune.training.pretrain_config import PretrainOptions

    out = Path(args.out)
    opts = from_command_line(
        PretrainOptions,
        args,
        stage=args.stage,
        data=args.data,
        out=str(out),
        resume=str(out) if args.resume and out.is_file() else None,
        device=args.device,
        show_progress=not args.no_progress,
        overwrite=args.overwrite,
        skip_data_check=args.skip_data_check,
        wandb=args.wandb,
    )
    result = pretrain(opts)
    tail = [v for _, v in result.losses[-50:]]
    print(
        f"pretrain {args.stage}: {len(result.losses)} steps (to step {result.steps}) in "
        f"{result.seconds:.1f} s; mean loss of the last {len(tail)} steps {sum(tail) / len(tail):.5f}; "
        f"wrote {out} (metrics, TensorBoard events and options in {out}.logs/)"
    )
    return 0
