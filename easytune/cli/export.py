"""``easytune export``: an inference-only copy of an MLD / MDM training checkpoint.

Keeps the model weights (the EMA weights when the checkpoint has them), the config and the metadata
(dataset Mean/Std, and the dataset's local path unless --no-data-path); drops optimizer, LR-scheduler
and RNG state. The result loads with
`easytune sample`, `easytune finetune --base` and `easytune.generation.load_generator`.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("export", help="inference-only copy of an MLD / MDM checkpoint",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ckpt", help="training checkpoint (from `easytune pretrain` or `easytune finetune`)")
    p.add_argument("--out", required=True, help="checkpoint to write")
    p.add_argument("--no-ema", action="store_true", help="export the raw weights even if EMA ones exist")
    p.add_argument("--no-data-path", action="store_true",
                   help="leave out the local path of the training dataset (for checkpoints you ship); "
                        "Mean/Std stay")
    p.add_argument("--source", default=None, help="a line on where the checkpoint comes from (meta.source)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from easytune.generation import load_generator

    gen = load_generator(args.ckpt, use_ema=not args.no_ema)
    if args.no_data_path:
        gen.meta.pop("data", None)
    path = gen.save(args.out, gen.trainable.state_dict(), {"source": args.source} if args.source else None)
    print(f"wrote {path} ({gen.kind}, {sum(p.numel() for p in gen.model.parameters()):,} parameters)")
    return 0
