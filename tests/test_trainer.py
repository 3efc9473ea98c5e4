"""Trainer + methods against independent plain-autograd references (float64, tiny model, SGD).

Every reference below is written out here: two separate denoiser calls for guidance, the DDIM formulas,
the alphas read from ``alphas_cumprod`` by hand, gradients by ``torch.autograd.grad``, SGD by hand.
"""

from __future__ import annotations

import copy
import weakref

import pytest
import torch
from torch import nn

import easytune as et
from easytune.diffusion import DDIMScheduler, FlowMatchEulerDiscreteScheduler
from easytune.errors import ConfigError, NonFiniteLossError

MLD = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", set_alpha_to_one=False, steps_offset=1
)
B, L, D, C = 3, 2, 4, 3  # batch, latent tokens, latent dim, condition dim
LR = 0.05


class TinyDenoiser(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(D + C + 1, 16), nn.Tanh(), nn.Linear(16, D))

    def forward(self, x, t, cond):
        c = cond.unsqueeze(1).expand(-1, x.shape[1], -1)
        tt = (t.to(x.dtype) / 1000).reshape(-1, 1, 1).expand(-1, x.shape[1], 1)
        return self.net(torch.cat([x, c, tt], dim=-1))


class RecordingSGD(torch.optim.SGD):
    """Plain SGD that keeps a copy of the gradients it applies."""

    def __init__(self, params, lr):
        super().__init__(params, lr=lr)
        self.applied = []

    def step(self, closure=None):
        self.applied.append([p.grad.detach().clone() for g in self.param_groups for p in g["params"]])
        return super().step(closure)


def reward_fn(sample, batch):
    """Per-sample differentiable reward [B]."""
    diff = sample - batch["target"]
    return -(diff**2).mean(dim=(1, 2)) + 0.3 * torch.sin(sample).mean(dim=(1, 2))


def make_setup(n_steps=5, guidance=True, seed=0):
    torch.manual_seed(seed)
    model = TinyDenoiser().double()
    sched = DDIMScheduler(**MLD)
    sched.set_timesteps(n_steps)
    batch = {
        "cond": torch.randn(B, C, dtype=torch.float64),
        "uncond": torch.zeros(B, C, dtype=torch.float64) if guidance else None,
        "x_T": torch.randn(B, L, D, dtype=torch.float64),
        "target": torch.randn(B, L, D, dtype=torch.float64),
    }
    return model, sched, batch


def make_trainer(model, sched, method, w=3.0, **kw):
    opt = RecordingSGD(model.parameters(), lr=LR)
    kw.setdefault("max_grad_norm", None)
    return et.Trainer(model, sched, reward_fn, method=method, optimizer=opt, guidance_scale=w, **kw), opt


# ------------------------------------------------------------------------------------------ reference
def ref_alphas(sched, t):
    ac = sched.alphas_cumprod.double()
    prev = t - 1000 // sched.num_inference_steps
    return ac[t], ac[prev] if prev >= 0 else ac[0]


def ref_eps(model, x, t, batch, w):
    tt = torch.full((x.shape[0],), t)
    e_c = model(x, tt, batch["cond"])
    if batch["uncond"] is None:
        return e_c
    e_u = model(x, tt, batch["uncond"])
    return e_u + w * (e_c - e_u)


def ref_x0(eps, x, a_t):
    return (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()


def ref_next(eps, x, a_t, a_prev):
    return a_prev.sqrt() * ref_x0(eps, x, a_t) + (1 - a_prev).sqrt() * eps


def ref_reward(sample, batch, decode=None):
    return reward_fn(decode(sample, batch) if decode else sample, batch)


def params_of(model):
    return list(model.parameters())


def assert_grads(got, expected):
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12)


def sgd(model, grads, lr=LR):
    with torch.no_grad():
        for p, g in zip(model.parameters(), grads):
            p -= lr * g


def clip(grads, max_norm):
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    scale = min(1.0, max_norm / (float(norm) + 1e-6))
    return [g * scale for g in grads]


# --------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("guidance", [True, False])
@pytest.mark.parametrize("weighting", ["uniform", "early"])
def test_easytune_step_variant_equals_sequential_reference(guidance, weighting):
    model, sched, batch = make_setup(guidance=guidance)
    ref_model = copy.deepcopy(model)
    k = 3
    trainer, opt = make_trainer(model, sched, et.methods.EasyTune(k=k, weighting=weighting))
    stats = trainer.step(batch)
    assert stats["updates"] == k and len(opt.applied) == k

    ts = sched.timesteps.tolist()
    weights = {"uniform": [1, 1, 1], "early": [1.5, 1.0, 0.5]}[weighting]
    x, upd = batch["x_T"], 0
    for i, t in enumerate(ts):
        a_t, a_prev = ref_alphas(sched, t)
        if i >= len(ts) - k:
            eps = ref_eps(ref_model, x.detach(), t, batch, 3.0)
            loss = -weights[upd] * ref_reward(ref_x0(eps, x, a_t), batch).mean()
            grads = torch.autograd.grad(loss, params_of(ref_model))
            assert_grads(opt.applied[upd], grads)
            sgd(ref_model, grads)
            upd += 1
            x = ref_next(eps.detach(), x, a_t, a_prev)
        else:
            with torch.no_grad():
                x = ref_next(ref_eps(ref_model, x, t, batch, 3.0), x, a_t, a_prev)
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_easytune_weights_change_mid_trajectory_and_clipping():
    """Step variant with SGD + clipping: later steps must see the updated weights (as the reference does)."""
    model, sched, batch = make_setup(n_steps=4)
    ref_model = copy.deepcopy(model)
    trainer, opt = make_trainer(model, sched, et.methods.EasyTune(k=4), max_grad_norm=0.05)
    trainer.step(batch)
    x = batch["x_T"]
    for i, t in enumerate(sched.timesteps.tolist()):
        a_t, a_prev = ref_alphas(sched, t)
        eps = ref_eps(ref_model, x.detach(), t, batch, 3.0)
        grads = clip(
            torch.autograd.grad(-ref_reward(ref_x0(eps, x, a_t), batch).mean(), params_of(ref_model)), 0.05
        )
        assert_grads(opt.applied[i], grads)
        sgd(ref_model, grads)
        x = ref_next(eps.detach(), x, a_t, a_prev)
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_easytune_chain_variant_uses_frozen_weights_and_policy_copy():
    model, sched, batch = make_setup()
    ref_model = copy.deepcopy(model)
    k = 3
    trainer, opt = make_trainer(model, sched, et.methods.EasyTune(k=k, variant="chain"))
    trainer.step(batch)
    # reference: trajectory and all gradients at the start weights; SGD applied to a policy copy
    policy = copy.deepcopy(ref_model)
    ts = sched.timesteps.tolist()
    x, upd = batch["x_T"], 0
    for i, t in enumerate(ts):
        a_t, a_prev = ref_alphas(sched, t)
        if i >= len(ts) - k:
            eps = ref_eps(ref_model, x.detach(), t, batch, 3.0)
            grads = torch.autograd.grad(-ref_reward(ref_x0(eps, x, a_t), batch).mean(), params_of(ref_model))
            assert_grads(opt.applied[upd], grads)
            sgd(policy, grads)
            upd += 1
            x = ref_next(eps.detach(), x, a_t, a_prev)
        else:
            with torch.no_grad():
                x = ref_next(ref_eps(ref_model, x, t, batch, 3.0), x, a_t, a_prev)
    for p, q in zip(model.parameters(), policy.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
    # and it differs from the step variant (the later gradients there see updated weights)
    step_model, _, _ = make_setup()
    make_trainer(step_model, sched, et.methods.EasyTune(k=k))[0].step(batch)
    assert not torch.allclose(step_model.net[0].weight, model.net[0].weight, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_draft_gradient_equals_autograd_through_undetached_chain(k):
    model, sched, batch = make_setup()
    ref_model = copy.deepcopy(model)
    trainer, opt = make_trainer(model, sched, et.methods.DRaFT(k=k))
    stats = trainer.step(batch)
    assert stats["updates"] == 1 and len(opt.applied) == 1
    ts = sched.timesteps.tolist()
    x = batch["x_T"]
    for i, t in enumerate(ts):
        a_t, a_prev = ref_alphas(sched, t)
        with torch.set_grad_enabled(i >= len(ts) - k):
            x = ref_next(ref_eps(ref_model, x, t, batch, 3.0), x, a_t, a_prev)
    grads = torch.autograd.grad(-ref_reward(x, batch).mean(), params_of(ref_model))
    assert_grads(opt.applied[0], grads)
    # the recursive term matters: detaching the inputs gives a different gradient when k > 1
    if k > 1:
        x = batch["x_T"]
        for i, t in enumerate(ts):
            a_t, a_prev = ref_alphas(sched, t)
            with torch.set_grad_enabled(i >= len(ts) - k):
                eps = ref_eps(ref_model, x.detach(), t, batch, 3.0)
                x = ref_next(eps, x.detach() if i < len(ts) - 1 else x, a_t, a_prev)
        wrong = torch.autograd.grad(-ref_reward(x, batch).mean(), params_of(ref_model))
        assert not torch.allclose(wrong[0], grads[0], rtol=1e-6)


def test_decode_fn_runs_before_the_reward():
    model, sched, batch = make_setup()
    ref_model = copy.deepcopy(model)
    proj = torch.randn(D, D, dtype=torch.float64)

    def decode(x0, b):
        return torch.tanh(x0 @ proj)

    trainer, opt = make_trainer(model, sched, et.methods.DRaFT(k=2), decode_fn=decode)
    trainer.step(batch)
    x = batch["x_T"]
    for i, t in enumerate(sched.timesteps.tolist()):
        a_t, a_prev = ref_alphas(sched, t)
        with torch.set_grad_enabled(i >= 3):
            x = ref_next(ref_eps(ref_model, x, t, batch, 3.0), x, a_t, a_prev)
    grads = torch.autograd.grad(-ref_reward(x, batch, decode).mean(), params_of(ref_model))
    assert_grads(opt.applied[0], grads)


def test_refl_early_stop_and_single_grad_step():
    model, sched, batch = make_setup(n_steps=8)
    ref_model = copy.deepcopy(model)
    trainer, opt = make_trainer(model, sched, et.methods.ReFL(m=4))
    stats = trainer.step(batch)
    t_min = trainer.last_plan[-1].index
    assert (
        4 <= t_min <= 7
        and stats["steps"] == t_min + 1
        and [p.grad for p in trainer.last_plan].count(True) == 1
    )
    x = batch["x_T"]
    for i, t in enumerate(sched.timesteps.tolist()[: t_min + 1]):
        a_t, a_prev = ref_alphas(sched, t)
        if i == t_min:
            eps = ref_eps(ref_model, x, t, batch, 3.0)
            grads = torch.autograd.grad(-ref_reward(ref_x0(eps, x, a_t), batch).mean(), params_of(ref_model))
        else:
            with torch.no_grad():
                x = ref_next(ref_eps(ref_model, x, t, batch, 3.0), x, a_t, a_prev)
    assert_grads(opt.applied[0], grads)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_drtune_stop_gradient_placement(seed):
    model, sched, batch = make_setup(n_steps=10)
    ref_model = copy.deepcopy(model)
    trainer, opt = make_trainer(model, sched, et.methods.DRTune(k=3, m=4), seed=seed)
    trainer.step(batch)
    plan = trainer.last_plan
    trained = {p.index for p in plan if p.grad}
    t_min = plan[-1].index
    assert all(p.detach_input for p in plan) and 6 <= t_min <= 9
    offset = min(trained)
    assert offset in (0, 1) and trained == {offset, offset + 3, offset + 6}  # k=3 of 10: spacing 3

    def reference(detach_input):
        x = batch["x_T"]
        for i, t in enumerate(sched.timesteps.tolist()[: t_min + 1]):
            a_t, a_prev = ref_alphas(sched, t)
            with torch.set_grad_enabled(i in trained):
                eps = ref_eps(ref_model, x.detach() if detach_input else x, t, batch, 3.0)
            if i == t_min:
                loss = -ref_reward(ref_x0(eps, x, a_t), batch).mean()
                return torch.autograd.grad(loss, params_of(ref_model))
            x = ref_next(eps, x, a_t, a_prev)  # x keeps its graph through the affine update

    grads = reference(detach_input=True)
    assert_grads(opt.applied[0], grads)
    assert not torch.allclose(reference(detach_input=False)[0], grads[0], rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_drtune_x0_prediction_keeps_the_early_stop_input_attached(seed):
    """prediction_type="sample": x0_hat at t_min is the network output, so DRTune runs that step with grad
    and its input attached; the gradient reaches t_min's weights and, through x_t, the trained steps."""
    model, _, batch = make_setup(n_steps=10)
    sched = DDIMScheduler(**MLD, prediction_type="sample")
    sched.set_timesteps(10)
    ref_model = copy.deepcopy(model)
    trainer, opt = make_trainer(model, sched, et.methods.DRTune(k=3, m=4), seed=seed)
    trainer.step(batch)
    plan = trainer.last_plan
    t_min = plan[-1].index
    trained = {p.index for p in plan[:-1] if p.grad}
    assert plan[-1].grad and not plan[-1].detach_input and all(p.detach_input for p in plan[:-1])
    assert len(trained) >= 2

    x = batch["x_T"]
    for i, t in enumerate(sched.timesteps.tolist()[: t_min + 1]):
        a_t, a_prev = ref_alphas(sched, t)
        if i == t_min:
            x0 = ref_eps(ref_model, x, t, batch, 3.0)  # the guided x0, input attached
            loss = -ref_reward(x0, batch).mean()
            grads = torch.autograd.grad(loss, params_of(ref_model))
            break
        with torch.set_grad_enabled(i in trained):
            x0 = ref_eps(ref_model, x.detach(), t, batch, 3.0)  # the guided x0 prediction
        eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    assert_grads(opt.applied[0], grads)
    assert all(torch.isfinite(g).all() for g in grads) and float(sum(g.abs().sum() for g in grads)) > 0


def test_a_plan_without_a_gradient_path_names_the_method_step_and_plan():
    class NoGraph(et.methods.Method):
        def plan(self, timesteps, generator, prediction_type="epsilon"):
            n = len(timesteps)
            plans = [et.methods.StepPlan(i) for i in range(n - 1)]
            return plans + [et.methods.StepPlan(n - 1, reward_on="x0_hat", update=True)]  # grad=False

    model, sched, batch = make_setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = et.Trainer(model, sched, reward_fn, method=NoGraph(), optimizer=opt)
    with pytest.raises(ConfigError, match=r"NoGraph.*sampling step 4 .*timestep 1,.*epsilon.*x0_hat"):
        trainer.step(batch)


def test_alignprop_truncation_with_checkpointing_equals_draft_tail():
    n = 8
    model, sched, batch = make_setup(n_steps=n)
    ref_model = copy.deepcopy(model)
    method = et.methods.AlignProp(mean=5.0, std=1.5, low=1, high=7)
    trainer, opt = make_trainer(model, sched, method, seed=3)
    trainer.step(batch)
    plan = trainer.last_plan
    start = next(p.index for p in plan if p.grad)
    assert all(p.grad and p.checkpoint and not p.detach_input for p in plan[start:])
    assert not any(p.grad for p in plan[:start])
    x = batch["x_T"]
    for i, t in enumerate(sched.timesteps.tolist()):
        a_t, a_prev = ref_alphas(sched, t)
        with torch.set_grad_enabled(i >= start):
            x = ref_next(ref_eps(ref_model, x, t, batch, 3.0), x, a_t, a_prev)
    assert_grads(opt.applied[0], torch.autograd.grad(-ref_reward(x, batch).mean(), params_of(ref_model)))


def test_draft_lv_averages_renoised_one_step_gradients():
    n_lv = 3
    model, sched, batch = make_setup()
    ref_model = copy.deepcopy(model)
    trainer, opt = make_trainer(model, sched, et.methods.DRaFTLV(n=n_lv), seed=11)
    stats = trainer.step(batch)
    assert stats["updates"] == 1 and len(opt.applied) == 1
    ts = sched.timesteps.tolist()
    x = batch["x_T"]
    with torch.no_grad():
        for t in ts:
            a_t, a_prev = ref_alphas(sched, t)
            x = ref_next(ref_eps(ref_model, x, t, batch, 3.0), x, a_t, a_prev)
    gen = torch.Generator().manual_seed(11)  # the trainer's generator: x_T is given, so only re-noising draws
    a_last, a_final = ref_alphas(sched, ts[-1])
    total = 0
    for _ in range(n_lv):
        noise = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        x_t = a_last.sqrt() * x + (1 - a_last).sqrt() * noise
        x0 = ref_next(ref_eps(ref_model, x_t, ts[-1], batch, 3.0), x_t, a_last, a_final)
        total = total - ref_reward(x0, batch).mean() / n_lv
    assert_grads(opt.applied[0], torch.autograd.grad(total, params_of(ref_model)))


def test_eta_noise_comes_from_the_trainer_generator():
    model, sched, batch = make_setup()
    ref_model = copy.deepcopy(model)
    trainer, opt = make_trainer(model, sched, et.methods.DRaFT(k=2), eta=0.8, seed=5)
    trainer.step(batch)
    gen = torch.Generator().manual_seed(5)
    x = batch["x_T"]
    for i, t in enumerate(sched.timesteps.tolist()):
        a_t, a_prev = ref_alphas(sched, t)
        with torch.set_grad_enabled(i >= 3):
            eps = ref_eps(ref_model, x, t, batch, 3.0)
            std = 0.8 * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
            noise = torch.randn(x.shape, generator=gen, dtype=torch.float64)
            x = a_prev.sqrt() * ref_x0(eps, x, a_t) + (1 - a_prev - std**2).sqrt() * eps + std * noise
    assert_grads(opt.applied[0], torch.autograd.grad(-ref_reward(x, batch).mean(), params_of(ref_model)))


def test_batch_rewards_are_averaged_per_sample():
    """Loss = -mean_b r_b: the gradient of a batch of 3 is the mean of the three single-sample gradients."""
    model, sched, batch = make_setup()
    base = copy.deepcopy(model)
    trainer, opt = make_trainer(model, sched, et.methods.ReFL(m=1))
    trainer.step(batch)
    per_sample = []
    for b in range(B):
        single = {k: (v[b : b + 1] if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        m = copy.deepcopy(base)
        _, opt_b = (t := make_trainer(m, sched, et.methods.ReFL(m=1)))
        t[0].step(single)
        per_sample.append(opt_b.applied[0])
    mean = [sum(gs) / B for gs in zip(*per_sample)]
    assert_grads(opt.applied[0], mean)


def test_reward_shape_and_differentiability_are_checked():
    model, sched, batch = make_setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = et.Trainer(
        model, sched, lambda s, b: reward_fn(s, b).mean(), method=et.methods.ReFL(m=1), optimizer=opt
    )
    with pytest.raises(ConfigError, match=r"shape \[3\]"):
        trainer.step(batch)
    trainer = et.Trainer(
        model, sched, lambda s, b: reward_fn(s.detach(), b), method=et.methods.ReFL(m=1), optimizer=opt
    )
    with pytest.raises(ConfigError, match="differentiable"):
        trainer.step(batch)


def test_nan_loss_and_nan_gradient_stop_before_any_update():
    model, sched, batch = make_setup()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = et.Trainer(
        model,
        sched,
        lambda s, b: reward_fn(s, b) * float("nan"),
        method=et.methods.EasyTune(k=2),
        optimizer=opt,
    )
    with pytest.raises(NonFiniteLossError, match="loss"):
        trainer.step(batch)
    handle = model.net[0].weight.register_hook(lambda g: g * float("inf"))
    trainer = et.Trainer(model, sched, reward_fn, method=et.methods.EasyTune(k=2), optimizer=opt)
    with pytest.raises(NonFiniteLossError, match="gradient"):
        trainer.step(batch)
    handle.remove()
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q)
    assert all(p.grad is None for p in model.parameters())


class SavedBytes:
    """Peak bytes of tensors saved for backward that are alive at the same time."""

    def __init__(self):
        self.live = self.peak = 0

    def pack(self, t):
        holder = type("Held", (), {})()
        holder.t = t
        size = t.numel() * t.element_size()
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(holder, self._free, size)
        return holder

    def _free(self, size):
        self.live -= size

    @staticmethod
    def unpack(holder):
        return holder.t


def _peak_saved(method, n_steps=8):
    model, sched, batch = make_setup(n_steps=n_steps)
    trainer, _ = make_trainer(model, sched, method)
    meter = SavedBytes()
    with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
        trainer.step(batch)
    return meter.peak


def test_easytune_memory_is_flat_in_k():
    one, eight = _peak_saved(et.methods.EasyTune(k=1)), _peak_saved(et.methods.EasyTune(k=8))
    assert one > 0 and eight == one
    # the measurement is sensitive: DRaFT keeps all K graphs alive
    d1, d8 = _peak_saved(et.methods.DRaFT(k=1)), _peak_saved(et.methods.DRaFT(k=8))
    assert d8 > 6 * d1


def test_alignprop_checkpointing_saves_activation_memory():
    def alignprop(checkpoint):
        return et.methods.AlignProp(mean=2.0, std=0.0, low=1, high=7, checkpoint=checkpoint)

    plain, ckpt = _peak_saved(alignprop(False)), _peak_saved(alignprop(True))
    assert plain == _peak_saved(et.methods.DRaFT(k=6))  # start 2 of 8 steps: the same graph as DRaFT-6
    assert ckpt < plain / 4


def test_stats_lr_scheduler_and_generated_noise():
    model, sched, batch = make_setup()
    batch = {k: v for k, v in batch.items() if k != "x_T"}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (step + 1))
    trainer = et.Trainer(
        model,
        sched,
        reward_fn,
        method=et.methods.EasyTune(k=3),
        optimizer=opt,
        guidance_scale=7.5,
        lr_scheduler=lr_sched,
        latent_shape=(L, D),
        seed=4,
    )
    state = trainer.state_dict()
    stats = trainer.step(batch)
    assert lr_sched.last_epoch == 3 and stats["lr"] == pytest.approx(0.1 / 4)
    assert {
        "reward",
        "reward_last",
        "loss",
        "updates",
        "steps",
        "grad_norm",
        "lr",
        "seconds",
        "seconds_per_update",
    } <= set(stats)
    assert all(isinstance(v, float) for v in stats.values())
    assert stats["updates"] == 3 and stats["steps"] == 5 and stats["seconds_per_update"] > 0
    # same generator state -> same x_T -> same reward (weights restored)
    first = stats["reward"]
    model2, _, _ = make_setup()
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1)
    trainer2 = et.Trainer(
        model2,
        sched,
        reward_fn,
        method=et.methods.EasyTune(k=3),
        optimizer=opt2,
        lr_scheduler=torch.optim.lr_scheduler.LambdaLR(opt2, lambda step: 1.0 / (step + 1)),
        guidance_scale=7.5,
        latent_shape=(L, D),
        seed=99,
    )
    trainer2.load_state_dict(state)
    assert trainer2.step(batch)["reward"] == first


def test_trainer_configuration_errors():
    model, sched, batch = make_setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="method"):
        et.Trainer(model, sched, reward_fn, method="easytune", optimizer=opt)
    with pytest.raises(ConfigError, match="set_timesteps"):
        et.Trainer(model, DDIMScheduler(**MLD), reward_fn, method=et.methods.DRaFT(1), optimizer=opt)
    with pytest.raises(ConfigError, match="DDIMScheduler"):
        et.Trainer(model, et.diffusion.DDPMScheduler(), reward_fn, method=et.methods.DRaFT(1), optimizer=opt)
    trainer = et.Trainer(model, sched, reward_fn, method=et.methods.EasyTune(k=6), optimizer=opt)
    with pytest.raises(ConfigError, match="k=6 exceeds the 5 sampling steps"):
        trainer.step(batch)
    trainer = et.Trainer(model, sched, reward_fn, method=et.methods.DRaFT(1), optimizer=opt)
    with pytest.raises(ConfigError, match="latent_shape"):
        trainer.step({"cond": batch["cond"]})
    with pytest.raises(ConfigError, match="'cond'"):
        trainer.step({"x_T": batch["x_T"]})


def test_diffusers_scheduler_is_accepted():
    diffusers = pytest.importorskip("diffusers")
    model, sched, batch = make_setup()
    ref_sched = diffusers.DDIMScheduler(**MLD, clip_sample=False)
    ref_sched.set_timesteps(5)
    a, _ = make_trainer(copy.deepcopy(model), sched, et.methods.EasyTune(k=2))
    b, _ = make_trainer(copy.deepcopy(model), ref_sched, et.methods.EasyTune(k=2))
    assert b.scheduler.timesteps.tolist() == sched.timesteps.tolist()
    assert a.step(batch)["reward"] == b.step(batch)["reward"]


@pytest.mark.gpu
def test_cuda_peak_memory_reported_and_flat_in_k():
    def peak(method):
        torch.manual_seed(0)
        model = TinyDenoiser().double().cuda()
        sched = DDIMScheduler(**MLD)
        sched.set_timesteps(8)
        batch = {
            "cond": torch.randn(512, C, dtype=torch.float64, device="cuda"),
            "uncond": torch.zeros(512, C, dtype=torch.float64, device="cuda"),
            "target": torch.randn(512, 64, D, dtype=torch.float64, device="cuda"),
        }
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        trainer = et.Trainer(model, sched, reward_fn, method=method, optimizer=opt, latent_shape=(64, D))
        return trainer.step(batch)["peak_memory_gb"]

    one, eight = peak(et.methods.EasyTune(k=1)), peak(et.methods.EasyTune(k=8))
    assert eight <= one * 1.05 + 1e-3
    assert peak(et.methods.DRaFT(k=8)) > 2 * eight


@pytest.mark.parametrize("fused", [False, True])
def test_non_finite_weights_after_an_update_stop_training_and_name_the_tensor(fused):
    """lr=inf: the gradients are finite, the weights after the step are not (the issue's probe)."""
    model, sched, batch = make_setup()
    model = model.float()
    batch = {k: None if v is None else v.float() for k, v in batch.items()}
    opt = torch.optim.SGD(model.parameters(), lr=float("inf"), fused=fused or None)
    trainer = et.Trainer(model, sched, reward_fn, method=et.methods.EasyTune(k=2), optimizer=opt)
    assert trainer._sync_free is fused
    with pytest.raises(
        et.errors.NonFiniteError,
        match=r"weight net\.0\.weight is not finite after update 0.*"
        r"learning rate \[inf\]",
    ):
        trainer.step(batch)


def test_huge_finite_weights_are_not_reported_as_non_finite_and_the_learning_rate_is_named():
    """lr=1e30: the weights stay finite (their float32 2-norm would overflow; the check accumulates in
    float64); the NaN reward that follows names the learning rate as the likely cause."""
    from easytune.train_utils import weights_finite

    assert bool(weights_finite([torch.full((4,), 1e30), torch.ones(2)]))
    assert bool(weights_finite([torch.full((1000,), 3e38), torch.full((8,), 3e38, dtype=torch.bfloat16)]))
    assert not bool(weights_finite([torch.ones(2), torch.tensor([1.0, float("nan")])]))
    assert not bool(weights_finite([torch.tensor([float("-inf")])]))
    model, sched, batch = make_setup()
    model = model.float()
    batch = {k: None if v is None else v.float() for k, v in batch.items()}
    opt = torch.optim.SGD(model.parameters(), lr=1e30)
    trainer = et.Trainer(model, sched, reward_fn, method=et.methods.EasyTune(k=3), optimizer=opt)
    with pytest.raises(NonFiniteLossError, match=r"learning rate \[1e\+30\] is not finite or absurdly"):
        trainer.step(batch)


def test_trainable_weights_outside_the_optimizer_are_refused_by_name():
    model, sched, batch = make_setup()
    opt = torch.optim.SGD(model.net[0].parameters(), lr=0.1)  # net.2 would collect gradients forever
    with pytest.raises(ConfigError, match=r"not in the optimizer.*net\.2\.weight"):
        et.Trainer(model, sched, reward_fn, method=et.methods.ReFL(m=1), optimizer=opt)
    model.net[2].requires_grad_(False)
    et.Trainer(model, sched, reward_fn, method=et.methods.ReFL(m=1), optimizer=opt).step(batch)
    assert all(p.grad is None for p in model.net[2].parameters())


@pytest.mark.parametrize("fused", [False, True])
def test_bad_library_inputs_are_named(fused):
    model, sched, batch = make_setup()
    model = model.float()
    batch = {k: None if v is None else v.float() for k, v in batch.items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, fused=fused or None)

    def trainer(**kw):
        reward = kw.pop("reward", reward_fn)
        return et.Trainer(model, sched, reward, method=et.methods.ReFL(m=1), optimizer=opt, **kw)

    for name, value in (("guidance_scale", float("nan")), ("eta", float("inf")), ("reward_weight", -1.0)):
        with pytest.raises(ConfigError, match=f"{name} must be a finite number >= 0"):
            trainer(**{name: value})
    with pytest.raises(ConfigError, match="max_grad_norm must be finite and > 0"):
        trainer(max_grad_norm=float("nan"))
    cases = [
        ({**batch, "x_T": batch["x_T"][:2]}, r"x_T'\] has batch size 2, batch\['cond'\] 3"),
        ({**batch, "uncond": batch["uncond"][:1]}, r"batch\['uncond'\] has batch size \(1,\)"),
        ({**batch, "x_T": batch["x_T"].double()}, r"x_T'\] is torch.float64 but the trained weights"),
        ({**batch, "x_T": batch["x_T"] * float("nan")}, r"x_T'\] holds NaN or inf"),
    ]
    for bad, message in cases:
        with pytest.raises(ConfigError, match=message):
            trainer().step(bad)
    with pytest.raises(ConfigError, match="floating rewards"):
        trainer(reward=lambda s, b: (reward_fn(s, b) > 0).long()).step(batch)


# ------------------------------------------------------------------------------- flow-matching models
# The same references for a flow model: x_t = (1 - s) x0 + s eps, the network predicts v = eps - x0 (or x0),
# one Euler step x_next = x + (s_next - s) v; the sigmas read by hand from the scheduler's table.
def make_flow_setup(n_steps=5, prediction_type="flow_prediction", seed=0):
    model, _, batch = make_setup(n_steps, seed=seed)
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0, prediction_type=prediction_type)
    sched.set_timesteps(n_steps)
    return model, sched, batch


def ref_sigmas(sched, i):
    """(sigma_i, sigma_i+1) as stored: float32."""
    return sched.sigmas[i], sched.sigmas[i + 1]


def ref_flow(out, x, s, s_next, prediction_type="flow_prediction"):
    """(x0_hat, x_next) of the guided output ``out``; the Euler step's sigma difference is taken in the
    table's float32, as diffusers does (then exact in float64)."""
    if prediction_type == "flow_prediction":
        return x - s.double() * out, x + (s_next - s).double() * out
    s, s_next = s.double(), s_next.double()
    eps = (x - (1 - s) * out) / s
    return out, (1 - s_next) * out + s_next * eps


def test_flow_easytune_step_variant_equals_sequential_reference():
    model, sched, batch = make_flow_setup()
    ref_model = copy.deepcopy(model)
    k = 3
    trainer, opt = make_trainer(model, sched, et.methods.EasyTune(k=k))
    assert trainer.step(batch)["updates"] == k and len(opt.applied) == k
    ts = sched.timesteps.tolist()
    assert all(isinstance(t, float) for t in ts)
    x, upd = batch["x_T"], 0
    for i, t in enumerate(ts):
        s, s_next = ref_sigmas(sched, i)
        if i >= len(ts) - k:
            v = ref_eps(ref_model, x.detach(), t, batch, 3.0)
            x0, x_next = ref_flow(v, x, s, s_next)
            grads = torch.autograd.grad(-ref_reward(x0, batch).mean(), params_of(ref_model))
            assert_grads(opt.applied[upd], grads)
            sgd(ref_model, grads)
            upd += 1
            x = x_next.detach()
        else:
            with torch.no_grad():
                x = ref_flow(ref_eps(ref_model, x, t, batch, 3.0), x, s, s_next)[1]
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("prediction_type", ["flow_prediction", "flow_sample"])
@pytest.mark.parametrize("k", [1, 3])
def test_flow_draft_gradient_equals_autograd_through_the_chain(k, prediction_type):
    model, sched, batch = make_flow_setup(prediction_type=prediction_type)
    ref_model = copy.deepcopy(model)
    trainer, opt = make_trainer(model, sched, et.methods.DRaFT(k=k))
    trainer.step(batch)
    x = batch["x_T"]
    for i, t in enumerate(sched.timesteps.tolist()):
        with torch.set_grad_enabled(i >= 5 - k):
            x = ref_flow(ref_eps(ref_model, x, t, batch, 3.0), x, *ref_sigmas(sched, i), prediction_type)[1]
    assert_grads(opt.applied[0], torch.autograd.grad(-ref_reward(x, batch).mean(), params_of(ref_model)))


def test_flow_draft_lv_renoises_along_the_flow_interpolation():
    n_lv = 3
    model, sched, batch = make_flow_setup()
    ref_model = copy.deepcopy(model)
    trainer, opt = make_trainer(model, sched, et.methods.DRaFTLV(n=n_lv), seed=11)
    trainer.step(batch)
    ts = sched.timesteps.tolist()
    x = batch["x_T"]
    with torch.no_grad():
        for i, t in enumerate(ts):
            x = ref_flow(ref_eps(ref_model, x, t, batch, 3.0), x, *ref_sigmas(sched, i))[1]
    gen = torch.Generator().manual_seed(11)
    s, s_next = ref_sigmas(sched, len(ts) - 1)
    total = 0
    for _ in range(n_lv):
        noise = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        x_t = (1 - s.double()) * x + s.double() * noise
        x_end = ref_flow(ref_eps(ref_model, x_t, ts[-1], batch, 3.0), x_t, s, s_next)[1]
        total = total - ref_reward(x_end, batch).mean() / n_lv
    assert_grads(opt.applied[0], torch.autograd.grad(total, params_of(ref_model)))


def test_flow_refl_and_alignprop_match_their_references():
    model, sched, batch = make_flow_setup(n_steps=8)
    ref_model = copy.deepcopy(model)
    trainer, opt = make_trainer(model, sched, et.methods.ReFL(m=4))
    trainer.step(batch)
    t_min = trainer.last_plan[-1].index
    x = batch["x_T"]
    for i, t in enumerate(sched.timesteps.tolist()[: t_min + 1]):
        with torch.set_grad_enabled(i == t_min):
            x0, x_next = ref_flow(ref_eps(ref_model, x, t, batch, 3.0), x, *ref_sigmas(sched, i))
        x = x_next
    assert_grads(opt.applied[0], torch.autograd.grad(-ref_reward(x0, batch).mean(), params_of(ref_model)))

    model, sched, batch = make_flow_setup(n_steps=8)
    ref_model = copy.deepcopy(model)
    trainer, opt = make_trainer(model, sched, et.methods.AlignProp(mean=5.0, std=1.5, low=1, high=7), seed=3)
    trainer.step(batch)
    start = next(p.index for p in trainer.last_plan if p.grad)
    x = batch["x_T"]
    for i, t in enumerate(sched.timesteps.tolist()):
        with torch.set_grad_enabled(i >= start):
            x = ref_flow(ref_eps(ref_model, x, t, batch, 3.0), x, *ref_sigmas(sched, i))[1]
    assert_grads(opt.applied[0], torch.autograd.grad(-ref_reward(x, batch).mean(), params_of(ref_model)))


@pytest.mark.parametrize("prediction_type", ["flow_prediction", "flow_sample"])
def test_flow_drtune_matches_its_reference(prediction_type):
    """Velocity: x0_hat = x - s v is affine in x_t, so the early stop keeps its input detached; x0
    prediction (flow_sample): the early stop keeps its input attached, as for DDIM's ``sample``."""
    model, sched, batch = make_flow_setup(n_steps=10, prediction_type=prediction_type)
    ref_model = copy.deepcopy(model)
    trainer, opt = make_trainer(model, sched, et.methods.DRTune(k=3, m=4), seed=1)
    trainer.step(batch)
    plan = trainer.last_plan
    t_min, trained = plan[-1].index, {p.index for p in plan[:-1] if p.grad}
    attached = prediction_type == "flow_sample"
    assert plan[-1].detach_input is not attached
    x = batch["x_T"]
    for i, t in enumerate(sched.timesteps.tolist()[: t_min + 1]):
        keep = attached and i == t_min
        with torch.set_grad_enabled(i in trained or keep or i == t_min and plan[-1].grad):
            out = ref_eps(ref_model, x if keep else x.detach(), t, batch, 3.0)
        x0, x_next = ref_flow(out, x, *ref_sigmas(sched, i), prediction_type)
        x = x_next
    assert_grads(opt.applied[0], torch.autograd.grad(-ref_reward(x0, batch).mean(), params_of(ref_model)))
