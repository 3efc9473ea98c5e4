"""Write tests/data/ddim_reference.json: diffusers.DDIMScheduler outputs for tests that run without diffusers.

For each configuration it stores diffusers' timesteps, alphas_cumprod (float32 values, exact) and a short
float64 trajectory: x_T, the model output fed at every step (a fixed function of x and the step), the
variance noise (eta > 0), and diffusers' prev_sample / pred_original_sample. diffusers' tables are upcast
to float64 before stepping so that the stored trajectory is exact float64 arithmetic (tests compare to 1e-12).

    .venv/bin/python scripts/make_ddim_table.py [--out tests/data/ddim_reference.json]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

CONFIGS = [
    {
        "name": "mld",
        "steps": 50,
        "eta": 0.0,
        "trajectory_steps": 8,
        "config": {
            "beta_start": 0.00085,
            "beta_end": 0.012,
            "beta_schedule": "scaled_linear",
            "clip_sample": False,
            "set_alpha_to_one": False,
            "steps_offset": 1,
            "prediction_type": "epsilon",
        },
    },
    {
        "name": "linear_v_trailing",
        "steps": 7,
        "eta": 0.0,
        "trajectory_steps": 7,
        "config": {
            "beta_schedule": "linear",
            "clip_sample": False,
            "prediction_type": "v_prediction",
            "timestep_spacing": "trailing",
        },
    },
    {
        "name": "cosine_sample_linspace",
        "steps": 6,
        "eta": 0.0,
        "trajectory_steps": 6,
        "config": {
            "beta_schedule": "squaredcos_cap_v2",
            "clip_sample": False,
            "prediction_type": "sample",
            "timestep_spacing": "linspace",
            "set_alpha_to_one": False,
        },
    },
    {
        "name": "scaled_linear_eta",
        "steps": 5,
        "eta": 0.7,
        "trajectory_steps": 5,
        "config": {
            "beta_start": 0.00085,
            "beta_end": 0.012,
            "beta_schedule": "scaled_linear",
            "clip_sample": False,
            "set_alpha_to_one": False,
            "steps_offset": 1,
            "prediction_type": "epsilon",
        },
    },
]
ALPHA_PROBES = [0, 1, 10, 100, 500, 999]


def _pattern(offset: float) -> torch.Tensor:
    """A fixed, smooth [2, 3] float64 tensor (no RNG, so the table does not depend on torch's generator)."""
    return torch.tensor([math.sin(0.7 * i + offset) for i in range(6)], dtype=torch.float64).reshape(2, 3)


def build_entry(spec: dict) -> dict:
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(**spec["config"])
    sched.set_timesteps(spec["steps"])
    entry = {
        "name": spec["name"],
        "config": spec["config"],
        "num_inference_steps": spec["steps"],
        "eta": spec["eta"],
        "timesteps": sched.timesteps.tolist(),
        "alpha_probes": {str(i): float(sched.alphas_cumprod[i]) for i in ALPHA_PROBES},
        "final_alpha_cumprod": float(sched.final_alpha_cumprod),
    }
    sched.alphas_cumprod = sched.alphas_cumprod.double()
    sched.final_alpha_cumprod = sched.final_alpha_cumprod.double()
    x = _pattern(1.0)
    trajectory = {
        "x_T": x.tolist(),
        "model_output": [],
        "variance_noise": [],
        "prev_sample": [],
        "pred_original_sample": [],
    }
    for j, t in enumerate(sched.timesteps[: spec["trajectory_steps"]]):
        model_output = 0.3 * x + 0.2 * _pattern(2.0 + j)
        noise = _pattern(5.0 + 3 * j) if spec["eta"] > 0 else None
        out = sched.step(model_output, int(t), x, eta=spec["eta"], variance_noise=noise)
        trajectory["model_output"].append(model_output.tolist())
        trajectory["variance_noise"].append(None if noise is None else noise.tolist())
        trajectory["prev_sample"].append(out.prev_sample.tolist())
        trajectory["pred_original_sample"].append(out.pred_original_sample.tolist())
        x = out.prev_sample
    entry["trajectory"] = trajectory
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests/data/ddim_reference.json"
    )
    args = parser.parse_args()
    import diffusers

    table = {"diffusers_version": diffusers.__version__, "entries": [build_entry(spec) for spec in CONFIGS]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(table, indent=1) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, {len(table['entries'])} configurations)")


if __name__ == "__main__":
    main()
