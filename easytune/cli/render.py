"""``easytune render``: draw motions (.npy joints or HumanML3D / KIT features) as a GIF, MP4 or PNG strip."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "render",
        help="render motions (.npy joints [T, J, 3] or features [T, 263|251]) as stick figures",
        description="Render one or more motions side by side. Features are decoded with recover_from_ric; "
        "pass --data (a dataset folder with Mean.npy / Std.npy) or --mean/--std to de-normalise "
        "normalised features. The output type follows --out: .gif, .mp4 (needs imageio[ffmpeg]) or .png "
        "(a strip of --frames evenly spaced frames per motion).",
    )
    parser.add_argument("inputs", nargs="+", metavar="FEATS_OR_JOINTS.npy")
    parser.add_argument("--out", required=True, help="output file: .gif, .mp4 or .png")
    parser.add_argument("--fps", type=float, default=20.0, help="frames per second of the animation (20)")
    parser.add_argument(
        "--title", action="append", default=None, help="caption above a motion; repeat once per input"
    )
    norm = parser.add_mutually_exclusive_group()
    norm.add_argument(
        "--data", metavar="DIR", help="dataset folder whose Mean.npy / Std.npy de-normalise the input"
    )
    norm.add_argument(
        "--mean", metavar="MEAN.npy", help="feature mean (with --std) to de-normalise the input"
    )
    parser.add_argument("--std", metavar="STD.npy", help="feature std (with --mean)")
    parser.add_argument("--frames", type=int, default=6, help="frames per motion in a .png strip (6)")
    parser.add_argument(
        "--size", type=int, default=None, help="panel size in pixels (320 animation, 200 strip)"
    )
    parser.set_defaults(func=_render)


def _render(args: argparse.Namespace) -> int:
    from easytune.errors import ConfigError
    from easytune.render import render_file

    if (args.mean is None) != (args.std is None):
        raise ConfigError("--mean and --std go together")
    if args.title is not None and len(args.title) != len(args.inputs):
        raise ConfigError(f"{len(args.title)} --title for {len(args.inputs)} inputs; give one per input")
    mean = std = None
    if args.data is not None:
        from easytune.data.humanml import load_mean_std

        mean, std = load_mean_std(args.data)
    elif args.mean is not None:
        mean, std = _load_vector(args.mean, "--mean"), _load_vector(args.std, "--std")
    path = render_file(
        args.inputs,
        args.out,
        titles=args.title,
        fps=args.fps,
        mean=mean,
        std=std,
        n_frames=args.frames,
        size=args.size,
    )
    print(f"wrote {path}")
    return 0


def _load_vector(path: str, option: str):
    import numpy as np

    from easytune.errors import DataError

    try:
        return np.load(path)
    except (OSError, ValueError) as err:
        raise DataError(f"{option} {path}: cannot read a .npy array ({err})") from err
