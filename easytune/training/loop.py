"""The one training loop every stage shares: seeded batches, random state, the update and the fit loop.

Pretraining (VAE, MLD denoiser, MDM), reward training (stage 1 and SPL), evaluator training and fine-tuning
keep only what is theirs (the loss, or ``Trainer.step``); what follows is written once here:

- ``epoch_batches`` / ``SeededBatches``: the batch of step ``s`` is a pure function of ``(seed, s)``
  (length-bucketed, seeded per epoch), so a resumed run sees exactly the batches of an uninterrupted one.
- ``rng_state`` / ``restore_rng``: the global torch RNG (dropout), every CUDA device's RNG and the stage's
  own generators, saved in a checkpoint and restored on resume. The loops draw from torch only (never from
  Python's ``random`` or NumPy's global state), so this is all the random state a run has.
- ``update``: NaN/inf guard on the loss, backward, optional clipping (guarded too), the optimizer step,
  the weight check, then LR scheduler and EMA.
- ``fit``: steps ``start + 1 .. steps`` under a progress bar, a time budget, windowed logging, a
  checkpoint every ``ckpt_every`` steps and always at the end.

Steps count from 1: "step s" is the s-th update; a checkpoint written after step s resumes at step s + 1.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from easytune.checkpoint import load_state_dict_strict, load_training_checkpoint, save_atomic
from easytune.errors import CheckpointError, ConfigError
from easytune.progress import progress
from easytune.train_utils import EMA, check_finite, check_weights

Stats = Mapping[str, "torch.Tensor | float"]


# ------------------------------------------------------------------------------------------------ batches
def epoch_batches(
    n: int, batch_size: int, seed: int, epoch: int, lengths: Any = None, bucket_pool: int = 0
) -> list[list[int]]:
    """Index batches of one epoch: a permutation seeded by ``(seed, epoch)`` cut into full batches (the
    ``n % batch_size`` left over wait for a later epoch). With ``bucket_pool`` > 0 and ``lengths`` [n], each
    run of ``bucket_pool * batch_size`` permuted items is sorted by length before cutting and the batch order
    is shuffled (seeded): batches of similar lengths, so little padding (the transformers' cost grows with
    the longest item of a batch)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    per_epoch = n // batch_size
    perm = torch.randperm(n, generator=gen)[: per_epoch * batch_size]
    if bucket_pool > 0 and lengths is not None:
        lengths = torch.as_tensor(np.asarray(lengths))
        pools = perm.split(bucket_pool * batch_size)
        perm = torch.cat([p[torch.argsort(lengths[p], stable=True)] for p in pools])
    batches = perm.view(per_epoch, batch_size)
    if bucket_pool > 0 and lengths is not None:
        batches = batches[torch.randperm(per_epoch, generator=gen)]
    return batches.tolist()


class SeededBatches:
    """``batches(step)`` -> the collated batch of ``step`` (0-based), a pure function of ``(seed, step)``:
    epoch ``step // (len(dataset) // batch_size)``, ``epoch_batches`` within it. Calls
    ``dataset.set_epoch(e)`` when the dataset has it (its crops and captions then depend on the epoch).
    ``dataset.lengths`` (or each item's ``length``) feed the length buckets."""

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        seed: int,
        *,
        collate: Callable | None = None,
        bucket_pool: int = 0,
    ) -> None:
        if collate is None:
            from easytune.data.humanml import collate_motion as collate
        n = len(dataset)
        if n < batch_size:
            raise ConfigError(f"the training split has {n} items, fewer than --batch-size {batch_size}")
        self.dataset, self.batch_size, self.seed, self.bucket_pool = dataset, batch_size, seed, bucket_pool
        self.collate = collate
        self.per_epoch = n // batch_size
        self.lengths = None
        if bucket_pool > 0:
            lengths = getattr(dataset, "lengths", None)
            self.lengths = np.asarray(
                [dataset[i]["length"] for i in range(n)] if lengths is None else lengths
            )
        self._plan: tuple[int, list[list[int]]] | None = None

    def indices(self, step: int) -> list[int]:
        """The dataset indices of the batch of ``step`` (switches the dataset to its epoch)."""
        epoch, k = divmod(step, self.per_epoch)
        if self._plan is None or self._plan[0] != epoch:
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(epoch)
            n = len(self.dataset)
            self._plan = (
                epoch,
                epoch_batches(n, self.batch_size, self.seed, epoch, self.lengths, self.bucket_pool),
            )
        return self._plan[1][k]

    def __call__(self, step: int) -> Any:
        return self.collate([self.dataset[i] for i in self.indices(step)])


# ------------------------------------------------------------------------------------------- random state
def rng_state(generators: Mapping[str, torch.Generator] | None = None) -> dict[str, Any]:
    """The random state of a run: ``torch`` (global CPU RNG), ``cuda`` (every device's, when CUDA is in use)
    and ``generators`` (the stage's own, by name)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    state["generators"] = {k: g.get_state() for k, g in (generators or {}).items()}
    return state


# generator names of checkpoints written before this module existed (pretraining, reward training)
_LEGACY_GENERATORS = ("generator", "noise")


def restore_rng(
    state: Any, generators: Mapping[str, torch.Generator] | None = None, source: str = ""
) -> None:
    """Restore what ``rng_state`` saved (``source`` names the checkpoint in errors). A checkpoint written on
    CUDA restores the CUDA RNGs when CUDA is in use here (same number of devices required)."""
    generators = dict(generators or {})
    if isinstance(state, torch.Tensor):  # fine-tuning checkpoints before this module: the global RNG only
        state = {"torch": state, "generators": {}}
    saved = dict(state.get("generators", {}))
    for legacy in _LEGACY_GENERATORS:
        if legacy in state and len(generators) == 1:
            saved.setdefault(next(iter(generators)), state[legacy])
    missing = sorted(set(generators) - set(saved))
    if missing:
        raise CheckpointError(f"{source}: the saved random state has no generator {missing}; cannot resume")
    torch.set_rng_state(state["torch"])
    for name, gen in generators.items():
        gen.set_state(saved[name])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        cuda = cuda if isinstance(cuda, list | tuple) else [cuda]
        if len(cuda) != torch.cuda.device_count():
            raise CheckpointError(
                f"{source}: written with {len(cuda)} CUDA device(s), this process sees "
                f"{torch.cuda.device_count()}; resume with the same devices (CUDA_VISIBLE_DEVICES)"
            )
        torch.cuda.set_rng_state_all(cuda)


# ---------------------------------------------------------------------------------- resumable checkpoints
def save_training(
    path: str | Path,
    model: Any,
    optimizer: torch.optim.Optimizer,
    generators: Mapping[str, torch.Generator],
    meta: dict[str, Any],
    step: int,
) -> None:
    """Write (atomically) the easytune checkpoint of ``model`` (a ``ConfigCheckpointMixin`` model: reward
    model, evaluator) with ``meta`` + ``step``, and what resuming needs: ``optimizer``, ``step``, ``rng``."""
    ckpt = model.checkpoint({**meta, "step": step})
    ckpt.update(optimizer=optimizer.state_dict(), step=step, rng=rng_state(generators))
    save_atomic(ckpt, path)


def resume_training(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generators: Mapping[str, torch.Generator],
    train_config: dict[str, Any],
    stage: str | None = None,
) -> int:
    """Load what ``save_training`` wrote into ``model``, ``optimizer`` and ``generators`` (and the global
    RNG) after checking its training options against ``train_config`` (and its stage); returns its step."""
    ckpt = load_training_checkpoint(path, train_config, stage)
    load_state_dict_strict(model, ckpt["state_dict"], str(path))
    optimizer.load_state_dict(ckpt["optimizer"])
    restore_rng(ckpt["rng"], generators, str(path))
    return int(ckpt["step"])


# ----------------------------------------------------------------------------------------------- update
def update(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    model: torch.nn.Module,
    *,
    what: str,
    step: int,
    max_grad_norm: float | None = None,
    lr_scheduler: Any = None,
    ema: EMA | None = None,
) -> None:
    """One optimizer update on ``loss`` (a 0-dim tensor): refused before stepping when the loss or the
    clipped gradient norm is NaN/inf (``NonFiniteLossError`` naming ``what`` and ``step``); after the step the
    trainable weights of ``model`` are checked (``NonFiniteError`` naming the tensor)."""
    check_finite(loss, f"{what} loss", step, optimizer)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if max_grad_norm is not None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        check_finite(grad_norm, f"{what} gradient norm", step, optimizer)
    optimizer.step()
    check_weights(model, optimizer, what, step)
    if lr_scheduler is not None:
        lr_scheduler.step()
    if ema is not None:
        ema.update()


# -------------------------------------------------------------------------------------------------- fit
@dataclass
class FitResult:
    """``history``: ``(step, stats as floats)`` per step this call ran; ``seconds``: wall time of the loop;
    ``last``: the last step done (``start`` when none ran)."""

    last: int
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    seconds: float = 0.0

    def series(self, key: str) -> list[tuple[int, float]]:
        return [(s, stats[key]) for s, stats in self.history if key in stats]


def _floats(stats: Stats) -> dict[str, float]:
    """Stats as Python floats, with one host read for all the tensors."""
    keys = [k for k, v in stats.items() if isinstance(v, torch.Tensor)]
    values = torch.stack([stats[k].detach().float().reshape(()).cpu() for k in keys]).tolist() if keys else []
    out = {k: float(v) for k, v in stats.items() if not isinstance(v, torch.Tensor)}
    out.update(zip(keys, values))
    return {k: out[k] for k in stats}


def fit(
    step_fn: Callable[[int], Stats],
    *,
    start: int,
    steps: int,
    save: Callable[[int], None],
    ckpt_every: int | None,
    log: logging.Logger,
    desc: str,
    log_every: int | None = None,
    show_progress: bool = True,
    time_budget: float | None = None,
    clock: Callable[[], float] | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    run_dir: str | Path | None = None,
    run_config: Any = None,
    wandb: str | None = None,
    run_log: Any = None,
    keep: Sequence[str] | None = None,
) -> FitResult:
    """Run ``step_fn(s)`` for ``s = start + 1 .. steps`` (it does the update and returns its stats) and call
    ``save(s)`` every ``ckpt_every`` steps and after the last step run (also when the time budget ends the
    loop early). ``on_step(s, stats)`` runs after each step, before its checkpoint; ``log_every`` logs the
    window means and seconds per step. ``time_budget`` is compared with ``clock()`` (default: wall seconds
    of this call) before each step. Raises ``ConfigError`` when ``start >= steps``.

    ``run_dir``: the run's log directory (``easytune.training.tracking.RunLog``: metrics.jsonl, TensorBoard,
    ``run_config`` as config.yaml, optional ``wandb`` project), made after the checks and closed at the end;
    or ``run_log``, a ``RunLog`` the caller made (and closes). One row per step, written before
    ``on_step``. ``keep``: the stats ``FitResult.history`` holds per step (None: all; ``()``: no history,
    for long runs whose rows go to the run log)."""
    if start >= steps:
        raise ConfigError(
            f"{desc}: already at step {start} of {steps}; pass --steps above it to train further"
        )
    t0 = time.perf_counter()
    clock = clock or (lambda: time.perf_counter() - t0)
    result = FitResult(start)
    window: dict[str, float] = {}
    window_start, window_t0 = start, t0
    own_log = None
    if run_dir is not None:
        from easytune.training.tracking import RunLog

        run_log = own_log = RunLog(run_dir, start=start, config=run_config, wandb=wandb)
    try:
        for s in progress(range(start + 1, steps + 1), total=steps - start, desc=desc, enabled=show_progress):
            if time_budget is not None and clock() >= time_budget:
                log.info("%s: time budget of %.0f s reached after %d steps", desc, time_budget, result.last)
                break
            stats = _floats(step_fn(s))
            if keep is None:
                result.history.append((s, stats))
            elif keep:
                result.history.append((s, {k: stats[k] for k in keep if k in stats}))
            result.last = s
            for k, v in stats.items():
                window[k] = window.get(k, 0.0) + v
            if run_log is not None:
                run_log.log(s, stats)
            if on_step is not None:
                on_step(s, stats)
            if log_every and (s % log_every == 0 or s == steps):
                n, now = s - window_start, time.perf_counter()
                means = " ".join(f"{k}={v / n:.4g}" for k, v in window.items())
                log.info("%s step %d/%d %s (%.3f s/step)", desc, s, steps, means, (now - window_t0) / n)
                window, window_start, window_t0 = {}, s, now
            if ckpt_every and s % ckpt_every == 0 and s < steps:
                save(s)
        if result.last > start:
            save(result.last)
    finally:
        if own_log is not None:
            own_log.close()
    result.seconds = time.perf_counter() - t0
    return result
