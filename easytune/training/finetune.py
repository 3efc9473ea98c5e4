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

import logging
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from easytune import methods
from easytune.checkpoint import check_writable_dir, load_checkpoint, save_atomic
from easytune.data.check import check_before_run
from easytune.errors import ConfigError
from easytune.generation import MotionPipeline, load_pipeline
from easytune.train_utils import EMA, lr_lambda, seed_everything
from easytune.trainer import Trainer
from easytune.training.distributed import DistInfo, all_reduce_mean, check_in_sync, init_distributed
from easytune.training.finetune_config import (
    LR_SCHEDULES,
    RESUME_CHECKED,
    FinetuneConfig,
    field_of,
    flag,
)
from easytune.training.loop import fit, restore_rng, rng_state
from easytune.training.lora import merge_lora
from easytune.training.objective import RewardObjective, build_finetuning
from easytune.training.tracking import RunLog

__all__ = [
    "LR_SCHEDULES",
    "FinetuneConfig",
    "PromptSampler",
    "RewardObjective",
    "Run",
]

log = logging.getLogger("easytune.finetune")

# What a run writes into its directory (a directory holding one of them holds a previous run).
RUN_FILES = ("last.pt", "model.pt", "metrics.jsonl")


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
    """A fine-tuning run in ``cfg.out``: builds everything, then ``train()``; ``evaluate_fn(pipe, step)`` is
    called every ``cfg.eval_every`` steps (and at the end) when given."""

    def __init__(
        self,
        cfg: FinetuneConfig,
        evaluate_fn: Callable[[MotionPipeline, int], dict[str, float]] | None = None,
    ) -> None:
        cfg.validate()
        self.cfg = cfg
        self.info = init_distributed(cfg.device)
        self.out = Path(cfg.out)
        resume_state = self._check_out_dir()  # before any model is built: a refused run costs nothing
        self.evaluate_fn = evaluate_fn
        seed_everything(cfg.seed + self.info.rank)
        self.pipe = load_pipeline(cfg.base, device=self.info.device)
        from easytune.models.reward import RewardModel

        self.reward_model = RewardModel.from_checkpoint(cfg.reward).to(self.info.device)
        data = cfg.data or self.pipe.data_dir
        if data is None:
            raise ConfigError("--data is required: the base checkpoint names no dataset")
        check_before_run(
            data, "finetune", skip=cfg.skip_data_check or not self.info.is_main, show_progress=cfg.progress
        )
        self.prompts = PromptSampler(dataset_prompts(data), cfg.seed, self.info.rank)
        parts = build_finetuning(
            self.pipe,
            self.reward_model,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            lora_rank=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            checkpoint_frozen=cfg.checkpoint_frozen,
            frame_layout=cfg.frame_layout,
            precision=cfg.precision,
            reward_terms=cfg.parsed_reward_terms(),
        )
        self.objective, self.optimizer, self.lora = parts.objective, parts.optimizer, parts.lora
        model = self.pipe.trainable
        params = parts.params
        if cfg.reg_weight > 0:
            anchors = [p.detach().clone() for p in params]
            self.optimizer.register_step_post_hook(_proximal_hook(params, anchors, cfg.reg_weight))
        self.method = methods.build(cfg.method, **cfg.method_options)
        self.pipe.scheduler.set_timesteps(cfg.num_inference_steps)
        # The LR is a function of the trajectory (stepped once per Trainer.step, not per update): methods with
        # one update per trajectory and EasyTune with K see the same schedule over the same trajectories.
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(cfg.lr_schedule, cfg.warmup, cfg.steps)
        )
        self.ema = EMA(model, cfg.ema) if cfg.ema else None
        self.trainer = Trainer(
            self.objective.denoise,
            self.pipe.scheduler,
            self.objective.reward_fn,
            method=self.method,
            optimizer=self.optimizer,
            guidance_scale=self.pipe.guidance_scale if cfg.guidance_scale is None else cfg.guidance_scale,
            decode_fn=self.objective.decode_fn,
            max_grad_norm=cfg.max_grad_norm,
            lr_scheduler=None,
            latent_shape=self.pipe.latent_shape,
            reward_weight=cfg.reward_weight,
            seed=cfg.seed + self.info.rank,
            grad_reducer=_grad_averager(self.info) if self.info.world_size > 1 else None,
            compile=cfg.compile,
        )
        if self.info.world_size > 1:
            for p in model.state_dict().values():
                torch.distributed.broadcast(p, 0)
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.elapsed = 0.0
        if resume_state is not None:
            self._load(self.out / "last.pt", resume_state)

    # ------------------------------------------------------------------------------------ checkpoints
    def _state(self) -> dict[str, Any]:
        return {
            "denoiser": self.pipe.trainable.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "trainer": self.trainer.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "step": self.step,
            "elapsed": self.elapsed,
            "history": self.history,
            "config": asdict(self.cfg),
            "rng": rng_state(),
        }

    def _check_out_dir(self) -> dict[str, Any] | None:
        """The run directory's checks, before anything is built: a previous run is never overwritten
        without ``--overwrite``; ``--resume`` needs ``last.pt`` and the saved options (every option that
        changes the run, ``RESUME_CHECKED``) unless allowed by ``--allow-changed``; temporary files of
        killed saves are removed. Returns the checkpoint to resume from (None: a fresh run)."""
        cfg, out = self.cfg, self.out
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out} is a file, not a run directory")
        if self.info.is_main:  # a folder that cannot be written is found now, not after training
            check_writable_dir(out, f"--out {out}")
        if self.info.is_main and out.is_dir():
            for stale in out.glob(".last.pt.*.tmp"):
                stale.unlink(missing_ok=True)
                log.info("removed %s (a save killed before it finished)", stale)
        previous = sorted(p.name for p in (out.iterdir() if out.is_dir() else ()) if p.name in RUN_FILES)
        if not cfg.resume:
            if previous and not cfg.overwrite:
                raise ConfigError(
                    f"--out {out} holds a previous run ({', '.join(previous)}): pass --resume to continue "
                    "it, --overwrite to replace it, or another --out"
                )
            return None
        path = out / "last.pt"
        if not path.is_file():
            raise ConfigError(f"--resume: {path} does not exist (nothing to continue in --out {out})")
        state = load_checkpoint(path)
        saved = state.get("config") or {}
        if "lr_schedule" not in saved:
            raise ConfigError(
                f"--resume: {path} was written by an older easytune whose LR schedule counted optimizer "
                "updates, not trajectories; it cannot be continued exactly (start a new run)"
            )
        allowed = {field_of(o) for o in cfg.allow_changed}
        defaults = FinetuneConfig()  # an option newer than the saved run: the run had its default
        for key in RESUME_CHECKED:
            old, new = saved.get(key, getattr(defaults, key)), getattr(cfg, key)
            if old == new or (isinstance(old, list) and tuple(old) == new):
                continue
            name = flag(key)
            old_s, new_s = ("unset" if v is None else repr(v) for v in (old, new))
            if key not in allowed:
                raise ConfigError(
                    f"--resume: {path} was run with {name} {old_s}, this run has {new_s}; resume with the "
                    f"saved value, or pass --allow-changed {name.lstrip('-')} to change it knowingly"
                )
            log.warning("--resume: %s changed from %s to %s (--allow-changed)", name, old_s, new_s)
        return state

    def _load(self, path: Path, state: dict[str, Any]) -> None:
        self.pipe.trainable.load_state_dict(state["denoiser"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        ranks = state.get("rank_states") or [{"trainer": state["trainer"], "rng": state["rng"]}]
        if len(ranks) != self.info.world_size:
            raise ConfigError(
                f"--resume: {path} was written by {len(ranks)} process(es), this run has "
                f"{self.info.world_size}; resume with the same number of processes"
            )
        own = ranks[self.info.rank]
        self.trainer.load_state_dict(own["trainer"])
        if self.ema and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        restore_rng(own["rng"], {}, str(path))
        self.step, self.elapsed, self.history = (
            int(state["step"]),
            float(state["elapsed"]),
            list(state["history"]),
        )
        log.info("resumed %s at step %d", path, self.step)

    def _rank_states(self) -> list[dict[str, Any]]:
        """Every rank's own random state (trainer generator, torch RNG): rank r resumes with entry r. A
        collective call: every rank must make it."""
        local = {"trainer": self.trainer.state_dict(), "rng": rng_state()}
        if self.info.world_size == 1:
            return [local]
        states: list[Any] = [None] * self.info.world_size
        torch.distributed.all_gather_object(states, local)
        return states

    def save(self) -> None:
        """Write ``last.pt`` (rank 0; every rank contributes its random state)."""
        ranks = self._rank_states()
        if self.info.is_main:
            save_atomic({**self._state(), "rank_states": ranks}, self.out / "last.pt")

    def export(self) -> Path:
        """Write ``model.pt``: the fine-tuned model (EMA weights when enabled, LoRA merged)."""
        model = self.ema.module if self.ema else self.pipe.trainable
        if self.lora:
            merge_lora(model)
        path = self.pipe.save(self.out / "model.pt", model.state_dict(), meta={"finetune": asdict(self.cfg)})
        return path

    # ---------------------------------------------------------------------------------------- loop
    def train(self, on_step: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        """Run to ``cfg.steps`` trajectories or ``cfg.time_budget`` seconds of training (eval excluded); the
        run directory gets metrics.jsonl, TensorBoard events, config.yaml and, at each evaluation, sample GIFs
        (``easytune.training.tracking``)."""
        cfg = self.cfg
        if self.step >= cfg.steps:
            raise ConfigError(
                f"--resume: {self.out / 'last.pt'} is already at trajectory {self.step} of --steps "
                f"{cfg.steps}; pass a larger --steps to go on"
            )
        main = self.info.is_main  # only rank 0 writes run files (other ranks would truncate them)
        run_log = (
            RunLog(self.out, start=self.step, rows=self.history, config=cfg, wandb=cfg.wandb)
            if main
            else None
        )

        def step(s: int) -> dict[str, Any]:
            captions, lengths = self.prompts.draw(self.step, cfg.batch_size)
            batch = self.objective.batch(captions, lengths, self.info.device)
            stats = all_reduce_mean(self.trainer.step(batch), self.info)
            self.lr_scheduler.step()
            if self.ema:
                self.ema.update()
            self.step = s
            self.elapsed += stats["seconds"]
            row = {"time": self.elapsed, **stats}
            if cfg.eval_every and self.evaluate_fn and s % cfg.eval_every == 0:
                row.update({f"eval/{k}": v for k, v in self.evaluate_fn(self.pipe, s).items()})
                if run_log is not None and cfg.sample_prompts:
                    self._log_samples(run_log, s)
            return row

        def logged(s: int, row: dict[str, float]) -> None:
            self.history.append({"step": s, **row})
            if on_step is not None:
                on_step(self.history[-1])

        try:
            fit(
                step,
                start=self.step,
                steps=cfg.steps,
                save=lambda s: self.save(),
                ckpt_every=cfg.ckpt_every,
                log=log,
                desc=f"finetune {cfg.method}",
                show_progress=cfg.progress and main,
                time_budget=cfg.time_budget,
                clock=lambda: self.elapsed,
                on_step=logged,
                run_log=run_log,
                keep=(),  # self.history holds the rows (they are checkpointed)
            )
        finally:
            if run_log is not None:
                run_log.close()
        check_in_sync(self.pipe.trainable, self.info)
        return self.history

    def _log_samples(self, run_log: RunLog, step: int) -> None:
        """``cfg.sample_prompts`` fixed prompts sampled with the current weights: RUN_DIR/samples/step_S.gif
        and a strip of frames to TensorBoard / wandb."""
        from easytune.render import features_to_joints, render_motions, render_strip

        cfg = self.cfg
        picks = np.random.default_rng([cfg.seed, 1]).choice(len(self.prompts.prompts), cfg.sample_prompts)
        captions = [self.prompts.prompts[i][0] for i in picks]
        lengths = [min(self.prompts.prompts[i][1], self.pipe.max_frames) for i in picks]
        feats = self.pipe.sample(captions, lengths, steps=cfg.num_inference_steps, seed=cfg.seed)
        joints = [features_to_joints(f) for f in feats]
        titles = [c[:40] for c in captions]
        folder = self.out / "samples"
        render_motions(joints, folder / f"step_{step:06d}.gif", titles=titles)
        run_log.image("samples", step, render_strip(joints, folder / f"step_{step:06d}.png", titles=titles))
