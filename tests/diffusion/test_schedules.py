"""Schedules against diffusers (oracle) and the papers' closed forms; forward process q(x_t | x₀)."""

from __future__ import annotations

import math

import diffusers
import numpy as np
import pytest
import torch

from vidiff.diffusion import (
    BETA_SCHEDULES,
    DiscreteSchedule,
    VScalingEDMcNoise,
    alpha_bar_from_sigma,
    alphas_cumprod,
    cosine_betas,
    ddpm_q_sample,
    edm_add_noise,
    initial_noise_scale,
    karras_sigmas,
    linear_betas,
    scaled_linear_betas,
    sigma_from_alpha_bar,
)


def _svd_scheduler(**overrides):
    kw = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
              prediction_type="v_prediction", use_karras_sigmas=True, sigma_min=0.002, sigma_max=700.0,
              timestep_spacing="leading",
              steps_offset=1, timestep_type="continuous")
    kw.update(overrides)
    return diffusers.EulerDiscreteScheduler(**kw)


@pytest.mark.parametrize("steps", [1, 2, 14, 25, 50])
def test_karras_sigmas_match_diffusers_svd_scheduler_bitwise(steps: int) -> None:
    sched = _svd_scheduler()
    sched.set_timesteps(steps)
    sigmas = karras_sigmas(steps, 0.002, 700.0)
    assert sigmas.dtype == torch.float32
    assert torch.equal(sigmas, sched.sigmas)
    # timesteps are SVD's c_noise = ¼ ln σ of the non-final sigmas
    assert torch.equal(VScalingEDMcNoise()(sigmas[:-1]).c_noise, sched.timesteps)
    assert float(initial_noise_scale(sigmas)) == pytest.approx(float(sched.init_noise_sigma), rel=1e-7)
    assert float(initial_noise_scale(sigmas)) == pytest.approx(math.sqrt(700.0**2 + 1), rel=1e-7)


def test_karras_sigmas_closed_form_endpoints() -> None:
    s = karras_sigmas(10, 0.002, 80.0, rho=7.0, append_zero=False, dtype=torch.float64)
    assert s[0].item() == pytest.approx(80.0, rel=1e-14) and s[-1].item() == pytest.approx(0.002, rel=1e-12)
    assert torch.all(s[1:] < s[:-1])
    # ρ = 1 is a linear ramp
    torch.testing.assert_close(karras_sigmas(5, 1.0, 3.0, rho=1.0, append_zero=False, dtype=torch.float64),
                               torch.tensor([3.0, 2.5, 2.0, 1.5, 1.0], dtype=torch.float64))


def test_linear_betas_are_ddpm_papers() -> None:
    b = linear_betas()
    assert b.shape == (1000,) and b.dtype == torch.float64
    assert b[0].item() == pytest.approx(1e-4, abs=1e-16) and b[-1].item() == pytest.approx(0.02, abs=1e-16)
    torch.testing.assert_close(torch.diff(b), torch.full((999,), (0.02 - 1e-4) / 999, dtype=torch.float64))
    ddpm = diffusers.DDPMScheduler(beta_schedule="linear")  # 1e-4 .. 0.02 by default
    torch.testing.assert_close(b.float(), ddpm.betas)


@pytest.mark.parametrize(("name", "ours"),
                         [("scaled_linear", scaled_linear_betas), ("squaredcos_cap_v2", cosine_betas)])
def test_betas_match_diffusers_ddpm_scheduler(name: str, ours) -> None:
    ddpm = diffusers.DDPMScheduler(beta_schedule=name, beta_start=0.00085, beta_end=0.012)
    torch.testing.assert_close(ours().float(), ddpm.betas, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(alphas_cumprod(ours()).float(), ddpm.alphas_cumprod, rtol=1e-5, atol=1e-9)
    assert set(BETA_SCHEDULES) == {"linear", "scaled_linear", "cosine"}


def test_cosine_betas_closed_form() -> None:
    T, s = 1000, 0.008
    ab = alphas_cumprod(cosine_betas(T, s, max_beta=1.0))
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 1, 250, 500, 900):
        assert ab[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-10)
    assert cosine_betas(T, s).max().item() == 0.999


def test_sigma_alpha_bar_round_trip() -> None:
    ab = alphas_cumprod(linear_betas())
    sigma = sigma_from_alpha_bar(ab)
    torch.testing.assert_close(alpha_bar_from_sigma(sigma), ab, rtol=1e-12, atol=0)
    torch.testing.assert_close(sigma**2, (1 - ab) / ab)


def test_discrete_schedule_t_sigma_round_trip() -> None:
    sched = DiscreteSchedule.from_betas(scaled_linear_betas())
    t_int = torch.arange(1000, dtype=torch.float64)
    torch.testing.assert_close(sched.sigma_to_t(sched.sigmas), t_int, rtol=0, atol=1e-9)
    torch.testing.assert_close(sched.t_to_sigma(t_int), sched.sigmas, rtol=1e-12, atol=0)
    t = torch.linspace(0, 999, 777, dtype=torch.float64)
    torch.testing.assert_close(sched.sigma_to_t(sched.t_to_sigma(t)), t, rtol=0, atol=1e-9)
    # half-way between steps in log σ
    mid = torch.sqrt(sched.sigmas[10] * sched.sigmas[11])
    assert sched.sigma_to_t(mid.reshape(1)).item() == pytest.approx(10.5, abs=1e-9)


def test_sigma_to_t_matches_diffusers_interpolation() -> None:
    """diffusers' EulerDiscreteScheduler with discrete timesteps uses the same log-σ interpolation."""
    sched = DiscreteSchedule.from_betas(scaled_linear_betas())
    euler = _svd_scheduler(timestep_type="discrete", prediction_type="epsilon",
                           sigma_min=None, sigma_max=None)
    euler.set_timesteps(25)
    torch.testing.assert_close(sched.sigma_to_t(euler.sigmas[:-1].double()).float(), euler.timesteps,
                               rtol=0, atol=1e-3)
    probe = np.array([1e-4, 0.02, 0.0292, 0.1, 1.0, 3.3, 14.0, 14.6, 20.0, 1e3])
    log_sigmas = np.log(sched.sigmas.numpy())
    expected = np.array([euler._sigma_to_t(p, log_sigmas) for p in probe])
    torch.testing.assert_close(sched.sigma_to_t(torch.from_numpy(probe)), torch.from_numpy(expected).double(),
                               rtol=0, atol=1e-9)


@pytest.mark.parametrize("n", [1, 7, 25, 30, 333, 1000])
def test_discrete_sigmas_roughly_equally_spaced(n: int) -> None:
    sched = DiscreteSchedule.from_betas(scaled_linear_betas())
    # sgm's LegacyDDPMDiscretization spacing, numpy form
    steps = np.linspace(999, 0, n, endpoint=False).astype(int)
    assert sched.discrete_timesteps(n).tolist() == steps.tolist()
    sig = sched.discrete_sigmas(n, dtype=torch.float64)
    assert sig.shape == (n + 1,) and sig[-1] == 0 and sig[0] == sched.sigmas[-1]
    torch.testing.assert_close(sig[:-1], sched.sigmas[torch.from_numpy(steps)])
    assert torch.all(sig[1:] < sig[:-1])


def test_forward_process_moments_and_equivalence() -> None:
    g = torch.Generator().manual_seed(0)
    N = 200_000
    x0_value, ab = 0.7, torch.tensor([0.9, 0.3, 0.01], dtype=torch.float64)
    x0 = torch.full((3, N), x0_value, dtype=torch.float64)
    noise = torch.randn(3, N, generator=g, dtype=torch.float64)
    x_t = ddpm_q_sample(x0, ab, noise)
    tol = 4 / math.sqrt(N)  # 4 standard errors (unit-scale quantities)
    torch.testing.assert_close(x_t.mean(1), ab.sqrt() * x0_value, rtol=0, atol=tol)
    torch.testing.assert_close(x_t.var(1), 1 - ab, rtol=0, atol=tol * 1.5)
    sigma = sigma_from_alpha_bar(ab)
    x_s = edm_add_noise(x0, sigma, noise)
    torch.testing.assert_close(x_s.mean(1), torch.full((3,), x0_value, dtype=torch.float64), rtol=0,
                               atol=tol * sigma.max().item())
    torch.testing.assert_close(x_s.var(1) / sigma**2, torch.ones(3, dtype=torch.float64), rtol=0,
                               atol=tol * 1.5)
    # x_ddpm = √ᾱ · x_edm for the same noise
    torch.testing.assert_close(x_t, ab.sqrt()[:, None] * x_s, rtol=1e-12, atol=1e-12)
    # integer timesteps are looked up in ᾱ
    table = alphas_cumprod(linear_betas())
    t = torch.tensor([0, 500, 999])
    torch.testing.assert_close(ddpm_q_sample(x0, t, noise, alphas_cumprod=table),
                               ddpm_q_sample(x0, table[t], noise))
