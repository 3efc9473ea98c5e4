"""Motion models: MLD (motion VAE + latent denoiser), MDM (frame denoiser), presets, checkpoint loading.

``MLD.from_checkpoint`` / ``MDM.from_checkpoint`` load easytune checkpoints and the public reference
checkpoints (MLD / MotionLCM / EasyTune Lightning files, MDM state dicts); see docs/models.md.
"""

from easytune.models.mdm import MDM, MDMConfig
from easytune.models.mld import MLD, DenoiserConfig, LatentDenoiser, MotionVAE, VAEConfig, load_vae
from easytune.models.presets import PRESETS, build_model, get_preset, model_config

__all__ = [
    "MDM",
    "MDMConfig",
    "MLD",
    "DenoiserConfig",
    "LatentDenoiser",
    "MotionVAE",
    "VAEConfig",
    "load_vae",
    "PRESETS",
    "build_model",
    "get_preset",
    "model_config",
]
