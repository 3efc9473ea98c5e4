"""Pretraining of the motion models: the MLD VAE, the MLD latent denoiser (frozen VAE) and MDM.

One loop for the three stages: AdamW, linear warm-up + cosine LR, gradient clipping, optional EMA,
condition dropout (the MLD denoiser sees the empty caption's embedding, MDM a zero embedding), masked
losses, the NaN/inf guard, periodic atomic checkpoints and exact resume.

Exact resume: batch ``k`` of epoch ``e`` is a pure function of ``(seed, e, k)`` (a length-bucketed
shuffle drawn from a generator seeded with ``(seed, e)``; the dataset's own crops and captions depend on
``(seed, e, index)``);
noise, timesteps and condition dropout come from a dedicated generator whose state is checkpointed with
the global torch RNG (dropout), the optimizer, LR scheduler, EMA and step. Resuming from the checkpoint
of step ``k`` reproduces the losses of steps ``k+1 ...`` of an uninterrupted run bit for bit (same device).

Checkpoint layout (``easytune.checkpoint``): ``state_dict`` (``vae.*`` / ``denoiser.*`` / MDM keys),
``config`` (model sizes, ``text_encoder``, ``scheduler``, ``guidance_scale``), ``meta`` (stage, preset,
data root, dataset ``mean`` / ``std`` tensors used to de-normalise samples, seconds, last loss) and the
training state ``optimizer``, ``lr_scheduler``, ``step``, ``rng`` and (with EMA) ``ema`` (same key names
as ``state_dict``, the averaged trained part; ``from_checkpoint`` prefers it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from easytune.checkpoint import (
    check_output_file,
    load_checkpoint,
    load_state_dict_strict,
    save_atomic,
    strip_prefix,
)
from easytune.errors import CheckpointError, ConfigError
from easytune.models.families import ModelFamily, get_family
from easytune.train_utils import (
    EMA,
    seed_everything,
    warmup_cosine_lambda,
)
from easytune.training.loop import SeededBatches, fit, restore_rng, rng_state, update
from easytune.training.pretrain_config import (
    TRAIN_KEYS,
    VAE_LOSS_DEFAULTS,
    PretrainOptions,
)
from easytune.training.tracking import run_dir_of

log = logging.getLogger("easytune.pretrain")

# Length buckets: batches are cut from pools of BUCKET_POOL x batch size shuffled items sorted by length.
BUCKET_POOL = 16


@dataclass
class PretrainResult:
    """``losses``: ``(step, loss)`` per step this call ran (steps count from 1); ``seconds``: wall time."""

    out: Path
    steps: int
    losses: list[tuple[int, float]] = field(default_factory=list)
    seconds: float = 0.0


def _check_out(opts: PretrainOptions) -> None:
    """An output location that cannot be written is found now, not after the first checkpoint."""
    check_output_file(opts.out, resume=opts.resume is not None, overwrite=opts.overwrite)


def _masked_mean(loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``loss`` [B, T, ...] over valid frames (``mask`` bool [B, T]) and trailing dims."""
    per_frame = loss.flatten(2).mean(-1)
    return (per_frame * mask).sum() / mask.sum().clamp(min=1)


class _Stage:
    """The per-stage parts of the loop: ``model`` (what the checkpoint holds), ``trained`` (the part that
    trains), ``prefix`` (its key prefix in the checkpoint) and how a batch becomes a loss."""

    model: nn.Module
    trained: nn.Module
    prefix: str

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The whole model's weights under checkpoint key names."""
        return self.model.state_dict()

    def load(self, state: dict[str, torch.Tensor], source: str) -> None:
        load_state_dict_strict(self.model, state, source)

    def train_mode(self) -> None:
        self.model.train()

    def loss(self, batch: dict, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of ``batch`` and its parts (detached 0-dim tensors, read once per step by the loop);
        ``gen``: the stage's generator (noise, timesteps, condition dropout)."""
        raise NotImplementedError


class _VAEStage(_Stage):
    """The MLD motion VAE: masked feature reconstruction [+ joint positions] + KL; keys ``vae.*``."""

    prefix = "vae."

    def __init__(
        self, config: dict[str, Any], train: dict[str, Any], device: torch.device, mean, std
    ) -> None:
        from easytune.checkpoint import config_from_dict
        from easytune.models.mld import MotionVAE, VAEConfig

        self.train, self.device = train, device
        self.mean = torch.as_tensor(mean, device=device)
        self.std = torch.as_tensor(std, device=device)
        self.model = MotionVAE(config_from_dict(VAEConfig, config["vae"], "config.vae")).to(device)
        self.trained = self.model

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"vae.{k}": v for k, v in self.model.state_dict().items()}

    def load(self, state: dict[str, torch.Tensor], source: str) -> None:
        load_state_dict_strict(self.model, strip_prefix(state, "vae."), source)

    def loss(self, batch, gen):
        from easytune.data.features import recover_from_ric

        feats, lengths = batch["motion"].to(self.device), batch["lengths"].to(self.device)
        mask = batch["mask"].to(self.device)
        rec, _, posterior = self.model(feats, lengths)
        rec_fn = F.mse_loss if self.train["rec_loss"] == "mse" else F.smooth_l1_loss
        rec_loss = _masked_mean(rec_fn(rec, feats, reduction="none"), mask)
        kl = torch.distributions.kl_divergence(posterior, torch.distributions.Normal(0.0, 1.0)).mean()
        loss = rec_loss + self.train["kl_weight"] * kl
        parts = {"rec": rec_loss.detach(), "kl": kl.detach()}
        if self.train["joints_weight"] > 0:
            joints_rec = recover_from_ric(rec * self.std + self.mean)
            joints_ref = recover_from_ric(feats * self.std + self.mean)
            joints_loss = _masked_mean(F.smooth_l1_loss(joints_rec, joints_ref, reduction="none"), mask)
            loss = loss + self.train["joints_weight"] * joints_loss
            parts["joints"] = joints_loss.detach()
        return loss, parts


class _DiffusionStage(_Stage):
    """A denoiser of any model family (``easytune.models.families``: MLD's latent denoiser on its frozen VAE,
    MDM's frame denoiser): MSE to the scheduler's training target, frames masked where the family has
    them, condition dropout to the family's null condition."""

    def __init__(
        self,
        family: ModelFamily,
        config: dict[str, Any],
        cond_drop: float,
        device: torch.device,
        frozen_state: tuple[dict[str, torch.Tensor], str] | None = None,
    ) -> None:
        """``frozen_state``: (state, source) of MLD's VAE (``--vae``), loaded before it is frozen."""
        from easytune.diffusion import training_scheduler
        from easytune.text import build_text_encoder

        self.family, self.cond_drop, self.device = family, cond_drop, device
        self.model = family.model_class.from_config(config)
        if frozen_state is not None:
            load_state_dict_strict(self.model.vae, frozen_state[0], f"{frozen_state[1]} (vae.*)")
        self.frozen = family.frozen(self.model)
        for module in self.frozen:
            module.requires_grad_(False)
        self.trained = family.trainable(self.model)
        self.prefix = family.trainable_prefix
        self.model.to(device)
        self.scheduler = training_scheduler(config["scheduler"])  # DDPM, or the flow's interpolation
        self.text = build_text_encoder(config["text_encoder"])
        self.null = self.text.encode([""], device=device).sentence

    def train_mode(self) -> None:
        self.model.train()
        for module in self.frozen:
            module.eval()

    def loss(self, batch, gen):
        feats, lengths = batch["motion"].to(self.device), batch["lengths"].to(self.device)
        b, family = feats.shape[0], self.family
        sentence = self.text.encode(list(batch["caption"]), device=self.device).sentence
        cond, null = family.conditions(sentence, self.null, lengths)
        drop = (torch.rand(b, generator=gen) < self.cond_drop).to(self.device)
        index = torch.randint(0, self.scheduler.config.num_train_timesteps, (b,), generator=gen)
        t = self.scheduler.training_timesteps(index).to(self.device)
        cond = family.drop(cond, null, drop)
        x0 = family.encode(self.model, feats, lengths)
        noise = torch.randn(x0.shape, generator=gen).to(self.device)
        x_t = self.scheduler.add_noise(x0, noise, t)
        mask = family.frame_mask(batch["mask"].to(self.device))
        if mask is not None:
            x_t = x_t * mask[..., None]
        pred = family.denoise(self.model, x_t, t, cond)
        target = self.scheduler.training_target(x0, noise, t)
        loss = F.mse_loss(pred, target) if mask is None else _masked_mean((pred - target) ** 2, mask)
        return loss, {"mse": loss.detach()}


def _resolve(opts: PretrainOptions, text_dim_of: Callable[[str], int], nfeats: int) -> tuple[dict, dict]:
    """(model config, train defaults) for a fresh run."""
    from easytune.models.presets import FLOW_SCHEDULER, get_preset, model_config

    preset = get_preset(opts.preset)
    kind = "mld" if opts.stage in ("vae", "mld") else "mdm"
    if preset["kind"] != kind:
        raise ConfigError(
            f"preset {opts.preset!r} is a {preset['kind']} preset; stage {opts.stage!r} needs a {kind} preset"
        )
    if opts.text_encoder is not None:
        preset["text_encoder"] = opts.text_encoder
    text_dim = text_dim_of(preset["text_encoder"]) if opts.stage != "vae" else 0
    config = model_config(preset, text_dim, nfeats)
    if opts.objective == "flow":
        config["scheduler"] = dict(FLOW_SCHEDULER)
    if opts.stage == "vae":
        config = {"kind": "vae", "vae": config["vae"]}
    return config, preset["train"][opts.stage]


def _objective(config: dict[str, Any]) -> str:
    """``flow`` or ``diffusion``: what a model config's scheduler trains."""
    from easytune.diffusion import is_flow

    return "flow" if "scheduler" in config and is_flow(config["scheduler"]) else "diffusion"


def _vae_from(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """(vae config dict, vae state dict without prefix, meta) of a VAE / MLD / lineage checkpoint."""
    from easytune.models.mld import load_vae

    vae = load_vae(path)
    return asdict(vae.config), vae.state_dict(), load_checkpoint(path).get("meta", {})


def pretrain(
    opts: PretrainOptions, callback: Callable[[int, dict[str, float]], None] | None = None
) -> PretrainResult:
    """Run (or resume) pretraining; write checkpoints to ``opts.out``. ``callback(step, stats)`` runs after
    every step, before its checkpoint (stats: ``loss``, its parts, ``lr`` of the update). Returns the per-step
    losses of this call."""
    from easytune.data.check import check_before_run
    from easytune.data.humanml import MotionDataset
    from easytune.text import build_text_encoder

    _check_out(opts)
    seed_everything(opts.seed)  # model initialisation; a resumed run then restores the saved RNG state
    device = torch.device(opts.device)
    check_before_run(
        opts.data, f"pretrain {opts.stage}", skip=opts.skip_data_check, show_progress=opts.show_progress
    )
    dataset = MotionDataset(opts.data, "train", seed=opts.seed)
    ckpt = load_checkpoint(opts.resume) if opts.resume is not None else None
    vae_state = None
    if ckpt is not None:
        meta = ckpt.get("meta", {})
        if meta.get("stage") != opts.stage or "config" not in ckpt or "optimizer" not in ckpt:
            raise CheckpointError(
                f"{opts.resume}: not a training checkpoint of stage {opts.stage!r} "
                f"(stage {meta.get('stage')!r}; needs config, optimizer, step, rng)"
            )
        config, train = ckpt["config"], meta["train"]
        if opts.objective is not None and opts.objective != _objective(config):
            raise ConfigError(
                f"--resume: {opts.resume} trains the {_objective(config)} objective, this run asks for "
                f"--objective {opts.objective}"
            )
        if any(getattr(opts, k) is not None for k in VAE_LOSS_DEFAULTS):
            raise ConfigError(f"{opts.resume}: a resumed run keeps its loss settings {train}")
        for key in TRAIN_KEYS:  # a changed option would be silently ignored: refuse it by name
            given = getattr(opts, key)
            if key != "steps" and given is not None and given != train.get(key):
                raise ConfigError(
                    f"--resume: {opts.resume} was trained with --{key.replace('_', '-')} {train.get(key)!r}, "
                    f"this run asks for {given!r}; resume with the saved value (only --steps may change)"
                )
    else:
        config, train = _resolve(
            opts, lambda spec: build_text_encoder(spec).sentence_dim, dataset.feature_dim
        )
        if opts.stage == "mld":
            vae_cfg, vae_state, vae_meta = _vae_from(opts.vae)
            config["vae"] = vae_cfg
            config["denoiser"].update(latent_size=vae_cfg["latent_size"], latent_dim=vae_cfg["latent_dim"])
            _check_normalisation(vae_meta, dataset, opts.vae)
        train = {**train, **{k: getattr(opts, k) for k in TRAIN_KEYS if getattr(opts, k) is not None}}
        train.setdefault("ema", None)
    if opts.stage == "vae":
        train = {**VAE_LOSS_DEFAULTS, **train}
    steps = opts.steps or train["steps"]

    if opts.stage == "vae":
        stage: _Stage = _VAEStage(config, train, device, dataset.mean, dataset.std)
    else:
        frozen = None if vae_state is None else (vae_state, str(opts.vae))
        stage = _DiffusionStage(get_family(opts.stage), config, opts.cond_drop, device, frozen)
    params = [p for p in stage.trained.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=train["lr"], betas=(0.9, 0.999), weight_decay=0.0)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine_lambda(train["warmup"], steps))
    ema = EMA(stage.trained, train["ema"]) if train["ema"] else None
    gen = torch.Generator().manual_seed(opts.seed)
    batches = SeededBatches(dataset, train["batch_size"], opts.seed, bucket_pool=BUCKET_POOL)
    start, seconds_before = 0, 0.0
    if ckpt is not None:
        stage.load(ckpt["state_dict"], str(opts.resume))
        optimizer.load_state_dict(ckpt["optimizer"])
        lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
        if ema is not None:
            ema.load_state_dict(strip_prefix(ckpt["ema"], stage.prefix))
        restore_rng(ckpt["rng"], {"noise": gen}, str(opts.resume))
        start, seconds_before = int(ckpt["step"]), float(ckpt["meta"].get("seconds", 0.0))
        log.info("resumed %s from %s at step %d", opts.stage, opts.resume, start)
    meta = {
        "stage": opts.stage,
        "preset": opts.preset,
        "data": str(opts.data),
        "train": train,
        "mean": torch.as_tensor(dataset.mean),
        "std": torch.as_tensor(dataset.std),
    }
    t0 = time.perf_counter()
    last = {"loss": float("nan")}  # the loss of the last step run, for the checkpoint's meta

    def save(step: int) -> None:
        ckpt_out = {
            "state_dict": stage.state_dict(),
            "config": config,
            "meta": {**meta, "seconds": seconds_before + time.perf_counter() - t0, "loss": last["loss"]},
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": lr_scheduler.state_dict(),
            "step": step,
            "rng": rng_state({"noise": gen}),
        }
        if ema is not None:
            ckpt_out["ema"] = {stage.prefix + k: v for k, v in ema.state_dict().items()}
        save_atomic(ckpt_out, opts.out)

    def step(s: int) -> dict[str, Any]:
        loss, parts = stage.loss(batches(s - 1), gen)
        lr = optimizer.param_groups[0]["lr"]
        update(
            loss,
            optimizer,
            stage.model,
            what=f"pretrain {opts.stage}",
            step=s,
            max_grad_norm=opts.max_grad_norm,
            lr_scheduler=lr_scheduler,
            ema=ema,
        )
        return {"loss": loss.detach(), **parts, "lr": lr}

    def on_step(s: int, stats: dict[str, float]) -> None:
        last["loss"] = stats["loss"]
        if callback is not None:
            callback(s, stats)

    stage.train_mode()
    run = fit(
        step,
        start=start,
        steps=steps,
        save=save,
        ckpt_every=opts.ckpt_every,
        log=log,
        desc=f"pretrain {opts.stage}",
        log_every=opts.log_every,
        show_progress=opts.show_progress,
        on_step=on_step,
        keep=("loss",),  # PretrainResult.losses
        run_dir=run_dir_of(opts.out),
        run_config=opts,
        wandb=opts.wandb,
    )
    return PretrainResult(Path(opts.out), steps, run.series("loss"), run.seconds)


def _check_normalisation(vae_meta: dict[str, Any], dataset: Any, path: str | Path | None) -> None:
    """The VAE must have been trained on features normalised like this dataset's."""
    if "mean" not in vae_meta or "std" not in vae_meta:
        log.warning(
            "%s has no dataset mean/std; assuming it was trained with %s's normalisation", path, dataset.root
        )
        return
    same = np.allclose(np.asarray(vae_meta["mean"]), dataset.mean, atol=1e-5) and np.allclose(
        np.asarray(vae_meta["std"]), dataset.std, atol=1e-5
    )
    if not same:
        raise ConfigError(
            f"{path}: the VAE was trained with another Mean/Std than {dataset.root}; train the "
            "denoiser on the VAE's dataset (or retrain the VAE)"
        )
