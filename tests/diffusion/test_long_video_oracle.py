"""Long-video modes against a Gaussian video prior whose denoiser is known exactly.

Prior: every pixel is an independent AR(1) sequence over frames, ``x ~ N(0, Σ)``, ``Σ_ij = ρ^|i−j|``. With
per-frame noise ``x_σ = x + diag(σ_f)·ε`` the ideal denoiser is the posterior mean
``E[x | x_σ] = Σ_w (Σ_w + diag(σ²))⁻¹ x_σ`` over the window's frames ``w`` (σ_f = 0: the frame is
observed exactly). A mode that samples the 64-frame prior correctly from 8-frame windows must give frames
with unit variance everywhere, lag-1 correlation ρ at its seams, and a sample covariance close to Σ. The
pixels (P of them) are the independent samples, so one run suffices.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from vidiff.diffusion import karras_sigmas
from vidiff.pipelines.long_video import WindowModel, generate_latents, keyframe_indices

RHO = 0.9
FRAMES = 64
WINDOW = 8
PIXELS = 64 * 64  # independent samples of the 64-frame sequence
STEPS = 40


def prior(frames: torch.Tensor) -> torch.Tensor:
    """``Σ_ij = ρ^|f_i − f_j|`` for the absolute frame indices ``frames``, float64."""
    f = frames.double()
    return RHO ** (f[:, None] - f[None, :]).abs()


def gaussian_denoiser(x: torch.Tensor, sigma: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """``E[x₀ | x_σ] = Σ(Σ + diag(σ²))⁻¹ x_σ`` per video, on ``(B, T, C, h, w)`` with σ ``(B, T)``."""
    cov = prior(frames)
    out = []
    for xb, sb in zip(x.double(), sigma.double(), strict=True):
        gain = cov @ torch.linalg.inv(cov + torch.diag(sb**2))
        out.append((gain @ xb.reshape(xb.shape[0], -1)).reshape(xb.shape))
    return torch.stack(out).to(x.dtype)


def oracle_model(seed: int, window: int = WINDOW, pixels: int = 64) -> WindowModel:
    return WindowModel(
        denoiser=gaussian_denoiser, cond=lambda frames: torch.tensor(list(frames)),
        reverse_cond=lambda frames: torch.tensor(list(frames)),
        sigmas=karras_sigmas(STEPS, 0.002, 80.0, 7.0).double(), shape=(1, 1, pixels, pixels), window=window,
        sampler="heun", generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@functools.cache
def run(mode: str, **options) -> tuple[torch.Tensor, list[int]]:
    """The samples ``(P, 64)`` and the seams (first frame of each chunk but the first)."""
    chunks = list(generate_latents(oracle_model(0), FRAMES, mode, **options))
    video = torch.cat([c for _, c in chunks], 1)[0]  # (64, 1, h, w)
    assert video.shape[0] == FRAMES
    return video.flatten(1).T, [i for i, _ in chunks[1:]]


def expected_kl(d: int, n: int) -> float:
    """``E[KL(N(0, Σ̂) ‖ N(0, Σ))]`` for ``Σ̂ = XᵀX/n`` from n exact samples: ``Σ̂`` is Wishart, so
    ``E tr(Σ⁻¹Σ̂) = d`` and ``E ln det(Σ⁻¹Σ̂) = Σ_i ψ((n−i+1)/2) + d ln(2/n)`` (Bartlett decomposition)."""
    i = torch.arange(1, d + 1, dtype=torch.float64)
    e_logdet = torch.special.digamma((n - i + 1) / 2).sum().item() + d * math.log(2 / n)
    return -0.5 * e_logdet


def kl_to_prior(samples: torch.Tensor) -> float:
    n, d = samples.shape
    cov_hat = samples.T @ samples / n
    m = torch.linalg.solve(prior(torch.arange(d)), cov_hat)
    return 0.5 * (torch.trace(m).item() - d - torch.logdet(m).item())


MODES = [("chain", {"overlap": 2}), ("chain", {"overlap": 4}), ("keyframes", {}),
         ("fifo", {"partitions": 1})]


@pytest.mark.parametrize(("mode", "options"), MODES, ids=lambda v: v if isinstance(v, str) else "-".join(
    f"{k}{int(x)}" for k, x in v.items()))
def test_modes_sample_the_prior(mode: str, options: dict) -> None:
    x, seams = run(mode, **options)
    x = x.clone()
    n = x.shape[0]
    # per-frame variance: var(x_f) estimated from n samples has std √(2/n) (= 0.022); 5 std, no drift
    var = x.var(0, correction=0)
    assert (var - 1).abs().max() < 5 * math.sqrt(2 / n), var
    # lag-1 correlation at every seam: the estimate's std is (1 − ρ²)/√n (= 0.003); 5 std, plus the
    # sampler's discretisation (STEPS Euler steps on the exact ODE), measured below 0.005 on this prior
    corr = (x[:, :-1] * x[:, 1:]).mean(0) / (var[:-1] * var[1:]).sqrt()
    for s in seams or range(1, FRAMES):
        assert abs(corr[s - 1].item() - RHO) < 5 * (1 - RHO**2) / math.sqrt(n) + 0.005, (s, corr[s - 1])
    # the whole covariance: 2n·KL is asymptotically χ² with d(d+1)/2 degrees of freedom for exact samples,
    # so KL ≤ E[KL] + 6·√(d(d+1))/(2n); a sampler error shows as a KL excess (bias of Σ̂ entries ~ e gives
    # ~ d·e²): 0.02 admits entry errors of ~0.02 and nothing like a broken seam (ρ² vs ρ: KL > 0.1)
    d = x.shape[1]
    bound = expected_kl(d, n) + 6 * math.sqrt(d * (d + 1)) / (2 * n) + 0.02
    assert kl_to_prior(x) < bound, (kl_to_prior(x), bound)


def test_a_broken_seam_is_caught() -> None:
    """The checks above can fail: chaining that restarts each window (no overlap held) gives independent
    segments, so the seam correlation is 0, not ρ, and the KL explodes."""
    x, _ = run("chain", overlap=4)
    broken = x.clone()
    broken[:, 32:] = broken[torch.randperm(x.shape[0]), 32:]  # frames 32… from other pixels
    var = broken.var(0, correction=0)
    corr = (broken[:, 31] * broken[:, 32]).mean() / (var[31] * var[32]).sqrt()
    assert abs(corr.item() - RHO) > 0.5
    assert kl_to_prior(broken) > 1.0


def test_keyframes_cover_the_video_and_hold_their_ends() -> None:
    assert keyframe_indices(0, 63, 8) == [0, 9, 18, 27, 36, 45, 54, 63]
    model = oracle_model(1, pixels=16)
    end = torch.full((1, 1, 16, 16), 2.0, dtype=torch.float64)
    model.known[FRAMES - 1] = end
    chunks = list(generate_latents(model, FRAMES, "keyframes"))
    video = torch.cat([c for _, c in chunks], 1)[0]
    assert [i for i, _ in chunks] == [0, 1, 10, 19, 28, 37, 46, 55]
    assert torch.equal(video[-1], end[0])
    # conditioned on x_63 = 2, E[x_62] = 2ρ and the frames ramp towards it
    assert abs(video[-2].mean().item() - 2 * RHO) < 0.1  # sd of the mean: √(1−ρ²)/16 = 0.03
