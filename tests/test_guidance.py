"""Classifier-free guidance in one batch, and the DDIM sampling loop, against hand-written references."""

from __future__ import annotations

import pytest
import torch

from easytune.diffusion import DDIMScheduler, concat_conditions, ddim_sample, guided_denoise
from easytune.errors import ConfigError

MLD = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", set_alpha_to_one=False, steps_offset=1
)


class Recorder:
    """denoise_fn that records its inputs; output depends on x, t and cond row by row."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, cond):
        self.calls.append((x, t, cond))
        text = cond["text"] if isinstance(cond, dict) else cond
        return torch.tanh(x * 0.5 + text.sum(-1).reshape(-1, 1, 1) + t.reshape(-1, 1, 1) / 1000)


def _reference_eps(fn, x, t, cond, uncond, w):
    """Guidance written out with two separate denoiser calls."""
    e_c = fn(x, t, cond)
    if uncond is None:
        return e_c
    e_u = fn(x, t, uncond)
    return e_u + w * (e_c - e_u)


def test_one_batched_call_and_split():
    fn = Recorder()
    x = torch.randn(3, 2, 4, dtype=torch.float64)
    t = torch.tensor([5, 6, 7])
    cond, uncond = torch.randn(3, 5, dtype=torch.float64), torch.zeros(3, 5, dtype=torch.float64)
    out_c, out_u = guided_denoise(fn, x, t, cond, uncond)
    assert len(fn.calls) == 1
    xs, ts, cs = fn.calls[0]
    assert xs.shape == (6, 2, 4) and torch.equal(xs[:3], x) and torch.equal(xs[3:], x)
    assert ts.tolist() == [5, 6, 7, 5, 6, 7]
    assert torch.equal(cs, torch.cat([cond, uncond]))
    torch.testing.assert_close(out_c, Recorder()(x, t, cond))
    torch.testing.assert_close(out_u, Recorder()(x, t, uncond))
    out, none = guided_denoise(fn, x, t, cond, None)
    assert none is None and fn.calls[-1][0].shape == (3, 2, 4)
    torch.testing.assert_close(out, out_c)


def test_structured_conditions_are_concatenated_leafwise():
    cond = {"text": torch.randn(2, 3), "lengths": torch.tensor([4, 5])}
    uncond = {"text": torch.zeros(2, 3), "lengths": torch.tensor([4, 5])}
    both = concat_conditions(cond, uncond)
    assert both["text"].shape == (4, 3) and both["lengths"].tolist() == [4, 5, 4, 5]
    pair = concat_conditions((cond["text"], cond["lengths"]), (uncond["text"], uncond["lengths"]))
    assert isinstance(pair, tuple) and pair[1].tolist() == [4, 5, 4, 5]
    fn = Recorder()
    out_c, out_u = guided_denoise(fn, torch.randn(2, 1, 3), torch.tensor([1, 1]), cond, uncond)
    assert out_c.shape == out_u.shape == (2, 1, 3)


def test_mismatched_conditions_and_bad_outputs_raise():
    with pytest.raises(ConfigError, match="uncond must match cond"):
        concat_conditions(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ConfigError, match="keys"):
        concat_conditions({"a": torch.zeros(1)}, {"b": torch.zeros(1)})
    with pytest.raises(ConfigError, match="tensor or a dict"):
        concat_conditions("walk", "")
    with pytest.raises(ConfigError, match="denoise_fn must return"):
        guided_denoise(lambda x, t, c: x[:1], torch.zeros(2, 3), torch.tensor([1, 1]), torch.zeros(2, 1))


@pytest.mark.parametrize("uncond_on", [True, False])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_sample_matches_written_out_loop(uncond_on, prediction_type):
    sched = DDIMScheduler(**MLD, prediction_type=prediction_type)
    sched.set_timesteps(6)
    fn = Recorder()
    x_T = torch.randn(3, 1, 4, dtype=torch.float64)
    cond = torch.randn(3, 2, dtype=torch.float64)
    uncond = torch.zeros(3, 2, dtype=torch.float64) if uncond_on else None
    w = 7.5
    got = ddim_sample(fn, sched, x_T, cond, uncond, guidance_scale=w)
    assert len(fn.calls) == 6
    # reference: diffusers' DDIM formulas written out, alphas read from the table by hand
    ac = sched.alphas_cumprod.double()
    x = x_T
    for t in sched.timesteps.tolist():
        tt = torch.full((3,), t)
        out = _reference_eps(Recorder(), x, tt, cond, uncond, w)
        a_t = ac[t]
        a_prev = ac[t - 1000 // 6] if t - 1000 // 6 >= 0 else ac[0]
        if prediction_type == "epsilon":
            x0, eps = (x - (1 - a_t).sqrt() * out) / a_t.sqrt(), out
        else:
            x0 = a_t.sqrt() * x - (1 - a_t).sqrt() * out
            eps = a_t.sqrt() * out + (1 - a_t).sqrt() * x
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    torch.testing.assert_close(got, x, rtol=1e-10, atol=1e-12)


def test_ddim_sample_matches_diffusers_loop():
    diffusers = pytest.importorskip("diffusers")
    sched = DDIMScheduler(**MLD)
    ref = diffusers.DDIMScheduler(**MLD, clip_sample=False)
    sched.set_timesteps(10)
    ref.set_timesteps(10)
    ref.alphas_cumprod = ref.alphas_cumprod.double()
    ref.final_alpha_cumprod = ref.final_alpha_cumprod.double()
    fn = Recorder()
    x_T = torch.randn(2, 1, 4, dtype=torch.float64)
    cond, uncond = torch.randn(2, 3, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64)
    got = ddim_sample(
        fn, sched, x_T, cond, uncond, guidance_scale=2.5, eta=0.5, generator=torch.Generator().manual_seed(3)
    )
    x, gen = x_T, torch.Generator().manual_seed(3)
    for t in ref.timesteps:
        eps = _reference_eps(Recorder(), x, t.expand(2), cond, uncond, 2.5)
        x = ref.step(eps, t, x, eta=0.5, generator=gen).prev_sample
    torch.testing.assert_close(got, x, rtol=1e-10, atol=1e-12)


def test_ddim_sample_needs_an_easytune_ddim_with_timesteps():
    with pytest.raises(ConfigError, match="set_timesteps"):
        ddim_sample(Recorder(), DDIMScheduler(), torch.zeros(1, 1, 2), torch.zeros(1, 2))
    with pytest.raises(ConfigError, match="DDIMScheduler"):
        ddim_sample(Recorder(), object(), torch.zeros(1, 1, 2), torch.zeros(1, 2))


@pytest.mark.parametrize("name", ["guidance_scale", "eta"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0])
def test_non_finite_or_negative_guidance_and_eta_are_named_before_sampling(name, value):
    """Issue 18: ``guidance_scale=nan`` used to return an all-NaN sample without an error."""
    from easytune.generation import load_pipeline

    scheduler = DDIMScheduler(num_train_timesteps=10)
    scheduler.set_timesteps(2)
    x = torch.randn(1, 3)
    with pytest.raises(ConfigError, match=f"{name} must be a finite number >= 0, got {value}"):
        ddim_sample(lambda x, t, c: x, scheduler, x, torch.zeros(1, 2), torch.zeros(1, 2), **{name: value})
    if name == "guidance_scale":
        with pytest.raises(ConfigError, match="guidance_scale must be a finite number"):
            load_pipeline("default").sample(["a person walks"], [20], steps=2, guidance_scale=value)
