"""Samplers driven by closed-form ideal denoisers: distribution recovery, convergence order, identities."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vidiff.diffusion import (
    SAMPLERS,
    ancestral_step,
    karras_sigmas,
    sample_ddim,
    sample_dpmpp_2m,
    sample_euler,
    sample_euler_ancestral,
    sample_heun,
    sampler_by_name,
)

N_SAMPLES = 20_000
SIGMA_MAX = 80.0

# name, sampler, options, steps: first-order methods get more steps for the same accuracy.
CASES = [
    ("euler", sample_euler, {}, 200),
    ("heun", sample_heun, {}, 50),
    ("heun_churn", sample_heun, {"s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 50.0, "s_noise": 1.003}, 50),
    ("euler_ancestral", sample_euler_ancestral, {"eta": 1.0}, 200),
    ("dpmpp_2m", sample_dpmpp_2m, {}, 50),
    ("ddim_eta0", sample_ddim, {"eta": 0.0}, 200),
    ("ddim_eta1", sample_ddim, {"eta": 1.0}, 200),
]


def test_ideal_gmm_denoiser_is_unbiased(gmm) -> None:
    """Sanity check of the oracle itself: E[D*(x₀ + σn)] = E[x₀] (tower property)."""
    g = torch.Generator().manual_seed(0)
    x0 = gmm.sample((4, 50_000), g)
    sigma = torch.tensor([0.1, 0.5, 2.0, 10.0], dtype=torch.float64)
    x = x0 + sigma[:, None] * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    mean = sum(w * m for w, m in zip(gmm.weights, gmm.means))
    torch.testing.assert_close(gmm.denoise(x, sigma).mean(1), torch.full((4,), mean, dtype=torch.float64),
                               rtol=0, atol=0.03)


@pytest.mark.parametrize(("name", "sampler", "opts", "steps"), CASES, ids=[c[0] for c in CASES])
def test_sampler_reproduces_gaussian_mixture(name, sampler, opts, steps, gmm) -> None:
    g = torch.Generator().manual_seed(1234)
    x = SIGMA_MAX * torch.randn(N_SAMPLES, 1, 1, 1, 1, generator=g, dtype=torch.float64)  # (B, T, C, H, W)
    sigmas = karras_sigmas(steps, 0.002, SIGMA_MAX, dtype=torch.float64)
    out = sampler(gmm.denoise, x, sigmas, generator=g, **opts).flatten()
    assert out.dtype == torch.float64 and torch.isfinite(out).all()
    centres = torch.tensor(gmm.means, dtype=torch.float64)
    k = (out[:, None] - centres).abs().argmin(1)  # nearest mode
    for j, (w, m, s) in enumerate(zip(gmm.weights, gmm.means, gmm.stds)):
        xs = out[k == j]
        assert abs(xs.numel() / N_SAMPLES - w) < 0.02, (name, j, xs.numel() / N_SAMPLES)
        assert abs(xs.mean().item() - m) < 0.05, (name, j, xs.mean().item())
        assert abs(xs.std().item() / s - 1) < 0.10, (name, j, xs.std().item())


def _ode_errors(sampler, ns, gaussian) -> list[float]:
    """Error at σ_min of the PF-ODE for N(μ, s²) data, whose exact solution is
    x(σ) = μ + (x_T − μ)·√(s² + σ²)/√(s² + σ_max²)."""
    (mu,), (s,) = gaussian.means, gaussian.stds
    sigma_min = 0.002
    x_T = SIGMA_MAX * torch.linspace(-3, 3, 7, dtype=torch.float64)[:, None]
    exact = mu + (x_T - mu) * math.sqrt(s**2 + sigma_min**2) / math.sqrt(s**2 + SIGMA_MAX**2)
    errors = []
    for n in ns:
        sigmas = karras_sigmas(n, sigma_min, SIGMA_MAX, append_zero=False, dtype=torch.float64)
        errors.append((sampler(gaussian.denoise, x_T.clone(), sigmas) - exact).abs().max().item())
    return errors


@pytest.mark.parametrize(("sampler", "lo", "hi"), [(sample_euler, -1.15, -0.85), (sample_ddim, -1.15, -0.85),
                                                   (sample_heun, -2.3, -1.8), (sample_dpmpp_2m, -2.4, -1.8)],
                         ids=["euler", "ddim", "heun", "dpmpp_2m"])
def test_convergence_order_on_exact_ode(sampler, lo, hi, gaussian) -> None:
    ns = [16, 32, 64, 128]
    errors = _ode_errors(sampler, ns, gaussian)
    slope = np.polyfit(np.log(ns), np.log(errors), 1)[0]
    assert lo < slope < hi, (errors, slope)


def test_ddim_eta0_is_euler_and_eta_matches_ancestral(gmm) -> None:
    x = SIGMA_MAX * torch.randn(256, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    sigmas = karras_sigmas(12, 0.002, SIGMA_MAX, dtype=torch.float64)
    torch.testing.assert_close(sample_ddim(gmm.denoise, x, sigmas), sample_euler(gmm.denoise, x, sigmas),
                               rtol=1e-10, atol=1e-10)
    for eta in (0.5, 1.0):
        g_a, g_b = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
        a = sample_ddim(gmm.denoise, x, sigmas, eta=eta, generator=g_a)
        b = sample_euler_ancestral(gmm.denoise, x, sigmas, eta=eta, generator=g_b)
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_ancestral_step_is_ddpm_posterior_variance() -> None:
    """η=1: σ_up² = σ_next²(σ² − σ_next²)/σ² and σ_down² + σ_up² = σ_next² (Song et al. 2021, eq. 16)."""
    for sigma, sigma_next in [(80.0, 40.0), (1.0, 0.5), (0.3, 0.29)]:
        down, up = ancestral_step(sigma, sigma_next, 1.0)
        assert up**2 == pytest.approx(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2, rel=1e-12)
        assert down**2 + up**2 == pytest.approx(sigma_next**2, rel=1e-12)
    assert ancestral_step(1.0, 0.0) == (0.0, 0.0)
    assert ancestral_step(2.0, 1.0, 0.0) == (1.0, 0.0)


class Recorder:
    """A closed-form denoiser that records how it is called."""

    def __init__(self, denoise) -> None:
        self.denoise = denoise
        self.calls: list[tuple[tuple[int, ...], torch.dtype, float, object]] = []

    def __call__(self, x, sigma, cond):
        assert sigma.shape == (x.shape[0],) and sigma.dtype == x.dtype and sigma.device == x.device
        assert torch.all(sigma == sigma[0])
        self.calls.append((tuple(x.shape), x.dtype, float(sigma[0]), cond))
        return self.denoise(x, sigma)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_contract(name: str, gmm) -> None:
    sampler = SAMPLERS[name]
    sigmas = karras_sigmas(5, 0.002, SIGMA_MAX)
    x = SIGMA_MAX * torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(0)).half()
    rec, infos = Recorder(gmm.denoise), []
    g = torch.Generator().manual_seed(0)
    out = sampler(rec, x, sigmas, cond={"c": 1}, callback=infos.append, generator=g)
    assert out.dtype == torch.float32 and out.shape == x.shape  # low-precision input → float32 state
    assert all(c[1] == torch.float32 and c[3] == {"c": 1} for c in rec.calls)
    assert [i["i"] for i in infos] == list(range(5))
    assert [i["sigma_next"] for i in infos] == pytest.approx(sigmas[1:].tolist())
    torch.testing.assert_close(infos[-1]["x"], out)
    assert all(i["denoised"].shape == x.shape for i in infos)
    n_evals = {"heun": 2 * 5 - 1}.get(name, 5)  # Heun: no second evaluation at σ_next = 0
    assert len(rec.calls) == n_evals
    assert rec.calls[0][2] == pytest.approx(float(sigmas[0]))


def test_stochastic_samplers_are_reproducible_with_a_generator(gmm) -> None:
    sigmas = karras_sigmas(8, 0.002, SIGMA_MAX, dtype=torch.float64)
    x = SIGMA_MAX * torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for sampler, opts in [(sample_euler_ancestral, {}), (sample_heun, {"s_churn": 10.0}),
                          (sample_euler, {"s_churn": 10.0})]:
        a = sampler(gmm.denoise, x, sigmas, generator=torch.Generator().manual_seed(5), **opts)
        b = sampler(gmm.denoise, x, sigmas, generator=torch.Generator().manual_seed(5), **opts)
        c = sampler(gmm.denoise, x, sigmas, generator=torch.Generator().manual_seed(6), **opts)
        assert torch.equal(a, b) and not torch.equal(a, c)


STOCHASTIC_CASES = [(sample_euler_ancestral, {}), (sample_ddim, {"eta": 1.0}), (sample_heun, {"s_churn": 10.0}),
                    (sample_euler, {"s_churn": 10.0})]


@pytest.mark.parametrize(("sampler", "opts"), STOCHASTIC_CASES,
                         ids=["euler_ancestral", "ddim_eta1", "heun_churn", "euler_churn"])
def test_a_generator_per_sample_draws_that_sample_alone(sampler, opts, gmm) -> None:
    """With a list of generators, row b of the batch depends only on generator b: a sample repeats whatever
    else is in the batch (diffusers' per-sample generators)."""
    sigmas = karras_sigmas(6, 0.002, SIGMA_MAX, dtype=torch.float64)
    x = SIGMA_MAX * torch.randn(3, 2, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    batch = sampler(gmm.denoise, x, sigmas, generator=[torch.Generator().manual_seed(s) for s in (7, 8, 9)], **opts)
    for b, seed in enumerate((7, 8, 9)):
        alone = sampler(gmm.denoise, x[b:b + 1], sigmas, generator=[torch.Generator().manual_seed(seed)], **opts)
        torch.testing.assert_close(batch[b:b + 1], alone, rtol=0, atol=1e-12)
    swapped = sampler(gmm.denoise, x, sigmas, generator=[torch.Generator().manual_seed(s) for s in (9, 8, 7)],
                      **opts)
    assert torch.equal(swapped[1], batch[1]) and not torch.equal(swapped[0], batch[0])
    with pytest.raises(ValueError, match="2 generators given for a batch of 3"):
        sampler(gmm.denoise, x, sigmas, generator=[torch.Generator()] * 2, **opts)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_callback_can_replace_the_state(name: str, gmm) -> None:
    """A callback returning ``{"x": y}`` after the last step makes ``y`` the result; after step 0 of an
    Euler walk, continuing equals a fresh walk from ``y`` over the remaining levels."""
    sampler = SAMPLERS[name]
    sigmas = karras_sigmas(4, 0.002, SIGMA_MAX, dtype=torch.float64)
    x = SIGMA_MAX * torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    target = torch.full_like(x, 0.25)
    out = sampler(gmm.denoise, x, sigmas, callback=lambda info: {"x": target} if info["i"] == 3 else None,
                  generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, target)
    with pytest.raises(ValueError, match="shape"):
        sampler(gmm.denoise, x, sigmas, callback=lambda info: {"x": target[:1]})


def test_replaced_state_is_where_the_walk_continues(gmm) -> None:
    sigmas = karras_sigmas(5, 0.002, SIGMA_MAX, dtype=torch.float64)
    x = SIGMA_MAX * torch.randn(4, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y = x * 0.1
    replaced = sample_euler(gmm.denoise, x, sigmas, callback=lambda info: {"x": y} if info["i"] == 0 else None)
    fresh = sample_euler(gmm.denoise, y, sigmas[1:])
    assert torch.equal(replaced, fresh)


def test_sampler_by_name_is_the_registry() -> None:
    assert all(sampler_by_name(name) is SAMPLERS[name] for name in SAMPLERS)
    with pytest.raises(ValueError, match="unknown sampler 'euler_a'; valid: ddim, dpmpp_2m, euler"):
        sampler_by_name("euler_a")
