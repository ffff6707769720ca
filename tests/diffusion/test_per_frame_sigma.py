"""The per-frame noise-level contract: σ of shape ``(B, T)`` and schedule matrices ``S[frame, step]``.

Oracles: a ``(B, T)`` σ equal over frames must reproduce the ``(B,)`` path bit for bit; with a denoiser that
treats frames independently (the ideal Gaussian-mixture denoiser) each frame of a matrix schedule must follow
the 1-D run of its own row; a frame-coupled closed form (the ideal denoiser of a Gaussian video prior with
correlation ρ^|i−j| between frames) checks that frames held clean are left exactly as they are.
"""

from __future__ import annotations

import math

import pytest
import torch

from vidiff.diffusion import (
    SAMPLERS,
    CFGDenoiser,
    Denoiser,
    DiscreteSchedule,
    KnownValuesDenoiser,
    VScalingEDMcNoise,
    X0Scaling,
    expand_sigma,
    karras_sigmas,
    scaled_linear_betas,
    scaling_by_name,
)
from vidiff.utils import append_dims

B, T = 2, 4
CASES = [("euler", {}), ("euler", {"s_churn": 10.0}), ("heun", {}),
         ("heun", {"s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 50.0, "s_noise": 1.003}),
         ("euler_ancestral", {}), ("dpmpp_2m", {}), ("ddim", {}), ("ddim", {"eta": 1.0})]  # fmt: skip
IDS = ["euler", "euler_churn", "heun", "heun_churn", "euler_ancestral", "dpmpp_2m", "ddim", "ddim_eta1"]
DETERMINISTIC = [c for c in CASES if not any(k in c[1] for k in ("s_churn", "eta")) and c[0] != "euler_ancestral"]


def gaussian_video_denoiser(rho: float = 0.8):
    """``E[x₀ | x]`` for frames ``x₀ ~ N(0, Σ)``, ``Σ_ij = ρ^|i−j|`` per pixel, frame ``f`` noised by ``σ_f``:
    ``Σ(Σ + diag σ²)⁻¹ x`` (couples every frame to every other)."""

    def denoise(x: torch.Tensor, sigma: torch.Tensor, cond: object = None) -> torch.Tensor:
        t = x.shape[1]
        idx = torch.arange(t, dtype=torch.float64)
        cov = rho ** (idx[:, None] - idx[None]).abs()
        s2 = sigma.to(torch.float64).reshape(x.shape[0], -1).expand(-1, t) ** 2  # (B, T)
        m = cov @ torch.linalg.inv(cov + torch.diag_embed(s2))  # (B, T, T)
        return torch.einsum("bij,bj...->bi...", m, x.to(torch.float64)).to(x.dtype)

    return denoise


def _noise(seed: int = 0, scale: float = 80.0) -> torch.Tensor:
    return torch.randn(B, T, 3, 4, 5, generator=torch.Generator().manual_seed(seed)) * scale


def _run(name: str, opts: dict, denoiser, x: torch.Tensor, sigmas: torch.Tensor, **kw) -> torch.Tensor:
    return SAMPLERS[name](denoiser, x, sigmas, generator=torch.Generator().manual_seed(1), **opts, **kw)


# --- shapes, scalings, denoisers ---------------------------------------------------------------------------


def test_expand_sigma_takes_scalar_batch_and_frame_shapes() -> None:
    x = torch.zeros(B, T, 3, 2, 2)
    assert expand_sigma(0.5, x).shape == (B,)
    assert expand_sigma(torch.ones(B), x).shape == (B,)
    assert expand_sigma(torch.ones(B, T), x).shape == (B, T)
    for bad in (torch.ones(B + 1), torch.ones(B, T + 1), torch.ones(B, T, 1)):
        with pytest.raises(ValueError, match="sigma must be"):
            expand_sigma(bad, x)


@pytest.mark.parametrize("name", ["edm", "eps", "v", "v_edm", "x0", "discrete_eps"])
def test_scalings_are_elementwise_on_frame_sigma(name: str) -> None:
    schedule = DiscreteSchedule(scaled_linear_betas(1000, 0.00085, 0.012))
    scaling = scaling_by_name(name, sigma_data=0.5, schedule=schedule)
    sigma = torch.rand(B, T, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 20 + 0.01
    per_frame = scaling(sigma)
    for f in range(T):
        for got, want in zip(per_frame, scaling(sigma[:, f].contiguous()), strict=True):
            assert got.shape == (B, T)
            torch.testing.assert_close(got[:, f], want, rtol=1e-12, atol=0)
    coefficient = append_dims(per_frame.c_skip, 5)  # (B, T) against (B, T, C, H, W)
    assert coefficient.shape == (B, T, 1, 1, 1)


@pytest.mark.parametrize("scaling", [VScalingEDMcNoise(), X0Scaling(0.5)], ids=["v_edm", "x0"])
def test_frames_at_sigma_zero_are_returned_exactly_and_the_network_sees_finite_levels(scaling) -> None:
    seen = []

    def network(x_in, c_noise, cond):  # records what the network is given, then a frame-mixing response
        seen.append(c_noise)
        return torch.tanh(x_in) + x_in.mean(1, keepdim=True)

    x = _noise(scale=1.0)
    sigma = torch.tensor([[0.0, 0.5, 3.0, 0.0], [2.0, 0.0, 0.7, 1.0]])
    out = Denoiser(network, scaling)(x, sigma)
    clean = sigma == 0
    assert torch.equal(out[clean], x[clean])  # D(x, 0) = x, bit for bit
    assert torch.isfinite(out).all() and torch.isfinite(seen[0]).all()
    want = scaling(torch.full((1,), 0.002)).c_noise  # shown at SVD's σ_min
    assert torch.equal(seen[0][clean], want.expand(int(clean.sum())))
    # the noisy frames get what a (B,)-call at their own level gives, for a network without frame mixing
    independent = Denoiser(lambda x_in, c, cond: torch.tanh(x_in) * 2, scaling)
    per_frame = independent(x, sigma)
    for b, f in zip(*torch.nonzero(~clean, as_tuple=True), strict=True):
        alone = independent(x[b:b + 1], sigma[b, f].reshape(1))
        torch.testing.assert_close(per_frame[b, f], alone[0, f], rtol=1e-6, atol=1e-7)


def test_denoiser_and_cfg_with_constant_frame_sigma_are_bit_identical_to_batch_sigma() -> None:
    video = gaussian_video_denoiser()  # a frame-mixing "network" of (x_in, c_noise = σ)
    d = Denoiser(lambda x_in, c_noise, cond: video(x_in, c_noise, cond), scaling_by_name("v"))
    sigma, x = torch.tensor([0.3, 7.0]), _noise(scale=1.0)
    frames = sigma[:, None].expand(B, T)
    assert torch.equal(d(x, frames), d(x, sigma))
    scales = torch.linspace(1.0, 3.0, T).reshape(1, T, 1, 1, 1)
    cfg = CFGDenoiser(lambda x_, s, c: d(x_, s) * (1 + c[:, None, None, None, None]), torch.zeros(B), scales)
    cond = torch.ones(B)
    assert torch.equal(cfg(x, frames, cond), cfg(x, sigma, cond))
    known = KnownValuesDenoiser(d, torch.tensor([True, False, False, False]).reshape(1, T, 1, 1, 1), 0.0)
    assert torch.equal(known(x, frames), known(x, sigma)) and not known(x, frames)[:, 0].any()


def test_cfg_with_distinct_frame_sigma_guides_each_frame_at_its_own_level(gmm) -> None:
    scales = torch.linspace(1.5, 3.0, T).reshape(1, T, 1, 1, 1)
    cfg = CFGDenoiser(lambda x, s, c: gmm.denoise(x + c[:, None, None, None, None], s), torch.zeros(B), scales)
    x, cond = _noise(scale=2.0), torch.full((B,), 0.3)
    sigma = torch.tensor([[0.2, 1.0, 5.0, 0.0], [3.0, 0.5, 0.5, 9.0]])
    out = cfg(x, sigma, cond)
    for f in range(T):
        torch.testing.assert_close(out[:, f], cfg(x, sigma[:, f], cond)[:, f], rtol=0, atol=0)


# --- samplers ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "opts"), CASES, ids=IDS)
def test_equal_rows_reproduce_the_1d_schedule_bit_for_bit(name: str, opts: dict) -> None:
    sigmas = karras_sigmas(6, 0.002, 80.0, 7.0)
    calls = []

    def denoiser(x, sigma, cond):
        calls.append(tuple(sigma.shape))
        return gaussian_video_denoiser()(x, sigma, cond)

    one_d = _run(name, opts, denoiser, _noise(), sigmas)
    n_calls = len(calls)
    matrix = _run(name, opts, denoiser, _noise(), sigmas[None].expand(T, -1))
    assert torch.equal(matrix, one_d)
    assert set(calls[:n_calls]) == {(B,)} and set(calls[n_calls:]) == {(B, T)}
    assert len(calls) == 2 * n_calls


# heun_churn (churn only inside [s_tmin, s_tmax]) draws on different steps for different rows: left out
SAME_DRAWS = [(c, i) for c, i in zip(CASES, IDS, strict=True) if i != "heun_churn"]


@pytest.mark.parametrize(("name", "opts"), [c for c, _ in SAME_DRAWS], ids=[i for _, i in SAME_DRAWS])
def test_each_frame_follows_its_own_row(name: str, opts: dict, gmm) -> None:
    """Distinct rows of equal length, ending at 0 together: the same random draws as each row's 1-D run."""
    rows = torch.stack([karras_sigmas(6, 0.002 * (f + 1), 80.0 / (f + 1), 7.0) for f in range(T)])
    x = _noise(scale=20.0)
    matrix = _run(name, opts, gmm.denoise, x, rows)
    assert torch.isfinite(matrix).all()
    for f in range(T):
        alone = _run(name, opts, gmm.denoise, x, rows[f])
        torch.testing.assert_close(matrix[:, f], alone[:, f], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(matrix[:, 0], _run(name, opts, gmm.denoise, x, rows[1])[:, 0])


@pytest.mark.parametrize(("name", "opts"), DETERMINISTIC, ids=[c[0] for c in DETERMINISTIC])
def test_staggered_rows_wait_then_walk_then_stay_clean(name: str, opts: dict, gmm) -> None:
    """FIFO-like rows: frame f waits f steps at σ_max, walks the base schedule, then stays at 0."""
    base = karras_sigmas(5, 0.002, 80.0, 7.0).double()
    rows = torch.stack([torch.cat([base[:1].repeat(f), base, torch.zeros(T - 1 - f)]) for f in range(T)])
    x = _noise(scale=80.0).double()
    matrix = _run(name, opts, gmm.denoise, x, rows)
    alone = _run(name, opts, gmm.denoise, x, base)
    torch.testing.assert_close(matrix, alone, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(("name", "opts"), CASES, ids=IDS)
def test_held_frames_are_left_exactly_as_they_are(name: str, opts: dict) -> None:
    """A clean frame (row of zeros) and a frame parked at a constant σ come out exactly as they went in, while
    the frame-coupled denoiser lets them steer the others (which differ from a run without them held)."""
    base = karras_sigmas(6, 0.002, 80.0, 7.0)
    rows = base[None].repeat(T, 1)
    rows[0] = 0.0
    rows[2] = 5.0
    x = _noise()
    x[:, 0] /= 80.0  # a clean frame
    x[:, 2] /= 16.0  # a frame at σ = 5
    seen = []

    def denoiser(x_, sigma, cond):
        seen.append(sigma)
        return gaussian_video_denoiser()(x_, sigma, cond)

    out = _run(name, opts, denoiser, x, rows)
    assert torch.isfinite(out).all()
    assert torch.equal(out[:, 0], x[:, 0]) and torch.equal(out[:, 2], x[:, 2])
    assert all(torch.equal(s[:, 0], torch.zeros(B)) and torch.equal(s[:, 2], torch.full((B,), 5.0)) for s in seen)
    free = _run(name, opts, gaussian_video_denoiser(), x, base)
    assert not torch.allclose(out[:, 1], free[:, 1], atol=1e-3)


def test_callback_reports_per_frame_levels() -> None:
    rows = torch.stack([karras_sigmas(3, 0.002, 80.0 / (f + 1), 7.0) for f in range(T)])
    infos = []
    SAMPLERS["euler"](gaussian_video_denoiser(), _noise(), rows, callback=infos.append)
    assert len(infos) == 3
    for i, info in enumerate(infos):
        assert torch.equal(info["sigma"], rows[:, i].double())
        assert torch.equal(info["sigma_next"], rows[:, i + 1].double())


def test_bad_schedule_matrices_are_rejected() -> None:
    x = _noise()
    with pytest.raises(ValueError, match="T = 3 frames"):
        SAMPLERS["euler"](gaussian_video_denoiser(), x, torch.ones(3, 4))
    with pytest.raises(ValueError, match="N >= 1"):
        SAMPLERS["euler"](gaussian_video_denoiser(), x, torch.ones(T, 1))


def test_gaussian_video_oracle_is_the_posterior_mean() -> None:
    """The frame-coupled oracle used above is right: unbiased regression of x₀ on x (Monte Carlo)."""
    gen = torch.Generator().manual_seed(3)
    idx = torch.arange(T, dtype=torch.float64)
    chol = torch.linalg.cholesky(0.8 ** (idx[:, None] - idx[None]).abs())
    x0 = torch.einsum("ij,nj->ni", chol, torch.randn(20000, T, generator=gen, dtype=torch.float64))
    sigma = torch.tensor([[0.0, 0.5, 2.0, 1.0]], dtype=torch.float64)
    x = x0 + sigma * torch.randn(20000, T, generator=gen, dtype=torch.float64)
    d = gaussian_video_denoiser()(x.reshape(20000, T, 1, 1, 1), sigma.expand(20000, T)).reshape(20000, T)
    residual = x0 - d
    assert residual.mean(0).abs().max() < 0.03
    assert (residual[:, :, None] * x[:, None]).mean(0).abs().max() < 0.03  # orthogonal to the data
    assert math.isclose(float(d[:, 0].sub(x[:, 0]).abs().max()), 0.0, abs_tol=1e-9)
