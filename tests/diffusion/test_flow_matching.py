"""Flow matching in the EDM framework: schedules against diffusers' schedulers, samplers against their step
loops, and the identities that tie the flow-time and EDM-σ forms together."""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from vidiff.diffusion import (
    SCALINGS,
    Denoiser,
    FlowScaling,
    FlowTimeScaling,
    edm_add_noise,
    flow_add_noise,
    flow_euler_times,
    flow_time_to_sigma,
    flow_unipc_times,
    sample_euler,
    sample_flow_unipc,
    scaling_by_name,
)


def _velocity(x: torch.Tensor, c_noise: torch.Tensor, cond=None) -> torch.Tensor:
    """A smooth nonlinear stand-in for a velocity network (depends on x and on the timestep)."""
    t = c_noise.reshape(-1, *([1] * (x.ndim - 1))) / 1000
    return torch.tanh(x) * (1 + t) - 0.3 * x * t


@pytest.mark.parametrize(("steps", "shift"), [(10, 5.0), (7, 3.0), (4, 1.0)])
def test_flow_euler_times_match_diffusers(steps: int, shift: float) -> None:
    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    sched.set_timesteps(steps)
    torch.testing.assert_close(flow_euler_times(steps, shift), sched.sigmas, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(1000 * flow_euler_times(steps, shift)[:-1], sched.timesteps, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize(("steps", "shift"), [(10, 5.0), (6, 3.0), (5, 1.0)])
def test_flow_unipc_times_match_diffusers(steps: int, shift: float) -> None:
    sched = UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=shift, prediction_type="flow_prediction")
    sched.set_timesteps(steps)
    torch.testing.assert_close(flow_unipc_times(steps, shift), sched.sigmas, rtol=1e-6, atol=1e-7)


def test_euler_on_flow_time_denoiser_is_diffusers_flow_euler() -> None:
    x_init = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(6)
    x_ref = x_init.clone()
    for t in sched.timesteps:
        x_ref = sched.step(_velocity(x_ref, t.expand(2)), t, x_ref, return_dict=False)[0]
    out = sample_euler(Denoiser(_velocity, FlowTimeScaling()), x_init.clone(), flow_euler_times(6, 3.0))
    torch.testing.assert_close(out, x_ref, rtol=1e-5, atol=1e-5)


def test_flow_scaling_is_the_flow_time_denoiser_in_edm_coordinates() -> None:
    """D_EDM(x_t/(1 − t), σ(t)) = D_flow(x_t, t), and EDM Euler on x/s equals flow Euler on x_t."""
    gen = torch.Generator().manual_seed(1)
    x_t = torch.randn(3, 2, 4, generator=gen)
    t = torch.tensor([0.9, 0.5, 0.05], dtype=torch.float64)
    sigma = flow_time_to_sigma(t)
    x = x_t.double() / (1 - t)[:, None, None]
    d_edm = Denoiser(_velocity, FlowScaling())(x, sigma)
    d_flow = Denoiser(_velocity, FlowTimeScaling())(x_t.double(), t)
    torch.testing.assert_close(d_edm, d_flow)
    ts = flow_euler_times(5, 5.0)[1:].double()  # from t < 1 (σ finite)
    x_start = x_t[:1].double()
    flow = sample_euler(Denoiser(_velocity, FlowTimeScaling()), x_start, ts)
    edm = sample_euler(Denoiser(_velocity, FlowScaling()), x_start / (1 - ts[0]), flow_time_to_sigma(ts))
    torch.testing.assert_close(edm, flow)  # final σ = t = 0, s = 1


def test_flow_targets_are_the_velocity() -> None:
    gen = torch.Generator().manual_seed(2)
    x0, noise = torch.randn(4, 3, generator=gen).double(), torch.randn(4, 3, generator=gen).double()
    t = torch.tensor([0.1, 0.4, 0.7, 0.95], dtype=torch.float64)
    sigma = flow_time_to_sigma(t)
    torch.testing.assert_close(FlowScaling().target(x0, noise, sigma), noise - x0)
    torch.testing.assert_close(FlowTimeScaling().target(x0, noise, t), noise - x0)
    # the EDM state maps to the interpolant: x_t = (1 − t)(x₀ + σε)
    torch.testing.assert_close((1 - t)[:, None] * edm_add_noise(x0, sigma, noise), flow_add_noise(x0, noise, t))
    assert SCALINGS["flow"] is FlowScaling and isinstance(scaling_by_name("flow"), FlowScaling)
    assert torch.equal(FlowTimeScaling(integer_timesteps=True)(torch.tensor([0.9999]))[3], torch.tensor([999.0]))


@pytest.mark.parametrize("steps", [1, 2, 6])
def test_flow_unipc_is_diffusers_unipc(steps: int) -> None:
    """Wan's default sampler: UniPC-2 bh2, data prediction, integer timesteps fed to the network."""
    x_init = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(4))
    sched = UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=3.0, prediction_type="flow_prediction")
    sched.set_timesteps(steps)
    x_ref = x_init.clone()
    for t in sched.timesteps:
        x_ref = sched.step(_velocity(x_ref, t.float().expand(2)), t, x_ref, return_dict=False)[0]
    denoiser = Denoiser(_velocity, FlowTimeScaling(integer_timesteps=True))
    out = sample_flow_unipc(denoiser, x_init.clone(), flow_unipc_times(steps, 3.0))
    torch.testing.assert_close(out, x_ref, rtol=1e-5, atol=1e-5)
    if steps == 6:  # the corrector and the second order matter: plain Euler on the same times differs
        euler = sample_euler(denoiser, x_init.clone(), flow_unipc_times(steps, 3.0))
        assert (euler - x_ref).abs().max() > 1e-3
