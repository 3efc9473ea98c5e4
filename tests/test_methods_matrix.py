"""Every method x every prediction type (diffusion and flow matching) x {MLD-like latent, MDM-like frame}
model through ``Trainer.step``.

Over 20 trajectories (different random draws of ReFL / DRTune / AlignProp) each update must get a finite,
non-negligible gradient and change the parameters. The MDM-like layout uses the MDM scheduler preset,
whose last DDIM step must return the clean prediction (else DRaFT-1 and DRaFT-LV get no gradient).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import easytune as et
from easytune.diffusion import DDIMScheduler, FlowMatchEulerDiscreteScheduler
from easytune.errors import ConfigError
from easytune.models.presets import MDM_SCHEDULER, MLD_SCHEDULER

B, C = 2, 3  # batch, condition width
LAYOUTS = {
    # MLD: a latent [B, 2, 4] decoded by a frozen linear "VAE" to features [B, 6, 5]
    "latent": {"shape": (2, 4), "scheduler": MLD_SCHEDULER, "decode": True},
    # MDM: the features [B, 6, 5] themselves, no decoder
    "frame": {"shape": (6, 5), "scheduler": MDM_SCHEDULER, "decode": False},
}
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "flow_prediction", "flow_sample")
N_STEPS = 10
METHODS = {
    "easytune-3": lambda: et.methods.EasyTune(k=3),
    "easytune-3-chain": lambda: et.methods.EasyTune(k=3, variant="chain"),
    "draft-1": lambda: et.methods.DRaFT(k=1),
    "draft-3": lambda: et.methods.DRaFT(k=3),
    "draft-lv": lambda: et.methods.DRaFTLV(n=2),
    "refl": lambda: et.methods.ReFL(m=3),
    "drtune": lambda: et.methods.DRTune(k=3, m=3),
    "alignprop": lambda: et.methods.AlignProp(mean=7, std=2, low=1, high=N_STEPS - 1),
}


class Denoiser(nn.Module):
    """A small conditional MLP over the last dim, with a skip path so x0- and v-prediction are sane."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width + C + 1, 32), nn.Tanh(), nn.Linear(32, width))
        self.skip = nn.Parameter(torch.tensor(0.5))

    def forward(self, x, t, cond):
        c = cond[:, None].expand(-1, x.shape[1], -1)
        tt = (t.to(x.dtype) / 1000)[:, None, None].expand(-1, x.shape[1], 1)
        return self.skip * x + self.net(torch.cat([x, c, tt], dim=-1))


def _setup(layout: str, prediction_type: str, method: str, seed: int = 0):
    spec = LAYOUTS[layout]
    torch.manual_seed(seed)
    width = spec["shape"][1]
    model = Denoiser(width)
    decoder = nn.Linear(4 * 2, 6 * 5).requires_grad_(False) if spec["decode"] else None
    if prediction_type.startswith("flow"):
        sched = FlowMatchEulerDiscreteScheduler(shift=3.0, prediction_type=prediction_type)
    else:
        sched = DDIMScheduler.from_config(spec["scheduler"], prediction_type=prediction_type)
    sched.set_timesteps(N_STEPS)
    target = torch.randn(B, 6, 5)

    def decode(z, batch):
        return decoder(z.flatten(1)).view(-1, 6, 5)

    def reward(feats, batch):
        return -((feats - batch["target"]) ** 2).mean(dim=(1, 2))

    grads: list[torch.Tensor] = []

    def record(gs):  # called with the gradients of every update, before clipping
        grads.append(torch.sqrt(sum((g.double() ** 2).sum() for g in gs)))

    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    trainer = et.Trainer(
        model,
        sched,
        reward,
        method=METHODS[method](),
        optimizer=opt,
        guidance_scale=2.5,
        decode_fn=decode if decoder is not None else None,
        latent_shape=spec["shape"],
        seed=seed,
        grad_reducer=record,
    )
    batch = {"cond": torch.randn(B, C), "uncond": torch.zeros(B, C), "target": target}
    return model, trainer, batch, grads


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_method_trains_on_every_prediction_type_and_layout(layout, prediction_type, method):
    model, trainer, batch, grads = _setup(layout, prediction_type, method)
    updates = 0
    for _ in range(20):  # 20 trajectories: 20 draws of the random plans
        before = [p.detach().clone() for p in model.parameters()]
        stats = trainer.step(batch)
        updates += int(stats["updates"])
        changed = any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
        assert changed, f"{method} on {layout}/{prediction_type}: the parameters did not change"
        assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())
    assert len(grads) == updates
    norms = torch.stack(grads)
    assert torch.isfinite(norms).all()
    # Non-negligible: an identity last step (the old MDM preset) gave DRaFT-1 norms ~1e-7 of these.
    assert float(norms.min()) > 1e-4, f"{method} on {layout}/{prediction_type}: gradient norms {norms}"


def test_mdm_preset_last_step_returns_the_clean_prediction():
    sched = DDIMScheduler.from_config(MDM_SCHEDULER)
    sched.set_timesteps(50)
    assert int(sched.timesteps[-1]) == 0
    x = torch.randn(2, 6, 5)
    x0 = torch.randn(2, 6, 5)
    out = sched.step(x0, 0, x)
    torch.testing.assert_close(out.prev_sample, out.pred_original_sample)
    torch.testing.assert_close(out.prev_sample, x0)


def test_the_old_mdm_last_step_was_the_identity_and_draft1_got_no_gradient():
    """What the preset fixed: with set_alpha_to_one=False the t=0 step maps x_t to itself."""
    old = {**MDM_SCHEDULER, "set_alpha_to_one": False}
    sched = DDIMScheduler.from_config(old)
    sched.set_timesteps(50)
    x = torch.randn(2, 6, 5)
    torch.testing.assert_close(sched.step(torch.randn(2, 6, 5), 0, x).prev_sample, x)
    norms = {}
    for name, config in (("old", old), ("preset", MDM_SCHEDULER)):
        LAYOUTS["frame-probe"] = {**LAYOUTS["frame"], "scheduler": config}
        try:
            _, trainer, batch, grads = _setup("frame-probe", "sample", "draft-1")
            trainer.step(batch)
        finally:
            del LAYOUTS["frame-probe"]
        norms[name] = float(grads[0])
    assert norms["old"] < 1e-4 < norms["preset"]
    assert MLD_SCHEDULER["set_alpha_to_one"] is False  # MLD keeps its reference schedule


def test_adaptive_weightings_snr_and_gradnorm():
    """Issue 17: ``snr`` weighs each step by its alpha_bar (normalised to mean 1, from the trainer's
    scheduler); ``gradnorm`` makes every update's gradient unit-norm (SGD: each update moves the weights by
    exactly lr)."""
    model, trainer, batch, grads = _setup("latent", "epsilon", "easytune-3")
    alphas = trainer.scheduler.alphas_cumprod
    timesteps = [int(t) for t in trainer.scheduler.timesteps]
    plan = et.methods.EasyTune(k=3, weighting="snr").plan(
        timesteps, torch.Generator(), alphas_cumprod=[float(alphas[t]) for t in timesteps]
    )
    a = [float(alphas[t]) for t in timesteps[-3:]]  # float64 hand values
    assert [p.weight for p in plan if p.update] == pytest.approx([3 * x / sum(a) for x in a], rel=1e-12)
    assert plan[-1].weight > plan[-3].weight  # the cleaner step weighs more
    with pytest.raises(ConfigError, match="needs the alpha_bar"):
        et.methods.EasyTune(k=3, weighting="snr").plan(timesteps, torch.Generator())
    trainer.method = et.methods.EasyTune(k=3, weighting="snr")
    assert trainer.step(batch)["updates"] == 3.0  # the trainer passes the schedule

    trainer.method = et.methods.EasyTune(k=3, weighting="gradnorm")
    moves = []
    before = {}
    trainer.optimizer.register_step_pre_hook(
        lambda opt, *a: before.update(w=[p.detach().clone() for p in model.parameters()])
    )
    trainer.optimizer.register_step_post_hook(
        lambda opt, *a: moves.append(
            torch.sqrt(sum(((p.detach() - q) ** 2).sum() for p, q in zip(model.parameters(), before["w"])))
        )
    )
    grads.clear()
    trainer.step(batch)
    assert len(moves) == 3 and all(m.item() == pytest.approx(1e-2, rel=1e-4) for m in moves)
    assert any(abs(g.item() - 1.0) > 1e-3 for g in grads)  # the raw gradients were not unit-norm
