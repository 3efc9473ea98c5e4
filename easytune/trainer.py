"""``Trainer.step(batch)``: sample one trajectory (DDIM or flow Euler), let the method decide, back-propagate,
update.

The trainer sees only callables, so it is drop-in for any model:

- ``denoise_fn(x_t [B, ...], t [B], cond) -> output [B, ...]`` in the scheduler's prediction type (t int64
  for DDIM, float32 ``sigma * num_train_timesteps`` for a flow scheduler);
  with guidance it is called once per step on the doubled batch ``cat[x, x], cat[t, t], cat[cond, uncond]``.
- ``decode_fn(x0 [B, ...], batch) -> sample`` (optional, e.g. the VAE decoder of a latent model).
- ``reward_fn(sample, batch) -> Tensor [B]``: one differentiable reward per sample; every loss term is
  ``-lambda_t * reward_weight * reward.mean()`` (a mean over the batch, never a per-sample scalar).

Each step runs ``easytune.ops.guided_step`` (guidance + x0_hat + DDIM or Euler step) with per-sample alphas
(a flow's sigmas) from ``scheduler.step_levels``. What carries gradients, where the loss terms are and when
the optimizer steps is the method's ``StepPlan`` list (see ``easytune.methods``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from easytune.diffusion import DDIMScheduler, FlowMatchEulerDiscreteScheduler, GuidedStep, sampling_scheduler
from easytune.errors import ConfigError, NonFiniteError, NonFiniteLossError
from easytune.methods import Method, StepPlan
from easytune.train_utils import check_finite, likely_cause, non_finite_weight_error, weights_finite

COMPILE_MODES = (None, "default", "reduce-overhead")
NON_FINITE_X_T = "Trainer: batch['x_T'] holds NaN or inf values (the trajectory's initial noise)"
RewardFn = Callable[[Any, Mapping[str, Any]], torch.Tensor]
DecodeFn = Callable[[torch.Tensor, Mapping[str, Any]], Any]


SAMPLERS = (DDIMScheduler, FlowMatchEulerDiscreteScheduler)


def _as_sampler(
    scheduler: Any, num_inference_steps: int | None
) -> DDIMScheduler | FlowMatchEulerDiscreteScheduler:
    """An easytune DDIM or flow Euler scheduler (a diffusers one is converted through its config)."""
    if not isinstance(scheduler, SAMPLERS):
        names = [cls.__name__ for cls in SAMPLERS]
        if type(scheduler).__name__ not in names or not hasattr(scheduler, "config"):
            raise ConfigError(
                f"Trainer: scheduler must be an easytune or diffusers {' or '.join(names)}, got "
                f"{type(scheduler).__name__} (fine-tuning samples with DDIM or the flow Euler step; build "
                "one with easytune.diffusion.sampling_scheduler(your_scheduler))"
            )
        steps = scheduler.num_inference_steps
        scheduler = sampling_scheduler({"_class_name": type(scheduler).__name__, **scheduler.config})
        if steps is not None:
            scheduler.set_timesteps(steps)
    if num_inference_steps is not None:
        scheduler.set_timesteps(num_inference_steps)
    if scheduler.num_inference_steps is None:
        raise ConfigError(
            "Trainer: the scheduler has no sampling timesteps; call scheduler.set_timesteps(n) "
            "(MLD: 50) or pass num_inference_steps=n"
        )
    return scheduler


def _first_tensor(tree: Any) -> torch.Tensor | None:
    if isinstance(tree, torch.Tensor):
        return tree
    items = tree.values() if isinstance(tree, Mapping) else tree if isinstance(tree, (list, tuple)) else ()
    for item in items:
        found = _first_tensor(item)
        if found is not None:
            return found
    return None


def _swap_data(params: list[torch.Tensor], others: list[torch.Tensor]) -> None:
    """Exchange the storage of ``params`` and ``others`` in place (calling it twice restores both)."""
    for i, p in enumerate(params):
        p.data, others[i] = others[i], p.data


class Trainer:
    """Reward fine-tuning of a diffusion model by one of ``easytune.methods``.

    Args:
        denoise_fn, scheduler, reward_fn: see the module docstring; ``scheduler`` is an easytune or diffusers
            ``DDIMScheduler`` or ``FlowMatchEulerDiscreteScheduler`` with ``set_timesteps`` done (or pass
            ``num_inference_steps``).
        method: an ``easytune.methods.Method`` (EasyTune, DRaFT, DRaFTLV, ReFL, DRTune, AlignProp).
        optimizer: over the trainable parameters that ``denoise_fn`` uses.
        guidance_scale: CFG weight w (used when the batch has ``uncond``).
        decode_fn: applied to the sample before ``reward_fn`` (None: the reward sees the sample itself).
        max_grad_norm: clip the global gradient norm before every update (None: no clipping).
        lr_scheduler: stepped after every optimizer update.
        latent_shape: per-sample shape of x_T (without the batch dim), used when the batch has no ``x_T``.
        num_inference_steps: if given, ``scheduler.set_timesteps(num_inference_steps)``.
        eta: DDIM eta (0 = deterministic; noise comes from the trainer's generator).
        reward_weight: lambda_reward, multiplies every loss term.
        seed: seeds the trainer's CPU generator (x_T, DDIM and re-noising noise, the methods' random draws).
        backend: ``ops.guided_step`` backend (None: ``EASYTUNE_GUIDED_STEP_BACKEND`` / auto).
        grad_reducer: called with the list of gradients before every update, before clipping (data-parallel
            runs average them across processes here, as ``DistributedDataParallel`` would).
        compile: None (eager), ``"default"`` or ``"reduce-overhead"``: ``torch.compile`` the denoiser, the
            no-grad steps and the gradient steps separately; ``reduce-overhead`` replays CUDA graphs for the
            no-grad steps on CUDA. The first trajectories compile (slow); later ones reuse the code.
    """

    def __init__(
        self,
        denoise_fn: Callable[..., torch.Tensor],
        scheduler: Any,
        reward_fn: RewardFn,
        *,
        method: Method,
        optimizer: torch.optim.Optimizer,
        guidance_scale: float = 1.0,
        decode_fn: DecodeFn | None = None,
        max_grad_norm: float | None = 1.0,
        lr_scheduler: Any = None,
        latent_shape: tuple[int, ...] | None = None,
        num_inference_steps: int | None = None,
        eta: float = 0.0,
        reward_weight: float = 1.0,
        seed: int = 0,
        backend: str | None = None,
        grad_reducer: Callable[[list[torch.Tensor]], None] | None = None,
        compile: str | None = None,
    ) -> None:
        if not isinstance(method, Method):
            raise ConfigError(
                f"Trainer: method must be an easytune.methods.Method (e.g. et.methods.EasyTune(k=10)), "
                f"got {type(method).__name__}"
            )
        if max_grad_norm is not None and not 0 < max_grad_norm < math.inf:
            raise ConfigError(f"Trainer: max_grad_norm must be finite and > 0, or None; got {max_grad_norm}")
        scalars = (("guidance_scale", guidance_scale), ("eta", eta), ("reward_weight", reward_weight))
        for name, value in scalars:
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"Trainer: {name} must be a finite number >= 0, got {value!r}")
        self.denoise_fn = denoise_fn
        self.scheduler = _as_sampler(scheduler, num_inference_steps)
        self.reward_fn = reward_fn
        self.method = method
        self.optimizer = optimizer
        self.guidance_scale = float(guidance_scale)
        self.decode_fn = decode_fn
        self.max_grad_norm = max_grad_norm
        self.lr_scheduler = lr_scheduler
        self.latent_shape = tuple(latent_shape) if latent_shape is not None else None
        self.eta = float(eta)
        self.reward_weight = float(reward_weight)
        self.backend = backend
        self.grad_reducer = grad_reducer
        if compile not in COMPILE_MODES:
            raise ConfigError(f"Trainer: compile must be one of {COMPILE_MODES}, got {compile!r}")
        self.compile = compile
        # Two compiled copies of the denoiser: the no-grad sampling steps (CUDA graphs replayed under
        # "reduce-overhead": static buffers, fixed shapes) and the gradient steps (inductor, no graphs).
        self._denoise_nograd = self._denoise_grad = denoise_fn
        if compile is not None:
            self._denoise_nograd = torch.compile(denoise_fn, mode=compile)
            self._denoise_grad = torch.compile(denoise_fn, mode="default")
        self.generator = torch.Generator().manual_seed(seed)
        self.num_updates = 0
        self.last_plan: list[StepPlan] = []
        self._params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
        if not self._params:
            raise ConfigError("Trainer: the optimizer has no parameter that requires grad")
        if isinstance(denoise_fn, torch.nn.Module):  # its other trainable weights would pile up gradients
            held = {id(p) for p in self._params}
            stray = [n for n, p in denoise_fn.named_parameters() if p.requires_grad and id(p) not in held]
            if stray:
                raise ConfigError(
                    f"Trainer: denoise_fn has parameters that require grad but are not in the optimizer "
                    f"(their gradients would accumulate unbounded): {stray[:6]}"
                    f"{' ...' if len(stray) > 6 else ''}; add them to the optimizer or call "
                    "requires_grad_(False) on them"
                )
        # An optimizer that takes GradScaler's on-device skip (fused Adam / AdamW / SGD) lets the NaN guard
        # run without host syncs; others are guarded by reading the loss and norm at every update.
        self._sync_free = bool(getattr(optimizer, "_step_supports_amp_scaling", False))
        self._steps: GuidedStep | None = None
        self._steps_of: Any = None

    # ------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The trainer's own state for exact resume (the optimizer / LR scheduler save their own)."""
        return {"generator": self.generator.get_state(), "num_updates": self.num_updates}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.num_updates = int(state["num_updates"])

    # ------------------------------------------------------------------------------------------- step
    def step(self, batch: Mapping[str, Any]) -> dict[str, float]:
        """One sampled trajectory and all of its parameter updates.

        ``batch``: ``cond`` (required), ``uncond`` (None / absent: no guidance), ``x_T`` (optional initial
        noise [B, ...]), anything else for ``reward_fn`` / ``decode_fn``. Returns floats: ``reward`` (mean
        over the loss terms), ``reward_last`` (the last loss term's), ``loss`` (mean loss term), ``updates``,
        ``steps`` (denoising steps run), ``grad_norm`` (mean, before clipping), ``lr``, ``seconds``,
        ``seconds_per_update``, on CUDA ``peak_memory_gb``, and with a composite reward (a ``reward_fn`` with
        ``pop_terms``, ``easytune.rewards.Composite``) ``reward/<term>`` for each term (its mean).
        """
        if not isinstance(batch, Mapping) or "cond" not in batch:
            raise ConfigError("Trainer.step: batch must be a dict with at least 'cond'")
        with torch.enable_grad():
            return self._run(batch)

    def _run(self, batch: Mapping[str, Any]) -> dict[str, float]:
        cond, uncond = batch["cond"], batch.get("uncond")
        x = self._initial_sample(batch, cond)
        x_T_ok = torch.isfinite(x).all()  # read with the statistics: a NaN x_T is named, not blamed on the lr
        if not self._sync_free and not bool(x_T_ok):  # the synchronous guard would stop at the first loss
            raise ConfigError(NON_FINITE_X_T)
        cuda = x.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(x.device)
        start = time.perf_counter()
        steps = self._guided_step()
        timesteps = steps.timesteps
        cond_in = steps.conditions(cond, uncond)  # cat[cond, uncond], once per trajectory
        if getattr(self.method, "wants_schedule", False):  # alpha_bar of each timestep (host values)
            table = self.scheduler.alphas_cumprod_of(torch.tensor(timesteps))
            schedule = {"alphas_cumprod": table.tolist()}
        else:
            schedule = {}
        plans = self.method.plan(timesteps, self.generator, steps.prediction_type, **schedule)
        self._check_plan(plans, len(timesteps))
        self.last_plan = plans
        self.optimizer.zero_grad(set_to_none=True)
        policy = [p.detach().clone() for p in self._params] if self.method.frozen_sampler else None
        pop_terms = getattr(self.reward_fn, "pop_terms", None)  # a composite reward's per-term means
        if pop_terms is not None:
            pop_terms()  # what a failed trajectory may have left
        # Statistics stay on the device (0-d tensors) and are read once, after the trajectory.
        rewards: list[torch.Tensor] = []
        losses: list[torch.Tensor] = []
        norms: list[torch.Tensor] = []
        finite: list[torch.Tensor] = []
        weights_ok: list[torch.Tensor] = []
        update_steps: list[int] = []
        chain_end = None
        for plan in plans:
            if plan.renoise:
                chain_end = x.detach() if chain_end is None else chain_end
                x = steps.add_noise(chain_end, self._randn(chain_end.shape, chain_end), plan.index)
            x0_hat, x_prev = self._denoise(x, plan, steps, cond_in)
            if plan.reward_on is not None:
                reward = self._reward(x0_hat if plan.reward_on == "x0_hat" else x_prev, batch, x.shape[0])
                loss = -(plan.weight * self.reward_weight) * reward.mean()
                if not self._sync_free:
                    self._guard(loss, "reward loss")
                if not loss.requires_grad:
                    self.optimizer.zero_grad(set_to_none=True)
                    raise ConfigError(self._no_graph_message(plan, timesteps, x0_hat, x_prev))
                loss.backward()
                rewards.append(reward.detach().mean())
                losses.append(loss.detach())
                if plan.update:
                    norm, ok, w_ok = self._update(policy, losses[-1], plan.normalize_grad)
                    norms.append(norm)
                    finite.append(ok)
                    weights_ok.append(w_ok)
                    update_steps.append(plan.index)
                x_prev = x_prev.detach()
            x = x_prev
        if policy is not None:
            _swap_data(self._params, policy)  # theta <- theta' (the policy copy that received the updates)
        terms = pop_terms() if pop_terms is not None else {}
        term_values = [v for name in terms for v in terms[name]]
        values = self._read([*rewards, *losses, *norms, *finite, *weights_ok, *term_values, x_T_ok])
        if not values.pop():
            self.optimizer.zero_grad(set_to_none=True)
            raise ConfigError(NON_FINITE_X_T)
        n_r, n_u = len(rewards), len(norms)
        reward_v, loss_v, norm_v, ok_v, w_ok_v, term_v = (
            values[:n_r],
            values[n_r : 2 * n_r],
            values[2 * n_r : 2 * n_r + n_u],
            values[2 * n_r + n_u : 2 * n_r + 2 * n_u],
            values[2 * n_r + 2 * n_u : 2 * n_r + 3 * n_u],
            values[2 * n_r + 3 * n_u :],
        )
        first_bad_weights = w_ok_v.index(0.0) if not all(w_ok_v) else n_u
        if first_bad_weights < n_u and (all(ok_v) or first_bad_weights <= ok_v.index(0.0)):
            self.optimizer.zero_grad(set_to_none=True)
            raise self._non_finite_weights(self.num_updates - n_u + first_bad_weights)
        if not all(ok_v):
            self.optimizer.zero_grad(set_to_none=True)
            bad = ok_v.index(0.0)
            raise NonFiniteLossError(
                f"the reward loss or its gradient norm is not finite at update "
                f"{self.num_updates - n_u + bad} "
                f"(sampling step {update_steps[bad]}, timestep {timesteps[update_steps[bad]]}; loss "
                f"{loss_v}, gradient norms {norm_v}); that update was skipped and training stopped. Likely "
                f"cause: {likely_cause(self.optimizer, self._absurd_options())}, or the inputs."
            )
        if cuda:
            torch.cuda.synchronize(x.device)
        seconds = time.perf_counter() - start
        stats = {
            "reward": sum(reward_v) / n_r,
            "reward_last": reward_v[-1],
            "loss": sum(loss_v) / n_r,
            "updates": float(n_u),
            "steps": float(len(plans)),
            "grad_norm": sum(norm_v) / n_u,
            "lr": float(self.optimizer.param_groups[0]["lr"]),
            "seconds": seconds,
            "seconds_per_update": seconds / n_u,
        }
        for name, calls in terms.items():  # each term's mean over the trajectory's reward evaluations
            stats[f"reward/{name}"] = sum(term_v[: len(calls)]) / len(calls)
            term_v = term_v[len(calls) :]
        if cuda:
            stats["peak_memory_gb"] = torch.cuda.max_memory_allocated(x.device) / 2**30
        return stats

    @staticmethod
    def _read(values: list[torch.Tensor]) -> list[float]:
        """The one read of a trajectory (a device sync on a GPU): its 0-d statistics as floats."""
        return torch.stack(values).double().tolist()

    def _guided_step(self) -> GuidedStep:
        """The ``GuidedStep`` of the scheduler's current timesteps (rebuilt after ``set_timesteps``)."""
        if self._steps is None or self._steps_of is not self.scheduler.timesteps:
            self._steps = GuidedStep(
                self.denoise_fn,
                self.scheduler,
                guidance_scale=self.guidance_scale,
                eta=self.eta,
                backend=self.backend,
            )
            self._steps_of = self.scheduler.timesteps
        return self._steps

    # ---------------------------------------------------------------------------------------- pieces
    def _check_plan(self, plans: list[StepPlan], n_steps: int) -> None:
        n_chain = sum(not p.renoise for p in plans)
        name = type(self.method).__name__
        head = plans[:n_chain]
        if any(p.renoise for p in head) or [p.index for p in head] != list(range(n_chain)):
            raise ConfigError(f"{name}.plan must list steps 0, 1, ... in order, re-noised steps last")
        if any(not 0 <= p.index < n_steps for p in plans):
            raise ConfigError(f"{name}.plan has a step index outside [0, {n_steps})")
        losses = [p for p in plans if p.reward_on is not None]
        if not losses or not losses[-1].update:
            raise ConfigError(f"{name}.plan must end its loss terms with an update")

    def _no_graph_message(
        self, plan: StepPlan, timesteps: list[int], x0_hat: torch.Tensor, x_prev: torch.Tensor
    ) -> str:
        """Why a loss term has no autograd graph: the method's plan or a non-differentiable reward path."""
        name = type(self.method).__name__
        target = x0_hat if plan.reward_on == "x0_hat" else x_prev
        where = (
            f"{name} ({self.method!r}) plan {plan} at sampling step {plan.index} "
            f"(timestep {timesteps[plan.index]}, prediction_type "
            f"{self.scheduler.config.prediction_type!r})"
        )
        if not target.requires_grad:
            return (
                f"Trainer: the loss of {where} has no graph: the reward target {plan.reward_on!r} does not "
                "depend on any trainable weight (no earlier step of this plan kept a graph that reaches it, "
                "and this step runs without one). The method's plan cannot train on this prediction type."
            )
        return (
            f"Trainer: the loss of {where} has no graph although the reward target does: reward_fn and "
            "decode_fn must be differentiable (no .detach() / torch.no_grad() / .item() inside)"
        )

    def _non_finite_weights(self, update: int) -> NonFiniteError:
        """The error for weights that went NaN / inf at ``update``: which tensor, and the likely cause."""
        owner = getattr(self.denoise_fn, "__self__", self.denoise_fn)  # a module or an object owning it
        named = getattr(owner, "named_parameters", None)
        names = {id(p): n for n, p in named()} if callable(named) else {}
        causes = self._absurd_options()
        return non_finite_weight_error(self._params, names, self.optimizer, f"after update {update}", causes)

    def _absurd_options(self) -> list[str]:
        """Options that would explain a non-finite update (non-finite or above 1e6)."""
        return [
            f"{label}={value}"
            for label, value in [
                ("guidance_scale", self.guidance_scale),
                ("reward_weight", self.reward_weight),
            ]
            if not math.isfinite(value) or abs(value) > 1e6
        ]

    def _initial_sample(self, batch: Mapping[str, Any], cond: Any) -> torch.Tensor:
        x_T = batch.get("x_T")
        ref = _first_tensor(cond)
        if ref is None or ref.dim() == 0:
            raise ConfigError("Trainer: batch['cond'] must contain a tensor with a batch dimension")
        uncond_ref = _first_tensor(batch.get("uncond"))
        if uncond_ref is not None and (uncond_ref.dim() == 0 or uncond_ref.shape[0] != ref.shape[0]):
            raise ConfigError(
                f"Trainer: batch['uncond'] has batch size {tuple(uncond_ref.shape)[:1]}, batch['cond'] "
                f"{ref.shape[0]}: one null condition per sample"
            )
        if x_T is not None:
            if not isinstance(x_T, torch.Tensor) or not x_T.is_floating_point() or x_T.dim() < 2:
                raise ConfigError("Trainer: batch['x_T'] must be a floating tensor [B, ...]")
            if self.latent_shape is not None and tuple(x_T.shape[1:]) != self.latent_shape:
                raise ConfigError(
                    f"Trainer: batch['x_T'] has per-sample shape {tuple(x_T.shape[1:])}, "
                    f"expected latent_shape {self.latent_shape}"
                )
            if x_T.shape[0] != ref.shape[0]:
                raise ConfigError(
                    f"Trainer: batch['x_T'] has batch size {x_T.shape[0]}, batch['cond'] {ref.shape[0]}"
                )
            if x_T.device != ref.device:
                raise ConfigError(f"Trainer: batch['x_T'] is on {x_T.device}, batch['cond'] on {ref.device}")
            weight = next(iter(self._params))
            if x_T.dtype != weight.dtype and weight.dtype in (torch.float32, torch.float64):
                raise ConfigError(
                    f"Trainer: batch['x_T'] is {x_T.dtype} but the trained weights are {weight.dtype}; "
                    "pass x_T in the model's dtype"
                )
            return x_T
        if self.latent_shape is None:
            raise ConfigError(
                "Trainer: the batch has no 'x_T' and the trainer has no latent_shape; pass one of them"
            )
        dtype = ref.dtype if ref.is_floating_point() else torch.get_default_dtype()
        like = torch.empty((), dtype=dtype, device=ref.device)
        return self._randn((ref.shape[0], *self.latent_shape), like) * self.scheduler.init_noise_sigma

    def _randn(self, shape: tuple[int, ...] | torch.Size, like: torch.Tensor) -> torch.Tensor:
        """Standard normal noise from the trainer's CPU generator (the same numbers on every device), moved
        to ``like``'s device; to a GPU through pinned memory without blocking (no host sync)."""
        noise = torch.randn(shape, generator=self.generator, dtype=like.dtype)
        if like.device.type == "cuda":
            return noise.pin_memory().to(like.device, non_blocking=True)
        return noise.to(like.device)

    def _denoise(
        self, x: torch.Tensor, plan: StepPlan, steps: GuidedStep, cond_in: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One guided DDIM step from ``x`` at step ``plan.index`` -> (x0_hat, x_prev), graphs as ``plan``
        says: the denoiser sees ``x.detach()`` if ``plan.detach_input``, runs with grad if ``plan.grad``
        (gradient-checkpointed if ``plan.checkpoint``); the DDIM update always uses the undetached ``x``."""
        model_input = x.detach() if plan.detach_input else x
        with torch.set_grad_enabled(plan.grad):
            out_cond, out_uncond = steps.model_outputs(
                model_input,
                plan.index,
                cond_in,
                checkpoint=plan.grad and plan.checkpoint,
                denoise_fn=self._denoise_grad if plan.grad else self._denoise_nograd,
            )
        if self.compile == "reduce-overhead" and not plan.grad:  # a CUDA-graph output is overwritten
            out_cond = out_cond.clone()  # by the next replay: keep this step's
            out_uncond = None if out_uncond is None else out_uncond.clone()
        noise = self._randn(x.shape, x) if self.eta > 0 else None
        _, x0_hat, x_prev = steps.update(out_cond, out_uncond, x, plan.index, noise)
        return x0_hat, x_prev

    def _reward(self, target: torch.Tensor, batch: Mapping[str, Any], batch_size: int) -> torch.Tensor:
        sample = self.decode_fn(target, batch) if self.decode_fn is not None else target
        reward = self.reward_fn(sample, batch)
        if isinstance(reward, torch.Tensor) and not reward.is_floating_point():
            raise ConfigError(
                f"reward_fn must return floating rewards (differentiable), got dtype {reward.dtype}"
            )
        if not isinstance(reward, torch.Tensor) or tuple(reward.shape) != (batch_size,):
            got = tuple(reward.shape) if isinstance(reward, torch.Tensor) else type(reward).__name__
            raise ConfigError(
                f"reward_fn must return one reward per sample, a tensor of shape [{batch_size}], got {got}"
            )
        return reward

    def _guard(self, value: torch.Tensor, what: str) -> None:
        """``check_finite``, dropping the accumulated gradients before the error propagates."""
        try:
            check_finite(value, what, self.num_updates, self.optimizer)
        except NonFiniteLossError:
            self.optimizer.zero_grad(set_to_none=True)
            raise

    def _update(
        self, policy: list[torch.Tensor] | None, loss: torch.Tensor, normalize: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip, optimizer + LR-scheduler step, zero_grad; returns the gradient norm before clipping and
        whether loss and norm were finite (0-d tensors, not read here); ``normalize``: scale the gradient to
        unit norm first (``StepPlan.normalize_grad``). With an optimizer that can skip a
        step on the device (``fused=True`` Adam / AdamW / SGD: ``found_inf``, as ``GradScaler`` uses) a
        non-finite update is skipped without a host sync; any other optimizer is guarded by reading the
        norm. With ``policy`` (chain variant) the step goes to the policy copy, not to the sampling
        weights."""
        params = [p for p in self._params if p.grad is not None]
        if not params:
            raise ConfigError(
                "Trainer: no optimizer parameter received a gradient; the optimizer must hold the "
                "weights that denoise_fn uses"
            )
        if self.grad_reducer is not None:
            self.grad_reducer([p.grad for p in params])
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        ok = torch.isfinite(norm) & torch.isfinite(loss)
        if not self._sync_free:
            self._guard(norm, "gradient norm")
        clip_norm = norm
        if normalize:  # unit-norm update (EasyTune's gradnorm weighting); the returned norm is the raw one
            torch._foreach_mul_([p.grad for p in params], 1.0 / norm.clamp_min(1e-12))
            clip_norm = torch.ones_like(norm)
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grads_with_norm_(params, self.max_grad_norm, clip_norm)
        if policy is not None:
            _swap_data(self._params, policy)
        try:
            if self._sync_free:  # skipped on the device when not ok
                self.optimizer.grad_scale, self.optimizer.found_inf = None, (~ok).float()
            self.optimizer.step()
        finally:
            if self._sync_free:
                del self.optimizer.grad_scale, self.optimizer.found_inf
            if policy is not None:
                _swap_data(self._params, policy)
        # One fused finiteness reduction over the updated weights (read with the trajectory's statistics;
        # at once on the synchronous path)
        with torch.no_grad():
            weights_ok = weights_finite(self._params)
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.num_updates += 1
        if not self._sync_free and not bool(weights_ok):
            raise self._non_finite_weights(self.num_updates - 1)
        return norm.detach(), ok, weights_ok
