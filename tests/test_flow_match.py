"""FlowMatchEulerDiscreteScheduler against diffusers (when importable) and against the stored diffusers table
(tests/data/flow_match_diffusers.json, recorded with diffusers 0.42.1); the flow helpers around it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from easytune.diffusion import (
    DDIMScheduler,
    DDPMScheduler,
    FlowMatchEulerDiscreteScheduler,
    GuidedStep,
    is_flow,
    sampling_scheduler,
    training_scheduler,
)
from easytune.errors import ConfigError

TABLE = Path(__file__).parent / "data" / "flow_match_diffusers.json"
# (constructor config, set_timesteps arguments): static shift, dynamic shifting of both kinds, a terminal
# stretch, custom sigmas
CASES = [
    ({}, {"num_inference_steps": 50}),
    ({"shift": 3.0}, {"num_inference_steps": 20}),
    ({"use_dynamic_shifting": True}, {"num_inference_steps": 28, "mu": 0.7}),
    ({"use_dynamic_shifting": True, "time_shift_type": "linear"}, {"num_inference_steps": 10, "mu": 1.3}),
    ({"shift": 2.0, "shift_terminal": 0.1}, {"num_inference_steps": 12}),
    ({"shift": 3.0}, {"sigmas": [1.0, 0.75, 0.5, 0.2, 0.05]}),
]
STEP_CASE = ({"shift": 3.0}, 8)


def step_inputs(n: int, dtype=torch.float64) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """x_T and one velocity per step, float32 values (so a float64 step is not rounded by diffusers'
    float32 upcast of the sample)."""
    idx = torch.arange(12, dtype=torch.float64).reshape(2, 6)
    x = (idx * 0.37).sin().float().to(dtype)
    vs = [(idx * 0.11 * (i + 1)).cos().float().to(dtype) for i in range(n)]
    return x, vs


def _table() -> dict:
    return json.loads(TABLE.read_text())


@pytest.mark.parametrize("case", range(len(CASES)))
def test_tables_and_timesteps_equal_the_stored_diffusers_table(case):
    config, args = CASES[case]
    entry = _table()["cases"][case]
    assert entry["config"] == config and entry["set_timesteps"] == args
    ours = FlowMatchEulerDiscreteScheduler(**config)
    ours.set_timesteps(**args)
    assert torch.equal(ours.sigmas, torch.tensor(entry["sigmas"], dtype=torch.float32))
    assert torch.equal(ours.timesteps, torch.tensor(entry["timesteps"], dtype=torch.float32))
    assert ours.sigmas[-1] == 0 and ours.num_inference_steps == len(ours.timesteps)


@pytest.mark.parametrize("case", range(len(CASES)))
def test_tables_and_timesteps_bit_identical_to_diffusers(case):
    diffusers = pytest.importorskip("diffusers")
    config, args = CASES[case]
    ours, ref = FlowMatchEulerDiscreteScheduler(**config), diffusers.FlowMatchEulerDiscreteScheduler(**config)
    assert torch.equal(ours.sigmas, ref.sigmas) and torch.equal(
        ours.timesteps, ref.timesteps
    )  # training table
    ours.set_timesteps(**args)
    ref.set_timesteps(**args)
    assert torch.equal(ours.sigmas, ref.sigmas) and torch.equal(ours.timesteps, ref.timesteps)


def test_step_equals_the_stored_diffusers_steps_in_float64():
    stored = _table()["steps"]
    config, n = STEP_CASE
    assert stored["config"] == config and stored["n"] == n
    sched = FlowMatchEulerDiscreteScheduler(**config)
    sched.set_timesteps(n)
    x, vs = step_inputs(n)
    for t, v, expected in zip(sched.timesteps, vs, stored["prev"]):
        x = sched.step(v, t, x).prev_sample
        assert x.dtype == torch.float64
        assert torch.equal(x, torch.tensor(expected, dtype=torch.float64))
        x = x.float().double()  # as recorded: diffusers rounds a float64 sample to float32


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shift, n", [(3.0, 20), (1.0, 50), (1.0, 3), (5.0, 7)])
def test_step_bit_identical_to_diffusers(dtype, shift, n):
    """Bit for bit, including the steps whose sigma difference rounds in float32 (1.0, 3 steps: 0.5005 ->
    0.001): the difference is taken in the tables' float32, as diffusers does."""
    diffusers = pytest.importorskip("diffusers")
    ours, ref = (
        FlowMatchEulerDiscreteScheduler(shift=shift),
        diffusers.FlowMatchEulerDiscreteScheduler(shift=shift),
    )
    ours.set_timesteps(n)
    ref.set_timesteps(n)
    x, vs = step_inputs(n, dtype)
    for t, v in zip(ref.timesteps, vs):
        expected = ref.step(v, t, x).prev_sample
        out = ours.step(v, t, x)
        assert torch.equal(out.prev_sample, expected)
        torch.testing.assert_close(
            out.pred_original_sample, x - (t / 1000).to(dtype) * v, rtol=1e-6, atol=1e-6
        )
        x = expected.float().to(dtype)  # float32 values: diffusers rounds a float64 sample to float32


def test_from_diffusers_config_and_unsupported_options_are_named():
    config = {
        "_class_name": "FlowMatchEulerDiscreteScheduler",
        "_diffusers_version": "0.30.0",
        "num_train_timesteps": 1000,
        "shift": 3.0,
    }
    sched = FlowMatchEulerDiscreteScheduler.from_config(config)
    assert sched.config.shift == 3.0 and sched.config.prediction_type == "flow_prediction"
    assert is_flow(config) and isinstance(sampling_scheduler(config), FlowMatchEulerDiscreteScheduler)
    assert isinstance(training_scheduler(config), FlowMatchEulerDiscreteScheduler)
    diffusion = {"num_train_timesteps": 1000, "prediction_type": "epsilon"}
    assert isinstance(sampling_scheduler(diffusion), DDIMScheduler)
    assert isinstance(training_scheduler(diffusion), DDPMScheduler)
    assert not is_flow(diffusion) and is_flow({"prediction_type": "flow_sample"})
    with pytest.raises(ConfigError, match="use FlowMatchEulerDiscreteScheduler"):
        DDIMScheduler(prediction_type="flow_prediction")  # the alphas would be read as sigmas
    with pytest.raises(ConfigError, match="_class_name 'EulerDiscreteScheduler' is not supported"):
        is_flow({"_class_name": "EulerDiscreteScheduler"})
    with pytest.raises(ConfigError, match="unknown config key 'beta_start'"):
        FlowMatchEulerDiscreteScheduler.from_config({"beta_start": 0.1})
    for key in ("use_karras_sigmas", "invert_sigmas", "stochastic_sampling"):
        with pytest.raises(ConfigError, match=f"{key}=True"):
            FlowMatchEulerDiscreteScheduler(**{key: True})
    with pytest.raises(ConfigError, match="prediction_type must be one of"):
        FlowMatchEulerDiscreteScheduler(prediction_type="epsilon")
    with pytest.raises(ConfigError, match="shift must be a finite number > 0"):
        FlowMatchEulerDiscreteScheduler(shift=0.0)
    with pytest.raises(ConfigError, match="needs mu"):
        FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True).set_timesteps(10)


def test_step_refuses_integer_indices_and_unknown_timesteps():
    sched = FlowMatchEulerDiscreteScheduler()
    x = torch.zeros(2, 3)
    with pytest.raises(ConfigError, match="before stepping"):
        sched.step(x, torch.tensor(1000.0), x)
    sched.set_timesteps(10)
    with pytest.raises(ConfigError, match="not an integer index"):
        sched.step(x, 3, x)
    with pytest.raises(ConfigError, match="timestep 123.5 is not one of the timesteps"):
        sched.step(x, torch.tensor(123.5), x)
    per_sample = sched.timesteps[[0, 4]]  # one timestep per sample
    out = sched.step(torch.ones(2, 3), per_sample, torch.zeros(2, 3)).prev_sample
    sigma = sched.sigmas
    torch.testing.assert_close(out[:, 0], torch.stack([sigma[1] - sigma[0], sigma[5] - sigma[4]]))


@pytest.mark.parametrize("prediction_type", ["flow_prediction", "flow_sample"])
def test_noising_target_and_prediction_invert_each_other(prediction_type):
    """add_noise -> training_target -> predict_x0_eps gives back (x0, noise) in float64, per-sample steps."""
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0, prediction_type=prediction_type)
    g = torch.Generator().manual_seed(0)
    x0, noise = (torch.randn(4, 5, 3, generator=g, dtype=torch.float64) for _ in range(2))
    t = sched.training_timesteps(torch.tensor([0, 10, 500, 999]))
    assert t.dtype == torch.float32 and t[0] == 1000
    x_t = sched.add_noise(x0, noise, t)
    s = (t.double() / 1000)[:, None, None]
    torch.testing.assert_close(x_t, (1 - s) * x0 + s * noise, rtol=0, atol=1e-12)
    target = sched.training_target(x0, noise, t)
    torch.testing.assert_close(target, noise - x0 if prediction_type == "flow_prediction" else x0)
    rec_x0, rec_noise = sched.predict_x0_eps(target, t, x_t)
    torch.testing.assert_close(rec_x0, x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(rec_noise, noise, rtol=1e-9, atol=1e-9)
    with pytest.raises(ConfigError, match="timesteps must be in \\[0, 1000\\]"):
        sched.add_noise(x0, noise, torch.full((4,), 1500.0))


def test_guided_step_samples_like_the_scheduler_loop_with_guidance():
    """GuidedStep (the trainer's and the sampler's step) on a flow scheduler = diffusers' pipeline loop:
    CFG by hand, then scheduler.step; float timesteps reach the denoiser; DRaFT-LV's re-noising is the
    flow's interpolation; eta > 0 is refused."""
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(6)
    weight = torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    seen = []

    def denoise(x, t, cond):
        seen.append(t.dtype)
        return torch.tanh(x @ weight + cond[:, None, :] * (t / 1000).to(x.dtype)[:, None, None])

    x = torch.randn(2, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    cond, uncond = torch.ones(2, 3, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64)
    step = GuidedStep(denoise, sched, guidance_scale=4.0)
    got = step.sample(x, cond, uncond)
    ref = x
    for t in sched.timesteps:
        tt = t.expand(2)
        v_c, v_u = denoise(ref, tt, cond), denoise(ref, tt, uncond)
        ref = sched.step(v_u + 4.0 * (v_c - v_u), t, ref).prev_sample
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-13)
    assert set(seen) == {torch.float32}
    noise = torch.randn_like(x)
    s = sched.sigmas[3].double()
    torch.testing.assert_close(step.add_noise(x, noise, 3), (1 - s) * x + s * noise, rtol=0, atol=1e-7)
    with pytest.raises(ConfigError, match="deterministic; eta must be 0"):
        GuidedStep(denoise, sched, eta=0.5)


def test_snr_weights_read_the_flow_signal_level():
    sched = FlowMatchEulerDiscreteScheduler()
    sched.set_timesteps(4)
    s = sched.sigmas[:-1].double()
    expected = (1 - s) ** 2 / ((1 - s) ** 2 + s**2)
    torch.testing.assert_close(sched.alphas_cumprod_of(sched.timesteps), expected)
    assert float(expected[0]) == 0.0 and bool((expected[1:] > expected[:-1]).all())
