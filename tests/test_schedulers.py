"""DDIM / DDPM schedulers against diffusers (when importable) and against the stored diffusers table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from easytune import ops
from easytune.diffusion import DDIMScheduler, DDPMScheduler
from easytune.errors import ConfigError

TABLE = Path(__file__).parent / "data" / "ddim_reference.json"
MLD = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", set_alpha_to_one=False, steps_offset=1
)


def _diffusers():
    return pytest.importorskip("diffusers")


def _upcast(sched) -> None:
    """Make a diffusers scheduler step in float64 (its tables are float32) so comparisons can be exact."""
    sched.alphas_cumprod = sched.alphas_cumprod.double()
    if hasattr(sched, "final_alpha_cumprod"):
        sched.final_alpha_cumprod = sched.final_alpha_cumprod.double()
    if hasattr(sched, "one"):
        sched.one = sched.one.double()


def test_mld_reference_timesteps():
    sched = DDIMScheduler(**MLD)
    sched.set_timesteps(50)
    assert sched.timesteps.tolist() == list(range(981, 0, -20))
    assert sched.timesteps.dtype == torch.int64
    assert sched.init_noise_sigma == 1.0
    # set_alpha_to_one=False: the last step goes to alphas_cumprod[0], not 1
    a_t, a_prev = sched.alpha_pair(torch.tensor([1, 981]))
    assert a_prev[0] == sched.alphas_cumprod[0] and a_prev[0] < 1
    assert a_t[1] == sched.alphas_cumprod[981] and a_prev[1] == sched.alphas_cumprod[961]


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_tables_bit_identical_to_diffusers(schedule):
    diffusers = _diffusers()
    kw = dict(beta_start=0.00085, beta_end=0.012, beta_schedule=schedule, clip_sample=False)
    ours, ref = DDIMScheduler(**kw), diffusers.DDIMScheduler(**kw)
    for name in ("betas", "alphas", "alphas_cumprod"):
        assert torch.equal(getattr(ours, name), getattr(ref, name)), name
    assert torch.equal(DDPMScheduler(**kw).alphas_cumprod, diffusers.DDPMScheduler(**kw).alphas_cumprod)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [1, 7, 50, 333])
def test_timesteps_match_diffusers(spacing, steps):
    diffusers = _diffusers()
    kw = dict(timestep_spacing=spacing, steps_offset=1 if spacing == "leading" else 0, clip_sample=False)
    for ours, ref in (
        (DDIMScheduler(**kw), diffusers.DDIMScheduler(**kw)),
        (DDPMScheduler(**kw), diffusers.DDPMScheduler(**kw)),
    ):
        ours.set_timesteps(steps)
        ref.set_timesteps(steps)
        assert torch.equal(ours.timesteps, ref.timesteps)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("eta", [0.0, 0.6])
@pytest.mark.parametrize("spacing,alpha_one", [("leading", False), ("trailing", True), ("linspace", False)])
def test_ddim_trajectory_matches_diffusers_float64(prediction_type, eta, spacing, alpha_one):
    diffusers = _diffusers()
    kw = dict(
        MLD,
        prediction_type=prediction_type,
        timestep_spacing=spacing,
        set_alpha_to_one=alpha_one,
        clip_sample=False,
    )
    ours, ref = DDIMScheduler(**kw), diffusers.DDIMScheduler(**kw)
    ours.set_timesteps(10)
    ref.set_timesteps(10)
    _upcast(ref)
    x_ours = x_ref = torch.randn(3, 2, 5, dtype=torch.float64)
    for t in ours.timesteps:
        out = torch.randn(3, 2, 5, dtype=torch.float64)
        noise = torch.randn(3, 2, 5, dtype=torch.float64)
        a = ours.step(out, t, x_ours, eta=eta, variance_noise=noise)
        b = ref.step(out, t, x_ref, eta=eta, variance_noise=noise)
        torch.testing.assert_close(a.prev_sample, b.prev_sample, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(a.pred_original_sample, b.pred_original_sample, rtol=1e-12, atol=1e-12)
        x_ours, x_ref = a.prev_sample, b.prev_sample


def test_ddim_generator_noise_and_stock_float32_tables_match_diffusers():
    diffusers = _diffusers()
    ours, ref = DDIMScheduler(**MLD), diffusers.DDIMScheduler(**MLD, clip_sample=False)
    ours.set_timesteps(20)
    ref.set_timesteps(20)
    x = torch.randn(2, 1, 8, dtype=torch.float64)
    out = torch.randn(2, 1, 8, dtype=torch.float64)
    for t in ours.timesteps[:4]:
        a = ours.step(out, t, x, eta=1.0, generator=torch.Generator().manual_seed(int(t)))
        b = ref.step(out, t, x, eta=1.0, generator=torch.Generator().manual_seed(int(t)))
        # stock diffusers computes the coefficients from float32 scalars: agreement to float32 precision
        torch.testing.assert_close(a.prev_sample, b.prev_sample, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_small_log", "fixed_large"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("clip", [False, True])
def test_ddpm_matches_diffusers(variance_type, prediction_type, clip):
    diffusers = _diffusers()
    kw = dict(variance_type=variance_type, prediction_type=prediction_type, clip_sample=clip)
    ours, ref = DDPMScheduler(**kw), diffusers.DDPMScheduler(**kw)
    ours.set_timesteps(8)
    ref.set_timesteps(8)
    _upcast(ref)
    x_ours = x_ref = torch.randn(2, 3, 4, dtype=torch.float64)
    for t in ours.timesteps:
        out = torch.randn(2, 3, 4, dtype=torch.float64)
        a = ours.step(out, t, x_ours, generator=torch.Generator().manual_seed(7 + int(t)))
        b = ref.step(out, t, x_ref, generator=torch.Generator().manual_seed(7 + int(t)))
        torch.testing.assert_close(a.prev_sample, b.prev_sample, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(a.pred_original_sample, b.pred_original_sample, rtol=1e-12, atol=1e-12)
        x_ours, x_ref = a.prev_sample, b.prev_sample


def test_ddpm_without_set_timesteps_steps_to_t_minus_one():
    diffusers = _diffusers()
    ours, ref = DDPMScheduler(), diffusers.DDPMScheduler(clip_sample=False)
    _upcast(ref)
    x, out = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    for t in (999, 1, 0):
        a = ours.step(out, t, x, generator=torch.Generator().manual_seed(1))
        b = ref.step(out, t, x, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(a.prev_sample, b.prev_sample, rtol=1e-12, atol=1e-12)


def test_add_noise_and_velocity_match_diffusers():
    diffusers = _diffusers()
    ours, ref = DDIMScheduler(**MLD), diffusers.DDIMScheduler(**MLD)
    x0, noise = torch.randn(4, 3, 5), torch.randn(4, 3, 5)
    t = torch.tensor([0, 17, 500, 999])
    torch.testing.assert_close(ours.add_noise(x0, noise, t), ref.add_noise(x0, noise, t), rtol=0, atol=0)
    torch.testing.assert_close(
        ours.get_velocity(x0, noise, t), ref.get_velocity(x0, noise, t), rtol=0, atol=0
    )


def test_add_noise_predict_roundtrip_and_training_targets():
    x0, noise = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    t = torch.tensor([3, 400, 990])
    for kind in ("epsilon", "sample", "v_prediction"):
        sched = DDIMScheduler(**MLD, prediction_type=kind)
        x_t = sched.add_noise(x0, noise, t)
        target = sched.training_target(x0, noise, t)
        x0_hat, eps_hat = sched.predict_x0_eps(target, t, x_t)
        torch.testing.assert_close(x0_hat, x0)
        torch.testing.assert_close(eps_hat, noise)
    # scalar timestep broadcasts over the batch
    sched = DDIMScheduler(**MLD)
    torch.testing.assert_close(
        sched.add_noise(x0, noise, 400), sched.add_noise(x0, noise, torch.full((3,), 400))
    )


def test_per_sample_timesteps_equal_per_sample_steps():
    sched = DDIMScheduler(**MLD)
    sched.set_timesteps(50)
    x, out = torch.randn(3, 2, 4, dtype=torch.float64), torch.randn(3, 2, 4, dtype=torch.float64)
    t = torch.tensor([981, 501, 1])
    batched = sched.step(out, t, x)
    for b in range(3):
        single = sched.step(out[b : b + 1], int(t[b]), x[b : b + 1])
        torch.testing.assert_close(batched.prev_sample[b : b + 1], single.prev_sample, rtol=0, atol=0)
    a_t, a_prev = sched.alpha_pair(t)
    assert a_t.shape == a_prev.shape == (3,)
    assert a_prev[2] == sched.alphas_cumprod[0] and a_prev[1] == sched.alphas_cumprod[481]


def test_ddim_step_is_ops_guided_step(monkeypatch):
    calls = []
    real = ops.guided_step

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(ops, "guided_step", spy)
    sched = DDIMScheduler(**MLD)
    sched.set_timesteps(5)
    sched.step(torch.randn(2, 3), sched.timesteps[0], torch.randn(2, 3))
    assert len(calls) == 1 and calls[0]["prediction_type"] == "epsilon"


def test_stored_diffusers_table():
    """Runs without diffusers: the table written by scripts/make_ddim_table.py from diffusers' outputs."""
    table = json.loads(TABLE.read_text())
    assert len(table["entries"]) >= 4
    for entry in table["entries"]:
        sched = DDIMScheduler(**entry["config"])
        sched.set_timesteps(entry["num_inference_steps"])
        assert sched.timesteps.tolist() == entry["timesteps"], entry["name"]
        for index, value in entry["alpha_probes"].items():
            assert float(sched.alphas_cumprod[int(index)]) == value, (entry["name"], index)
        assert float(sched.final_alpha_cumprod) == entry["final_alpha_cumprod"]
        traj = {k: v for k, v in entry["trajectory"].items()}
        x = torch.tensor(traj["x_T"], dtype=torch.float64)
        for j, t in enumerate(sched.timesteps[: len(traj["prev_sample"])]):
            noise = traj["variance_noise"][j]
            out = sched.step(
                torch.tensor(traj["model_output"][j], dtype=torch.float64),
                t,
                x,
                eta=entry["eta"],
                variance_noise=None if noise is None else torch.tensor(noise, dtype=torch.float64),
            )
            expected = torch.tensor(traj["prev_sample"][j], dtype=torch.float64)
            torch.testing.assert_close(out.prev_sample, expected, rtol=1e-12, atol=1e-12)
            expected_x0 = torch.tensor(traj["pred_original_sample"][j], dtype=torch.float64)
            torch.testing.assert_close(out.pred_original_sample, expected_x0, rtol=1e-12, atol=1e-12)
            x = out.prev_sample


def test_from_config_accepts_dicts_schedulers_and_diffusers_objects():
    ours = DDIMScheduler(**MLD)
    again = DDIMScheduler.from_config(ours)
    assert dict(again.config) == dict(ours.config)
    ddpm = DDPMScheduler.from_config(
        dict(ours.config), variance_type="fixed_large"
    )  # set_alpha_to_one ignored
    assert ddpm.config.variance_type == "fixed_large" and ddpm.config.steps_offset == 1
    assert DDIMScheduler.from_config({**MLD, "_class_name": "DDIMScheduler"}).config.steps_offset == 1
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDIMScheduler(**MLD, clip_sample=False)
    converted = DDIMScheduler.from_config(ref)
    assert converted.config.beta_schedule == "scaled_linear"
    converted.set_timesteps(50)
    assert converted.timesteps.tolist() == list(range(981, 0, -20))
    DDIMScheduler.from_config(
        diffusers.DDPMScheduler(clip_sample=False)
    )  # variance_type ignored, as diffusers


def test_bad_configuration_raises_clear_errors():
    with pytest.raises(ConfigError, match="clip_sample"):
        DDIMScheduler(clip_sample=True)
    with pytest.raises(ConfigError, match="unknown config key 'skip_prk_steps'"):
        DDIMScheduler.from_config({"skip_prk_steps": True})
    with pytest.raises(ConfigError, match="beta_schedule"):
        DDIMScheduler(beta_schedule="quadratic")
    with pytest.raises(ConfigError, match="prediction_type"):
        DDIMScheduler(prediction_type="flow")
    with pytest.raises(ConfigError, match="timestep_spacing"):
        DDIMScheduler(timestep_spacing="random")
    with pytest.raises(ConfigError, match="variance_type"):
        DDPMScheduler(variance_type="learned")
    with pytest.raises(ConfigError, match="thresholding"):
        DDPMScheduler(thresholding=True)
    with pytest.raises(ConfigError, match="trained_betas"):
        DDIMScheduler(num_train_timesteps=10, trained_betas=[0.1] * 9)
    sched = DDIMScheduler()
    with pytest.raises(ConfigError, match="set_timesteps"):
        sched.step(torch.zeros(1, 2), 10, torch.zeros(1, 2))
    with pytest.raises(ConfigError, match="num_inference_steps"):
        sched.set_timesteps(1001)
    sched.set_timesteps(10)
    with pytest.raises(ConfigError, match=r"timestep must be in \[0, 999\]"):
        sched.step(torch.zeros(1, 2), 1000, torch.zeros(1, 2))
    with pytest.raises(ConfigError, match="3 entries for a batch of 2"):
        sched.step(torch.zeros(2, 2), torch.tensor([1, 1, 1]), torch.zeros(2, 2))
    with pytest.raises(ConfigError, match="integer"):
        sched.alpha_pair(torch.tensor([1.5]))
    with pytest.raises(ConfigError, match="generator or variance_noise"):
        sched.step(
            torch.zeros(1, 2),
            1,
            torch.zeros(1, 2),
            eta=1.0,
            generator=torch.Generator(),
            variance_noise=torch.zeros(1, 2),
        )
    ddpm = DDPMScheduler()
    ddpm.set_timesteps(10)
    with pytest.raises(ConfigError, match="not one of the timesteps"):
        ddpm.step(torch.zeros(1, 2), 5, torch.zeros(1, 2))
