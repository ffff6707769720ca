"""Training side: σ samplers, weightings, the EDM denoising loss and DDPM's ε-loss, against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from vidiff.diffusion import (
    SIGMA_SAMPLERS,
    WEIGHTINGS,
    Denoiser,
    DiscreteEpsScaling,
    DiscreteSchedule,
    DiscreteSigmaSampler,
    EDMLogNormalSampler,
    EDMScaling,
    EDMWeighting,
    EpsScaling,
    EpsWeighting,
    FlowWeighting,
    UnitWeighting,
    VScaling,
    VScalingEDMcNoise,
    VWeighting,
    alphas_cumprod,
    ddpm_eps_loss,
    denoising_loss,
    linear_betas,
    weighting_by_name,
)
from vidiff.utils import append_dims


def test_lognormal_sampler_moments() -> None:
    sampler = EDMLogNormalSampler(-1.2, 1.2)
    n = 200_000
    log_sigma = sampler(n, generator=torch.Generator().manual_seed(0)).log()
    assert log_sigma.shape == (n,)
    assert abs(log_sigma.mean().item() + 1.2) < 4 * 1.2 / math.sqrt(n)
    assert abs(log_sigma.std().item() / 1.2 - 1) < 4 / math.sqrt(2 * n)
    a = sampler(5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, sampler(5, generator=torch.Generator().manual_seed(1)))
    assert set(SIGMA_SAMPLERS) == {"edm_lognormal", "discrete"}


def test_discrete_sampler_is_uniform_over_its_levels() -> None:
    levels = torch.tensor([0.1, 0.7, 2.0, 9.0, 30.0], dtype=torch.float64)
    n = 100_000
    draws = DiscreteSigmaSampler(levels)(n, generator=torch.Generator().manual_seed(0))
    counts = torch.stack([(draws == v).sum() for v in levels])
    assert counts.sum().item() == n  # every draw is one of the levels
    expected = n / 5
    assert torch.all((counts - expected).abs() < 4 * math.sqrt(expected * 0.8))


SIGMA = torch.tensor([0.01, 0.2, 1.0, 5.0, 80.0], dtype=torch.float64)


def test_weightings_closed_forms() -> None:
    torch.testing.assert_close(UnitWeighting()(SIGMA), torch.ones_like(SIGMA))
    torch.testing.assert_close(EDMWeighting(0.5)(SIGMA), (SIGMA**2 + 0.25) / (SIGMA * 0.5) ** 2)
    torch.testing.assert_close(VWeighting()(SIGMA), (SIGMA**2 + 1) / SIGMA**2)
    torch.testing.assert_close(EpsWeighting()(SIGMA), 1 / SIGMA**2)
    torch.testing.assert_close(FlowWeighting()(SIGMA), ((1 + SIGMA) / SIGMA) ** 2)  # 1/t², t = σ/(1 + σ)
    assert set(WEIGHTINGS) == {"unit", "edm", "v", "eps", "flow"}


def test_every_registered_weighting_builds_and_unknown_names_are_listed() -> None:
    expected = {"unit": torch.ones_like(SIGMA), "edm": (SIGMA**2 + 0.49) / (SIGMA * 0.7) ** 2,
                "v": (SIGMA**2 + 1) / SIGMA**2, "eps": 1 / SIGMA**2, "flow": ((1 + SIGMA) / SIGMA) ** 2}
    for name, cls in WEIGHTINGS.items():
        weighting = weighting_by_name(name, sigma_data=0.7)
        assert type(weighting) is cls
        torch.testing.assert_close(weighting(SIGMA), expected[name])
    with pytest.raises(ValueError, match=r"unknown loss weighting 'edn'; valid: edm, eps, flow, unit, v$"):
        weighting_by_name("edn")


def test_training_selects_weightings_through_the_registry(monkeypatch) -> None:
    """A weighting added to ``WEIGHTINGS`` is accepted by the training config and built by name (with its
    ``sigma_data``), with no second table of names to update."""
    from vidiff.training.config import ConfigError, LossConfig
    from vidiff.training.objectives import make_weighting

    class Sqrt(EDMWeighting):
        def __call__(self, sigma: torch.Tensor) -> torch.Tensor:
            return super().__call__(sigma).sqrt()

    monkeypatch.setitem(WEIGHTINGS, "sqrt", Sqrt)
    weighting = make_weighting(LossConfig(weighting="sqrt", sigma_data=0.7))
    assert type(weighting) is Sqrt and weighting.sigma_data == 0.7
    torch.testing.assert_close(make_weighting(LossConfig(weighting="edm", sigma_data=0.7))(SIGMA),
                               (SIGMA**2 + 0.49) / (SIGMA * 0.7) ** 2)
    with pytest.raises(ConfigError, match=r"loss\.weighting must be one of .*'sqrt'.*got 'edn'"):
        LossConfig(weighting="edn")


@pytest.mark.parametrize(("scaling", "weighting"), [(EDMScaling(0.5), EDMWeighting(0.5)),
                                                    (EDMScaling(1.0), EDMWeighting(1.0)),
                                                    (VScaling(), VWeighting()),
                                                    (VScalingEDMcNoise(), VWeighting()),
                                                    (EpsScaling(), EpsWeighting())], ids=repr)
def test_matched_weighting_is_mse_on_network_output(scaling, weighting) -> None:
    """λ(σ)·‖D − x₀‖² = ‖F − F_target‖² for the matching weighting (λ = 1/c_out², EDM eq. 8)."""
    g = torch.Generator().manual_seed(0)
    x0, n = (torch.randn(5, 2, 3, 4, generator=g, dtype=torch.float64) for _ in range(2))

    def network(x_in, c_noise, cond):  # an arbitrary nonlinear F
        return torch.sin(3 * x_in) + append_dims(c_noise, x_in.ndim)

    x = x0 + append_dims(SIGMA, x0.ndim) * n
    D = Denoiser(network, scaling)(x, SIGMA)
    c_in, c_noise = scaling(SIGMA)[2:]
    F = network(append_dims(c_in, x.ndim) * x, c_noise, None)
    lhs = weighting(SIGMA) * (D - x0).square().flatten(1).mean(1)
    rhs = (F - scaling.target(x0, n, SIGMA)).square().flatten(1).mean(1)
    torch.testing.assert_close(lhs, rhs, rtol=1e-9, atol=1e-12)


def test_ideal_denoiser_has_zero_loss() -> None:
    """D = x₀ exactly (the network returns its ideal target) ⇒ zero loss under every weighting."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(8, 3, 4, generator=g, dtype=torch.float64)
    scaling = EDMScaling(0.5)
    for weighting in (EDMWeighting(0.5), UnitWeighting(), EpsWeighting()):
        noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)

        def network(x_in, c_noise, cond, noise=noise):
            return scaling.target(x0, noise, torch.exp(4 * c_noise))

        loss = denoising_loss(Denoiser(network, scaling), x0, None, EDMLogNormalSampler(), weighting,
                              generator=g, noise=noise)
        assert loss.shape == (8,) and loss.abs().max().item() < 1e-20


def test_loss_of_ideal_gaussian_denoiser_is_mmse(gaussian) -> None:
    """Data N(μ, s²): E[(D* − x₀)²] = s²σ²/(s²+σ²); EDM weighting at σ_data = s makes it 1 at any σ."""
    s = gaussian.stds[0]
    g = torch.Generator().manual_seed(0)
    x0 = gaussian.sample((512, 256), g)
    loss = denoising_loss(gaussian.denoise, x0, None, EDMLogNormalSampler(), EDMWeighting(s), generator=g)
    assert abs(loss.mean().item() - 1) < 0.02  # SE = √(2/(512·256)) ≈ 0.004
    sigma = torch.tensor([0.8], dtype=torch.float64)
    loss = denoising_loss(gaussian.denoise, x0, None, DiscreteSigmaSampler(sigma), UnitWeighting(),
                          generator=g)
    mmse = s**2 * 0.8**2 / (s**2 + 0.8**2)
    assert abs(loss.mean().item() / mmse - 1) < 0.02


def _ideal_eps(alphas: torch.Tensor, mu: float, s: float):
    """E[ε | x_t] for data N(μ, s²): √(1−ᾱ)(x_t − √ᾱ μ)/(ᾱ s² + 1 − ᾱ)."""

    def eps_model(x_t, t, cond):
        a = append_dims(alphas[t.round().long()], x_t.ndim)
        return (1 - a).sqrt() * (x_t - a.sqrt() * mu) / (a * s**2 + 1 - a)

    return eps_model


def test_ddpm_eps_loss_closed_forms() -> None:
    alphas = alphas_cumprod(linear_betas())
    g = torch.Generator().manual_seed(0)
    # point-mass data: ε is recovered exactly from x_t
    x0 = torch.full((64, 3, 8), 0.4, dtype=torch.float64)
    assert ddpm_eps_loss(_ideal_eps(alphas, 0.4, 0.0), x0, None, alphas, generator=g).max().item() < 1e-20
    # Gaussian data: expected loss is the mean over t of the ε-MMSE ᾱs²/(ᾱs² + 1 − ᾱ)
    mu, s = 0.3, 0.5
    x0 = mu + s * torch.randn(4096, 64, generator=g, dtype=torch.float64)
    loss = ddpm_eps_loss(_ideal_eps(alphas, mu, s), x0, None, alphas, generator=g)
    expected = (alphas * s**2 / (alphas * s**2 + 1 - alphas)).mean().item()
    assert abs(loss.mean().item() - expected) < 0.01  # MC over t dominates: SE ≈ 0.005


def test_ddpm_loss_is_denoising_loss_with_eps_scaling_and_weighting() -> None:
    """Ho et al.'s ε-MSE = EDM loss with EpsScaling (t from σ), EpsWeighting, σ uniform over the T levels."""
    alphas = alphas_cumprod(linear_betas())
    schedule = DiscreteSchedule(alphas)
    eps_model = _ideal_eps(alphas, 0.3, 0.5)
    x0 = 0.3 + 0.5 * torch.randn(32, 2, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ddpm = ddpm_eps_loss(eps_model, x0, None, alphas, generator=torch.Generator().manual_seed(7))
    edm = denoising_loss(Denoiser(eps_model, DiscreteEpsScaling(schedule)), x0, None,
                         DiscreteSigmaSampler(schedule.sigmas), EpsWeighting(),
                         generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(edm, ddpm, rtol=1e-8, atol=1e-12)
