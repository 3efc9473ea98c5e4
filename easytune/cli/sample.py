"""``easytune sample``: text -> motion with an MLD or MDM checkpoint (DDIM + classifier-free guidance).

The output ``.npy`` holds de-normalised HumanML3D features float32 ``[T, 263]`` (KIT: 251): the model's
normalised output times the dataset ``Std`` plus ``Mean`` (taken from the checkpoint's ``meta``, or from
``--data DIR``), i.e. the ``new_joint_vecs`` format; ``easytune.data.features.recover_from_ric`` turns it
into joints [T, 22, 3]. Loading and sampling: ``easytune.generation.load_pipeline`` /
``MotionPipeline.sample``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from easytune.cli._common import DEVICE_HELP


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "sample",
        help="generate a motion from text with an MLD or MDM checkpoint",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--ckpt",
        required=True,
        help="MLD / MDM checkpoint (easytune's or a reference one; 'default': the embedded tiny MLD)",
    )
    p.add_argument("--text", required=True, help="the caption, e.g. 'a person jumps twice'")
    p.add_argument("--length", type=int, default=120, help="frames (20 fps for HumanML3D)")
    p.add_argument("--out", required=True, help="output .npy: de-normalised features [T, 263]")
    p.add_argument(
        "--render", default=None, help="also render to .gif / .mp4 (animation) or .png (frame strip)"
    )
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    p.add_argument(
        "--guidance", type=float, default=None, help="CFG scale (default: the checkpoint's; 7.5 MLD, 2.5 MDM)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--text-encoder",
        default=None,
        metavar="SPEC",
        help="text encoder spec (default: the one the checkpoint was trained with)",
    )
    p.add_argument(
        "--data", default=None, help="dataset folder whose Mean/Std de-normalise (default: the checkpoint's)"
    )
    p.add_argument(
        "--no-ema", action="store_true", help="use the raw weights even if the checkpoint has EMA ones"
    )
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import math

    from easytune.errors import ConfigError, DataError
    from easytune.generation import load_pipeline

    if args.guidance is not None and not (math.isfinite(args.guidance) and args.guidance >= 0):
        raise ConfigError(f"--guidance must be a finite number >= 0, got {args.guidance}")
    if args.steps < 1 or args.length < 1:
        raise ConfigError(f"--steps and --length must be >= 1, got {args.steps} and {args.length}")
    from easytune.checkpoint import check_writable_dir

    for option, value in (("--out", args.out), ("--render", args.render)):
        if value is not None:  # found unusable now, not after loading and sampling
            if Path(value).is_dir():
                raise ConfigError(f"{option} {value} is a directory; give a file name")
            check_writable_dir(Path(value).parent, f"{option} {value}")

    pipe = load_pipeline(
        args.ckpt, text_encoder=args.text_encoder, data=args.data, use_ema=not args.no_ema, device=args.device
    )
    feats = pipe.sample(
        [args.text], [args.length], steps=args.steps, guidance_scale=args.guidance, seed=args.seed
    )[0]
    if not np.isfinite(feats).all():
        raise DataError(f"sample: the generated motion holds NaN or inf; nothing written to {args.out}")
    out = Path(args.out)
    np.save(out, feats)
    print(
        f"wrote {out}: de-normalised features {feats.shape} ({pipe.kind}, {args.steps} DDIM steps, "
        f"guidance {pipe.guidance_scale if args.guidance is None else args.guidance})"
    )
    if args.render:
        from easytune.render import render_file

        print(f"rendered {render_file([out], args.render, titles=[args.text])}")
    return 0
