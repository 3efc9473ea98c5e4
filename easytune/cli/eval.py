"""``easytune eval``: generation metrics of an MLD / MDM checkpoint with the independent evaluator."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from easytune.cli._common import DEVICE_HELP


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "eval",
        help="R-Precision, FID, MM-Dist, Diversity, MultiModality of a model "
        "(T2M protocol, independent evaluator)",
    )
    p.add_argument("--ckpt", required=True, help="MLD / MDM checkpoint to generate with")
    p.add_argument(
        "--evaluator",
        required=True,
        help="t2m:DIR (the official T2M evaluator: DIR/t2m/text_mot_match/model/finest.tar, DIR/glove/, "
        "DIR/t2m_mean.npy, DIR/t2m_std.npy; see docs/evaluation.md), an evaluator checkpoint "
        "(`easytune evaluator train`) or 'default'",
    )
    p.add_argument(
        "--data", required=True, help="dataset folder; its test split gives captions, lengths, Mean/Std"
    )
    p.add_argument("--split", default="test")
    p.add_argument("--json", default=None, help="write the metrics here")
    p.add_argument("--replications", type=int, default=20)
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the checkpoint's)")
    p.add_argument("--group-size", type=int, default=32, help="R-Precision group size")
    p.add_argument("--diversity-pairs", type=int, default=300)
    p.add_argument("--mm-prompts", type=int, default=100, help="MultiModality prompts (0 skips it)")
    p.add_argument("--mm-repeats", type=int, default=30, help="generations per MultiModality prompt")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--text-encoder", default=None, help="the model's text encoder spec (default: its checkpoint's)"
    )
    p.add_argument(
        "--model-data",
        default=None,
        help="dataset whose Mean/Std the model was trained with (default: the checkpoint's statistics)",
    )
    p.add_argument("--name", default=None, help="row label (default: the checkpoint file name)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from easytune.data.humanml import MotionDataset
    from easytune.generation import load_pipeline
    from easytune.models.evaluator import load_evaluator
    from easytune.training.evaluate import EvalSizes, evaluate_generation, format_table, pipeline_fn

    dataset = MotionDataset(args.data, args.split, caption_mode="first", crop="floor")
    evaluator = load_evaluator(
        args.evaluator, dataset_mean=dataset.mean, dataset_std=dataset.std, device=args.device
    )
    pipe = load_pipeline(args.ckpt, text_encoder=args.text_encoder, data=args.model_data, device=args.device)
    sizes = EvalSizes(
        replications=args.replications,
        group_size=args.group_size,
        diversity_pairs=args.diversity_pairs,
        mm_prompts=args.mm_prompts,
        mm_repeats=args.mm_repeats,
    )
    generate_fn = pipeline_fn(pipe, dataset, steps=args.steps, guidance_scale=args.guidance)
    result = evaluate_generation(
        generate_fn,
        evaluator,
        dataset,
        sizes,
        batch_size=args.batch_size,
        seed=args.seed,
        show_progress=not args.no_progress,
    )
    for note in result["notes"]:
        print(f"note: small test split: {note}")
    name = args.name or Path(args.ckpt).stem
    print(
        f"{args.ckpt} on {args.data} [{args.split}, {result['n']} items, {result['sizes']['replications']} "
        f"replications, {args.steps} DDIM steps]"
    )
    print(format_table(result, name))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        extra = {
            "ckpt": str(args.ckpt),
            "evaluator": str(args.evaluator),
            "data": str(args.data),
            "steps": args.steps,
        }
        Path(args.json).write_text(json.dumps({**result, **extra}, indent=2))
    return 0
