"""Preconditionings against the EDM paper's Table 1, and the Denoiser wrapper (EDM eq. 7)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from vidiff.diffusion import (
    SCALINGS,
    Denoiser,
    DiscreteEpsScaling,
    DiscreteSchedule,
    EDMScaling,
    EpsScaling,
    Scaling,
    VScaling,
    VScalingEDMcNoise,
    X0Scaling,
    scaled_linear_betas,
    scaling_by_name,
)

SIGMAS = torch.tensor([0.002, 0.03, 0.5, 1.0, 7.0, 80.0, 700.0], dtype=torch.float64)


def _schedule() -> DiscreteSchedule:
    return DiscreteSchedule.from_betas(scaled_linear_betas())


def _scalings() -> list[Scaling]:
    return [EDMScaling(0.5), EDMScaling(1.3), EpsScaling(), VScaling(), VScalingEDMcNoise(),
            DiscreteEpsScaling(_schedule()), X0Scaling(0.25)]


def _sigma_of_c_noise(scaling: Scaling, c_noise: torch.Tensor) -> torch.Tensor:
    """Invert each scaling's c_noise (independently of the library)."""
    if isinstance(scaling, EDMScaling | VScalingEDMcNoise | X0Scaling):
        return torch.exp(4 * c_noise)  # c_noise = ¼ ln σ
    if isinstance(scaling, DiscreteEpsScaling):
        return scaling.schedule.t_to_sigma(c_noise)
    return c_noise  # c_noise = σ


def test_edm_coefficients_table1() -> None:
    sd = 0.5
    c_skip, c_out, c_in, c_noise = EDMScaling(sd)(SIGMAS)
    for i, s in enumerate(SIGMAS.tolist()):
        assert c_skip[i].item() == pytest.approx(sd**2 / (s**2 + sd**2), rel=1e-14)
        assert c_out[i].item() == pytest.approx(s * sd / math.sqrt(sd**2 + s**2), rel=1e-14)
        assert c_in[i].item() == pytest.approx(1 / math.sqrt(sd**2 + s**2), rel=1e-14)
        assert c_noise[i].item() == pytest.approx(math.log(s) / 4, rel=1e-14)


def test_eps_and_v_coefficients() -> None:
    c_skip, c_out, c_in, c_noise = EpsScaling()(SIGMAS)
    torch.testing.assert_close(c_skip, torch.ones_like(SIGMAS))
    torch.testing.assert_close(c_out, -SIGMAS)
    torch.testing.assert_close(c_in, 1 / (SIGMAS**2 + 1).sqrt())
    torch.testing.assert_close(c_noise, SIGMAS)
    # v: the EDM coefficients at σ_data = 1 with c_out negated (Salimans & Ho 2022)
    v, edm1 = VScaling()(SIGMAS), EDMScaling(1.0)(SIGMAS)
    torch.testing.assert_close(v.c_skip, edm1.c_skip)
    torch.testing.assert_close(v.c_out, -edm1.c_out)
    torch.testing.assert_close(v.c_in, edm1.c_in)
    torch.testing.assert_close(v.c_noise, SIGMAS)
    # SVD: v coefficients with EDM's c_noise
    svd = VScalingEDMcNoise()(SIGMAS)
    for a, b in zip(svd[:3], v[:3]):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(svd.c_noise, edm1.c_noise)
    assert set(SCALINGS) == {"edm", "eps", "v", "v_edm", "x0", "discrete_eps", "flow"}


def test_x0_coefficients() -> None:
    """x₀-prediction: nothing of x passes through, the network's output is the sample in units of σ_data."""
    sd = 0.25
    c_skip, c_out, c_in, c_noise = X0Scaling(sd)(SIGMAS)
    torch.testing.assert_close(c_skip, torch.zeros_like(SIGMAS))
    torch.testing.assert_close(c_out, torch.full_like(SIGMAS, sd))
    torch.testing.assert_close(c_in, 1 / (SIGMAS**2 + sd**2).sqrt())
    torch.testing.assert_close(c_noise, SIGMAS.log() / 4)


@pytest.mark.parametrize("scaling", [EpsScaling(), VScaling(), VScalingEDMcNoise(), X0Scaling(0.25)], ids=repr)
def test_closed_form_targets_equal_generic_target(scaling: Scaling) -> None:
    """ε target = n, v target = (n − σx₀)/√(σ²+1) agree with F = (x₀ − c_skip x)/c_out (EDM eq. 8)."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(7, 3, 2, generator=g, dtype=torch.float64)
    n = torch.randn(7, 3, 2, generator=g, dtype=torch.float64)
    torch.testing.assert_close(scaling.target(x0, n, SIGMAS), Scaling.target(scaling, x0, n, SIGMAS))


class TargetNetwork:
    """Returns the scaling's ideal target for the (x₀, n) carried in cond, after checking its inputs."""

    def __init__(self, scaling: Scaling) -> None:
        self.scaling = scaling

    def __call__(self, x_in: torch.Tensor, c_noise: torch.Tensor, cond: dict) -> torch.Tensor:
        sigma = cond["sigma"]
        torch.testing.assert_close(_sigma_of_c_noise(self.scaling, c_noise), sigma, rtol=1e-9, atol=0)
        x = cond["x0"] + sigma.reshape(-1, 1, 1, 1, 1) * cond["noise"]
        torch.testing.assert_close(x_in, x / (sigma**2 + self._sd2()).sqrt().reshape(-1, 1, 1, 1, 1))
        return self.scaling.target(cond["x0"], cond["noise"], sigma)

    def _sd2(self) -> float:
        return self.scaling.sigma_data**2 if isinstance(self.scaling, EDMScaling | X0Scaling) else 1.0


@pytest.mark.parametrize("scaling", _scalings(), ids=repr)
def test_denoiser_recovers_x0_from_ideal_target(scaling: Scaling) -> None:
    g = torch.Generator().manual_seed(1)
    sigma = torch.tensor([0.03, 0.5, 1.0, 7.0, 14.0], dtype=torch.float64)  # in the DDPM range for t ↔ σ
    x0 = torch.randn(5, 2, 3, 4, 4, generator=g, dtype=torch.float64)
    n = torch.randn(5, 2, 3, 4, 4, generator=g, dtype=torch.float64)
    D = Denoiser(TargetNetwork(scaling), scaling)
    out = D(x0 + sigma.reshape(-1, 1, 1, 1, 1) * n, sigma, {"x0": x0, "noise": n, "sigma": sigma})
    assert (out - x0).abs().max().item() < 1e-6


def _ddpm_t_of_sigma(sigma: torch.Tensor) -> torch.Tensor:
    """SD's scaled-linear DDPM timestep of σ, written out with numpy: σ_t = √((1 − ᾱ_t)/ᾱ_t), t linear in ln σ
    between integer steps."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    abar = np.cumprod(1 - betas)
    log_sigmas = np.log(np.sqrt((1 - abar) / abar))
    return torch.from_numpy(np.interp(np.log(sigma.numpy()), log_sigmas, np.arange(1000.0)))


def _ideal_network_io(kind: str, sd: float, x: torch.Tensor, sigma: torch.Tensor, D: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """What a perfect network of parametrisation ``kind`` receives (``c_in·x``) and outputs (``F``) when the
    ideal denoiser is ``D``; each written from its own paper, not from the library's coefficients."""
    s = sigma[:, None]
    if kind == "edm":  # Karras et al. 2022, Table 1 and eq. 7 solved for F
        norm = (s**2 + sd**2).sqrt()
        return x / norm, norm / (s * sd) * D - sd / (s * norm) * x
    if kind == "eps":  # Ho et al. 2020: the network sees x_t = x/√(1+σ²) and predicts ε = (x − x₀)/σ
        return x / (1 + s**2).sqrt(), (x - D) / s
    if kind == "v":  # Salimans & Ho 2022: v = α ε − σ_t x₀ with α = 1/√(1+σ²), σ_t = σ/√(1+σ²)
        eps = (x - D) / s
        return x / (1 + s**2).sqrt(), (eps - s * D) / (1 + s**2).sqrt()
    if kind == "x0":  # the sample itself, in units of σ_data
        return x / (s**2 + sd**2).sqrt(), D / sd
    raise AssertionError(kind)


# scaling, parametrisation, σ_data, c_noise(σ): each expectation written independently of the library
_PARAMETRISATIONS = [
    (EDMScaling(0.5), "edm", 0.5, lambda s: s.log() / 4),
    (EDMScaling(1.3), "edm", 1.3, lambda s: s.log() / 4),
    (EpsScaling(), "eps", 1.0, lambda s: s),
    (DiscreteEpsScaling(_schedule()), "eps", 1.0, _ddpm_t_of_sigma),
    (VScaling(), "v", 1.0, lambda s: s),
    (VScalingEDMcNoise(), "v", 1.0, lambda s: s.log() / 4),
    (X0Scaling(0.25), "x0", 0.25, lambda s: s.log() / 4),
]


@pytest.mark.parametrize(("scaling", "kind", "sd", "c_noise_of"), _PARAMETRISATIONS,
                         ids=[repr(p[0]) for p in _PARAMETRISATIONS])
def test_denoiser_of_ideal_gmm_network_is_ideal_denoiser(scaling: Scaling, kind: str, sd: float, c_noise_of,
                                                         gmm) -> None:
    """A perfect network of each parametrisation, built from the closed-form E[x₀ | x] of a Gaussian mixture
    and the parametrisation's own definition (never from the scaling under test), makes ``Denoiser`` equal
    the ideal denoiser: any wrong c_skip / c_out changes D, any wrong c_in / c_noise is caught on input."""
    g = torch.Generator().manual_seed(2)
    sigma = torch.tensor([0.05, 0.4, 1.0, 3.0, 10.0], dtype=torch.float64)  # in the DDPM range for t ↔ σ
    x = gmm.sample((5, 64), g) + sigma[:, None] * torch.randn(5, 64, generator=g, dtype=torch.float64)
    ideal = gmm.denoise(x, sigma)
    x_in_expected, F = _ideal_network_io(kind, sd, x, sigma, ideal)

    def network(x_in: torch.Tensor, c_noise: torch.Tensor, cond: object) -> torch.Tensor:
        torch.testing.assert_close(c_noise, c_noise_of(sigma), rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(x_in, x_in_expected, rtol=1e-12, atol=1e-12)
        return F

    out = Denoiser(network, scaling)(x, sigma, None)
    assert (out - ideal).abs().max().item() < 1e-9


def test_every_registered_scaling_builds_and_unknown_names_are_listed() -> None:
    """Each name builds its class with the options it takes; the diffusers prediction type written on export
    is the one of its parametrisation."""
    prediction = {"edm": "edm", "eps": "epsilon", "discrete_eps": "epsilon", "v": "v_prediction",
                  "v_edm": "v_prediction", "x0": "sample", "flow": "flow_prediction"}
    schedule = _schedule()
    for name, cls in SCALINGS.items():
        scaling = scaling_by_name(name, sigma_data=0.7, schedule=schedule)
        assert type(scaling) is cls
        if hasattr(scaling, "sigma_data"):
            assert scaling.sigma_data == 0.7
        if hasattr(scaling, "schedule"):
            assert scaling.schedule is schedule
        assert scaling.prediction_type == prediction[name]
        assert all(torch.isfinite(t).all() for t in scaling(SIGMAS[1:5]))
    with pytest.raises(ValueError, match=r"unknown scaling 'vv'; valid: discrete_eps, edm, eps, flow, v, v_edm, x0$"):
        scaling_by_name("vv")
    with pytest.raises(ValueError, match=r"unknown scaling \['v'\]; valid: "):  # not a name at all
        scaling_by_name(["v"])


def test_training_selects_scalings_through_the_registry(monkeypatch) -> None:
    """A scaling added to ``SCALINGS`` is accepted by the training config and built by name, with no second
    list of names to update."""
    from vidiff.training.config import LossConfig
    from vidiff.training.objectives import make_scaling

    class Halved(VScaling):
        prediction_type = "v_prediction"

    monkeypatch.setitem(SCALINGS, "halved", Halved)
    assert type(make_scaling(LossConfig(scaling="halved"))) is Halved


class HalfScale(nn.Module):
    """F(x_in) = w·x_in with a bfloat16 parameter; records the dtypes it is called with."""

    def __init__(self, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.full((), 0.5, dtype=dtype))
        self.seen: list[torch.dtype] = []

    def forward(self, x_in: torch.Tensor, c_noise: torch.Tensor, cond: object) -> torch.Tensor:
        self.seen += [x_in.dtype, c_noise.dtype]
        return x_in * self.w


def test_denoiser_casts_to_network_dtype_and_back() -> None:
    net = HalfScale()
    x = torch.randn(2, 3, 4, 5, 5)
    out = Denoiser(net, EDMScaling())(x, 1.5)
    assert net.seen == [torch.bfloat16, torch.float32]  # c_noise keeps the sampler's precision
    assert out.dtype == torch.float32
    # The override wins over the parameter dtype.
    net.seen.clear()
    Denoiser(net, EDMScaling(), dtype=torch.float32)(x, 1.5)
    assert net.seen == [torch.float32, torch.float32]


def test_denoiser_without_parameters_uses_x_dtype_and_expands_sigma() -> None:
    seen = {}

    def network(x_in: torch.Tensor, c_noise: torch.Tensor, cond: object) -> torch.Tensor:
        seen["dtype"], seen["c_noise"] = x_in.dtype, c_noise
        return torch.zeros_like(x_in)

    x = torch.randn(3, 4, dtype=torch.float64)
    out = Denoiser(network, EDMScaling(0.5))(x, torch.tensor(2.0))
    assert seen["dtype"] == torch.float64
    torch.testing.assert_close(seen["c_noise"], torch.full((3,), 0.25 * math.log(2.0), dtype=torch.float64))
    torch.testing.assert_close(out, x * 0.25 / (4 + 0.25))  # c_skip·x with F = 0
