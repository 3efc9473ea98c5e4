"""Reward fine-tuning of a pretrained MLD or MDM checkpoint with any method of ``easytune.methods``.

One loop for every method: each iteration draws a batch of (caption, length) prompts from the training
split, runs ``Trainer.step`` (one sampled trajectory and all of its updates), logs a JSONL line and, on
schedule, evaluates and writes an atomic checkpoint. Exact resume: the denoiser weights, optimizer, LR
scheduler, EMA, the trainer's generator, the step counter and the log so far are all checkpointed, and the
prompts of step ``s`` depend only on ``(seed, rank, s)``.

Multi-process runs (``torchrun``): every rank draws its own prompts; gradients are averaged across ranks
before clipping, which is exactly what ``DistributedDataParallel`` does. The DDP module wrapper itself is not
used because DRaFT-style methods run several forward passes per backward, which its reducer does not allow.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from easytune import methods
from easytune.checkpoint import load_checkpoint, save_atomic
from easytune.errors import ConfigError
from easytune.generation import Generator, load_generator
from easytune.train_utils import EMA, progress, seed_everything, warmup_cosine_lambda
from easytune.trainer import Trainer
from easytune.training.distributed import DistInfo, all_reduce_mean, check_in_sync, init_distributed
from easytune.training.lora import apply_lora, merge_lora

log = logging.getLogger("easytune.finetune")

METHODS: dict[str, type[methods.Method]] = {
    "easytune": methods.EasyTune,
    "draft": methods.DRaFT,
    "draft-lv": methods.DRaFTLV,
    "refl": methods.ReFL,
    "drtune": methods.DRTune,
    "alignprop": methods.AlignProp,
}


def build_method(name: str, **options: Any) -> methods.Method:
    """``METHODS[name](**options)`` with the unset (None) options left at the method's defaults."""
    if name not in METHODS:
        raise ConfigError(f"--method must be one of {sorted(METHODS)}, got {name!r}")
    return METHODS[name](**{k: v for k, v in options.items() if v is not None})


@dataclass
class FinetuneConfig:
    """What ``finetune`` runs. Checkpoint arguments accept ``default`` (the embedded tiny models)."""

    method: str = "easytune"
    method_options: dict[str, Any] = field(default_factory=dict)
    base: str = "default"
    reward: str = "default"
    data: str | None = None
    out: str = "runs/finetune"
    steps: int = 100
    batch_size: int = 8
    lr: float = 1e-5
    warmup: int = 1000
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    guidance_scale: float | None = None
    num_inference_steps: int = 50
    reward_weight: float = 1.0
    amp: str = "none"
    checkpoint_frozen: bool = False
    ema: float | None = None
    lora_rank: int | None = None
    lora_alpha: float = 16.0
    reg_weight: float = 0.0
    eval_every: int = 0
    ckpt_every: int = 50
    time_budget: float | None = None
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    progress: bool = True

    def validate(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError(f"--steps and --batch-size must be >= 1, got {self.steps}, {self.batch_size}")
        if self.amp not in ("none", "bf16", "fp16"):
            raise ConfigError(f"--amp must be none, bf16 or fp16, got {self.amp!r}")
        if self.reg_weight < 0:
            raise ConfigError(f"--reg-weight must be >= 0, got {self.reg_weight}")
        if self.time_budget is not None and self.time_budget <= 0:
            raise ConfigError(f"--time-budget must be > 0 seconds, got {self.time_budget}")


class PromptSampler:
    """Draws B (caption, length) pairs per step from a split, deterministic in (seed, rank, step)."""

    def __init__(self, prompts: list[tuple[str, int]], seed: int, rank: int = 0) -> None:
        if not prompts:
            raise ConfigError("the training split has no (caption, length) pair to fine-tune on")
        self.prompts = prompts
        self.seed = seed
        self.rank = rank

    def draw(self, step: int, batch_size: int) -> tuple[list[str], list[int]]:
        rng = np.random.default_rng([self.seed, self.rank, step])
        picks = rng.integers(0, len(self.prompts), size=batch_size)
        return [self.prompts[i][0] for i in picks], [self.prompts[i][1] for i in picks]


def dataset_prompts(root: str | Path, split: str = "train") -> list[tuple[str, int]]:
    """Every (caption, length) of ``split`` (each caption of a clip is a separate prompt)."""
    from easytune.data.humanml import MotionDataset

    ds = MotionDataset(root, split, normalize=False, crop="floor")
    return [(c, int(n)) for entry, n in zip(ds.entries, ds.lengths) for c in entry.captions]


class RewardObjective:
    """The trainer's callables for a loaded generator + reward model: denoise, decode and reward."""

    def __init__(self, gen: Generator, reward_model: torch.nn.Module, amp: str = "none") -> None:
        self.gen = gen
        self.reward_model = reward_model
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        with torch.autocast(
            x.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None
        ):
            out = self.gen.denoise(x, t, cond)
        return out.float()

    def decode(self, x0: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        return self.gen.decode(x0, batch["lengths"])

    def reward(self, feats: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        return self.reward_model.reward(feats, batch["lengths"], batch["captions"])

    def batch(self, captions: list[str], lengths: list[int], device: torch.device) -> dict[str, Any]:
        cond, uncond = self.gen.conditions(captions, lengths, device)
        return {
            "cond": cond,
            "uncond": uncond,
            "captions": captions,
            "lengths": torch.tensor(lengths, device=device),
        }


def _proximal_hook(params: list[torch.Tensor], anchors: list[torch.Tensor], weight: float):
    """Optimizer post-step hook pulling weights toward the pretrained ones: theta -= lr * w * (theta - theta0)
    (the gradient step of ``w/2 * |theta - theta0|^2``, decoupled like AdamW's weight decay)."""

    @torch.no_grad()
    def hook(optimizer: torch.optim.Optimizer, *_: Any) -> None:
        lr = optimizer.param_groups[0]["lr"]
        for p, p0 in zip(params, anchors):
            p.sub_(p - p0, alpha=lr * weight)

    return hook


def _grad_averager(info: DistInfo) -> Callable[[list[torch.Tensor]], None]:
    def average(grads: list[torch.Tensor]) -> None:
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= info.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    return average


class Run:
    """A fine-tuning run in ``cfg.out``: builds everything, then ``train()``; ``evaluate_fn(gen, step)`` is
    called every ``cfg.eval_every`` steps (and at the end) when given."""

    def __init__(
        self, cfg: FinetuneConfig, evaluate_fn: Callable[[Generator, int], dict[str, float]] | None = None
    ) -> None:
        cfg.validate()
        self.cfg = cfg
        self.info = init_distributed(cfg.device)
        self.out = Path(cfg.out)
        self.evaluate_fn = evaluate_fn
        seed_everything(cfg.seed + self.info.rank)
        self.gen = load_generator(cfg.base, device=self.info.device)
        from easytune.models.reward import RewardModel

        self.reward_model = RewardModel.from_checkpoint(cfg.reward).to(self.info.device)
        if cfg.checkpoint_frozen:  # frozen reward path: keep layer inputs only, recompute in backward
            from easytune.models.layers import set_gradient_checkpointing

            if self.gen.kind == "mld":
                set_gradient_checkpointing(self.gen.model.vae)
            set_gradient_checkpointing(self.reward_model)
        data = cfg.data or self.gen.data_dir
        if data is None:
            raise ConfigError("--data is required: the base checkpoint names no dataset")
        self.prompts = PromptSampler(dataset_prompts(data), cfg.seed, self.info.rank)
        self.objective = RewardObjective(self.gen, self.reward_model, cfg.amp)
        model = self.gen.trainable
        model.eval()  # dropout off: sampling during fine-tuning matches inference (see docs/methods.md)
        self.lora = apply_lora(model, cfg.lora_rank, cfg.lora_alpha) if cfg.lora_rank else None
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            params, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay
        )
        if cfg.reg_weight > 0:
            anchors = [p.detach().clone() for p in params]
            self.optimizer.register_step_post_hook(_proximal_hook(params, anchors, cfg.reg_weight))
        self.method = build_method(cfg.method, **cfg.method_options)
        self.gen.scheduler.set_timesteps(cfg.num_inference_steps)
        per_traj = sum(
            p.update
            for p in self.method.plan(
                [int(t) for t in self.gen.scheduler.timesteps], torch.Generator().manual_seed(0)
            )
        )
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine_lambda(cfg.warmup, cfg.steps * per_traj)
        )
        self.ema = EMA(model, cfg.ema) if cfg.ema else None
        self.trainer = Trainer(
            self.objective.denoise,
            self.gen.scheduler,
            self.objective.reward,
            method=self.method,
            optimizer=self.optimizer,
            guidance_scale=self.gen.guidance_scale if cfg.guidance_scale is None else cfg.guidance_scale,
            decode_fn=self.objective.decode if self.gen.decode is not None else None,
            max_grad_norm=cfg.max_grad_norm,
            lr_scheduler=self.lr_scheduler,
            latent_shape=self.gen.latent_shape,
            reward_weight=cfg.reward_weight,
            seed=cfg.seed + self.info.rank,
            grad_reducer=_grad_averager(self.info) if self.info.world_size > 1 else None,
        )
        if self.info.world_size > 1:
            for p in model.state_dict().values():
                torch.distributed.broadcast(p, 0)
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.elapsed = 0.0
        if cfg.resume:
            self._load(self.out / "last.pt")

    # ------------------------------------------------------------------------------------ checkpoints
    def _state(self) -> dict[str, Any]:
        return {
            "denoiser": self.gen.trainable.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "trainer": self.trainer.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "step": self.step,
            "elapsed": self.elapsed,
            "history": self.history,
            "config": asdict(self.cfg),
            "rng": torch.get_rng_state(),
        }

    def _load(self, path: Path) -> None:
        state = load_checkpoint(path)
        saved = state["config"]
        for key in ("method", "method_options", "base", "reward", "batch_size", "seed", "lora_rank"):
            if saved.get(key) != getattr(self.cfg, key):
                raise ConfigError(
                    f"--resume: {path} was run with {key}={saved.get(key)!r}, "
                    f"this run has {getattr(self.cfg, key)!r}"
                )
        self.gen.trainable.load_state_dict(state["denoiser"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.trainer.load_state_dict(state["trainer"])
        if self.ema and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        torch.set_rng_state(state["rng"])
        self.step, self.elapsed, self.history = (
            int(state["step"]),
            float(state["elapsed"]),
            list(state["history"]),
        )
        log.info("resumed %s at step %d", path, self.step)

    def save(self) -> None:
        if self.info.is_main:
            save_atomic(self._state(), self.out / "last.pt")

    def export(self) -> Path:
        """Write ``model.pt``: the fine-tuned model (EMA weights when enabled, LoRA merged)."""
        model = self.ema.module if self.ema else self.gen.trainable
        if self.lora:
            merge_lora(model)
        path = self.gen.save(self.out / "model.pt", model.state_dict(), meta={"finetune": asdict(self.cfg)})
        return path

    # ---------------------------------------------------------------------------------------- loop
    def train(self, on_step: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        """Run to ``cfg.steps`` trajectories or ``cfg.time_budget`` seconds of training (eval excluded)."""
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        # Rewritten from the checkpointed history: lines logged after the last checkpoint of a killed run go.
        metrics = (self.out / "metrics.jsonl").open("w")
        if self.info.is_main:
            metrics.writelines(json.dumps(row) + "\n" for row in self.history)
        tb = _tensorboard(self.out) if self.info.is_main else None
        steps = progress(
            range(self.step, cfg.steps),
            total=cfg.steps - self.step,
            desc=f"finetune {cfg.method}",
            enabled=cfg.progress and self.info.is_main,
        )
        try:
            for _ in steps:
                if cfg.time_budget is not None and self.elapsed >= cfg.time_budget:
                    log.info("time budget of %.0f s reached after %d steps", cfg.time_budget, self.step)
                    break
                captions, lengths = self.prompts.draw(self.step, cfg.batch_size)
                batch = self.objective.batch(captions, lengths, self.info.device)
                stats = all_reduce_mean(self.trainer.step(batch), self.info)
                if self.ema:
                    self.ema.update()
                self.step += 1
                self.elapsed += stats["seconds"]
                row = {"step": self.step, "time": self.elapsed, **stats}
                if cfg.eval_every and self.evaluate_fn and self.step % cfg.eval_every == 0:
                    row.update({f"eval/{k}": v for k, v in self.evaluate_fn(self.gen, self.step).items()})
                self.history.append(row)
                if self.info.is_main:
                    metrics.write(json.dumps(row) + "\n")
                    metrics.flush()
                    if tb is not None:
                        for k, v in row.items():
                            tb.add_scalar(k, v, self.step)
                if on_step is not None:
                    on_step(row)
                if cfg.ckpt_every and self.step % cfg.ckpt_every == 0:
                    self.save()
        finally:
            metrics.close()
            if tb is not None:
                tb.close()
        check_in_sync(self.gen.trainable, self.info)
        self.save()
        return self.history


def _tensorboard(out: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.info("tensorboard is not installed: metrics go to metrics.jsonl only")
        return None
    return SummaryWriter(str(out / "tb"))
