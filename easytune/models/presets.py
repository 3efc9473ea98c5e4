"""Named model sizes: ``mld`` / ``mdm`` at paper size; ``tiny`` / ``mdm-tiny`` pretrain on a CPU in minutes.

A preset is a plain dict: the model config (``vae`` + ``denoiser`` or ``mdm``; the denoiser's
``text_dim`` is filled from the text encoder's ``sentence_dim`` at build time), the text encoder spec, the
diffusion scheduler config (diffusers names), the guidance scale, and pretraining defaults per stage.
"""

from __future__ import annotations

import copy
from typing import Any

from easytune.errors import ConfigError
from easytune.models.mdm import MDM
from easytune.models.mld import MLD

# MLD's DDPM/DDIM schedule (scaled_linear 0.00085..0.012, epsilon, 1000 steps).
MLD_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "clip_sample": False,
}
# MDM's cosine schedule; the network predicts x0 ("sample"). The last DDIM step (t = 0) steps to alpha = 1
# and so returns x0_hat, as MDM's own sampler does; with set_alpha_to_one=False it would step from t = 0 to
# alpha_prev = alphas_cumprod[0] = alpha_t, an identity step that leaves the residual noise in the sample.
MDM_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "sample",
    "set_alpha_to_one": True,
    "steps_offset": 0,
    "clip_sample": False,
}

# The scheduler of `easytune pretrain mld --objective flow`: diffusers' FlowMatchEulerDiscreteScheduler,
# unshifted, velocity targets.
FLOW_SCHEDULER: dict[str, Any] = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "prediction_type": "flow_prediction",
}


_PRESETS: dict[str, dict[str, Any]] = {
    "mld": {
        "kind": "mld",
        "text_encoder": "builtin",
        "scheduler": MLD_SCHEDULER,
        "guidance_scale": 7.5,
        "vae": {
            "nfeats": 263,
            "latent_size": 1,
            "latent_dim": 256,
            "ff_size": 1024,
            "num_layers": 9,
            "num_heads": 4,
            "dropout": 0.1,
        },
        "denoiser": {
            "latent_size": 1,
            "latent_dim": 256,
            "time_dim": 768,
            "ff_size": 1024,
            "num_layers": 9,
            "num_heads": 4,
            "dropout": 0.1,
            "text_act": "relu",
        },
        "train": {
            "vae": {"steps": 100_000, "batch_size": 128, "lr": 2e-4, "warmup": 1000},
            "mld": {"steps": 100_000, "batch_size": 64, "lr": 1e-4, "warmup": 1000},
        },
    },
    "tiny": {
        "kind": "mld",
        "text_encoder": "builtin:token_dim=64,sentence_dim=128",
        "scheduler": MLD_SCHEDULER,
        "guidance_scale": 7.5,
        "vae": {
            "nfeats": 263,
            "latent_size": 8,
            "latent_dim": 16,
            "hidden_dim": 64,
            "ff_size": 256,
            "num_layers": 3,
            "num_heads": 4,
            "dropout": 0.0,
        },
        "denoiser": {
            "latent_size": 8,
            "latent_dim": 16,
            "hidden_dim": 128,
            "time_dim": 128,
            "ff_size": 256,
            "num_layers": 5,
            "num_heads": 4,
            "dropout": 0.1,
            "text_act": "relu",
        },
        # VAE: MSE without the joint-position term (see docs/models.md, "Pretraining").
        "train": {
            "vae": {
                "steps": 3600,
                "batch_size": 16,
                "lr": 2e-3,
                "warmup": 200,
                "rec_loss": "mse",
                "joints_weight": 0.0,
            },
            "mld": {"steps": 3000, "batch_size": 32, "lr": 5e-4, "warmup": 50},
        },
    },
    "mdm": {
        "kind": "mdm",
        "text_encoder": "builtin",
        "scheduler": MDM_SCHEDULER,
        "guidance_scale": 2.5,
        "mdm": {
            "nfeats": 263,
            "latent_dim": 512,
            "ff_size": 1024,
            "num_layers": 8,
            "num_heads": 4,
            "dropout": 0.1,
        },
        "train": {"mdm": {"steps": 200_000, "batch_size": 64, "lr": 1e-4, "warmup": 1000}},
    },
    "mdm-tiny": {
        "kind": "mdm",
        "text_encoder": "builtin:token_dim=64,sentence_dim=128",
        "scheduler": MDM_SCHEDULER,
        "guidance_scale": 2.5,
        "mdm": {
            "nfeats": 263,
            "latent_dim": 128,
            "ff_size": 256,
            "num_layers": 4,
            "num_heads": 4,
            "dropout": 0.1,
        },
        "train": {"mdm": {"steps": 1200, "batch_size": 16, "lr": 3e-4, "warmup": 100}},
    },
}

PRESETS: tuple[str, ...] = tuple(_PRESETS)


def get_preset(name: str) -> dict[str, Any]:
    """A deep copy of preset ``name`` (one of ``PRESETS``)."""
    if name not in _PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {list(PRESETS)}")
    return copy.deepcopy(_PRESETS[name])


def model_config(preset: dict[str, Any], text_dim: int, nfeats: int | None = None) -> dict[str, Any]:
    """The checkpoint ``config`` for ``preset`` with ``text_dim`` (and optionally ``nfeats``, e.g. 251 for
    KIT) filled in: model sizes plus ``text_encoder``, ``scheduler`` and ``guidance_scale``."""
    config = {k: copy.deepcopy(v) for k, v in preset.items() if k != "train"}
    if config["kind"] == "mld":
        config["denoiser"]["text_dim"] = text_dim
        if nfeats is not None:
            config["vae"]["nfeats"] = nfeats
    else:
        config["mdm"]["text_dim"] = text_dim
        if nfeats is not None:
            config["mdm"]["nfeats"] = nfeats
    return config


def build_model(config: dict[str, Any]) -> MLD | MDM:
    """An untrained ``MLD`` or ``MDM`` from a checkpoint-style ``config`` (see ``model_config``)."""
    kind = config.get("kind")
    if kind == "mld":
        return MLD.from_config(config)
    if kind == "mdm":
        return MDM.from_config(config)
    raise ConfigError(f"config kind must be 'mld' or 'mdm', got {kind!r}")
