"""Samplers for the probability-flow ODE / reverse SDE in EDM form (Karras et al. 2022, eq. 4 with σ(t) = t).

Every sampler has the signature ``(denoiser, x, sigmas, *, cond=None, callback=None, generator=None,
**options) -> x`` and walks ``sigmas[0] > sigmas[1] > … ≥ sigmas[-1]`` (usually ending in 0). ``x`` is the
initial noise already scaled (``σ₀``, or ``√(1+σ₀²)`` as SVD's references do). The denoiser is called as
``denoiser(x, sigma_vec, cond)`` with ``sigma_vec (B,)`` in the state dtype. The state stays float32 or
float64 (lower-precision inputs are upcast to float32, and float32 is returned).

``callback`` receives ``{"i", "x", "sigma", "sigma_next", "denoised"}`` after each step: ``x`` is the new
state (at ``sigma_next``) and ``sigma`` the level at which ``denoised`` was evaluated. If it returns a
mapping with an ``"x"`` entry, sampling continues from that state (diffusers' ``callback_on_step_end``
replacing ``latents``).

Random draws (the only randomness; a sampler given the same generator state repeats bit for bit): at most
one per step, ``vidiff.utils.randn(x.shape, generator)`` in the state dtype (one generator: drawn whole
on its device; a list: row ``b`` of the batch from ``generator[b]``). Churn noise (euler, heun with
``s_churn`` > 0) is drawn at the start of a step, before the denoiser; ancestral noise (euler_ancestral,
ddim with η > 0) after it. euler, heun without churn, dpmpp_2m and ddim with η = 0 draw nothing.

The ODE is ``dx/dσ = (x − D(x, σ))/σ`` (EDM eq. 3 with s = 1, σ(t) = t).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from vidiff.utils import Generators, append_dims, randn

Callback = Callable[[dict[str, Any]], None]


def _prepare(x: Tensor, sigmas: Tensor) -> tuple[Tensor, list[float]]:
    """State in float32/float64; sigmas as python floats (branching on them needs no device sync)."""
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(f"sigmas must be 1-D with at least 2 entries, got shape {tuple(sigmas.shape)}")
    return x, [float(s) for s in sigmas.detach().cpu().to(torch.float64)]


def _denoise(denoiser: Callable[..., Tensor], x: Tensor, sigma: float, cond: Any) -> Tensor:
    sigma_vec = torch.full((x.shape[0],), sigma, device=x.device, dtype=x.dtype)
    return denoiser(x, sigma_vec, cond).to(x.dtype)


def _randn(x: Tensor, generator: Generators) -> Tensor:
    return randn(x.shape, generator, device=x.device, dtype=x.dtype)


def to_d(x: Tensor, sigma: float | Tensor, denoised: Tensor) -> Tensor:
    """ODE derivative ``dx/dσ = (x − D(x, σ))/σ`` (Karras et al. 2022, eq. 3 / Algorithm 1 line 4)."""
    if isinstance(sigma, Tensor):
        sigma = append_dims(sigma, x.ndim)
    return (x - denoised) / sigma


def _report(callback: Callback | None, i: int, x: Tensor, sigma: float, sigma_next: float,
            denoised: Tensor) -> Tensor:
    """Call ``callback`` after step ``i``; the state to continue from (the callback's ``"x"`` if it gave one)."""
    if callback is None:
        return x
    out = callback({"i": i, "x": x, "sigma": sigma, "sigma_next": sigma_next, "denoised": denoised})
    if isinstance(out, Mapping) and out.get("x") is not None:
        new = out["x"]
        if new.shape != x.shape:
            raise ValueError(f"callback returned a state of shape {tuple(new.shape)}, expected {tuple(x.shape)}")
        return new.to(x.device, x.dtype)
    return x


def _churn(x: Tensor, sigma: float, n_steps: int, generator: Generators, s_churn: float,
           s_tmin: float, s_tmax: float, s_noise: float) -> tuple[Tensor, float]:
    """Raise the noise level to σ̂ = (1+γ)σ by adding fresh noise (EDM Algorithm 2, lines 4–6)."""
    gamma = min(s_churn / n_steps, math.sqrt(2) - 1) if s_tmin <= sigma <= s_tmax else 0.0
    if gamma <= 0:
        return x, sigma
    sigma_hat = sigma * (1 + gamma)
    return x + math.sqrt(sigma_hat**2 - sigma**2) * s_noise * _randn(x, generator), sigma_hat


@torch.no_grad()
def sample_euler(denoiser: Callable[..., Tensor], x: Tensor, sigmas: Tensor, *, cond: Any = None,
                 callback: Callback | None = None, generator: Generators = None,
                 s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
                 s_noise: float = 1.0) -> Tensor:
    """Euler on the PF-ODE (EDM Algorithm 1 without its correction); churn as in Alg. 2 if s_churn > 0."""
    x, sig = _prepare(x, sigmas)
    n = len(sig) - 1
    for i in range(n):
        x, sigma_hat = _churn(x, sig[i], n, generator, s_churn, s_tmin, s_tmax, s_noise)
        denoised = _denoise(denoiser, x, sigma_hat, cond)
        x = x + (sig[i + 1] - sigma_hat) * to_d(x, sigma_hat, denoised)  # Euler step, EDM Alg. 2 line 8
        x = _report(callback, i, x, sigma_hat, sig[i + 1], denoised)
    return x


@torch.no_grad()
def sample_heun(denoiser: Callable[..., Tensor], x: Tensor, sigmas: Tensor, *, cond: Any = None,
                callback: Callback | None = None, generator: Generators = None,
                s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
                s_noise: float = 1.0) -> Tensor:
    """Heun's 2nd-order method with churn (Karras et al. 2022, Algorithm 2); a plain Euler step to σ = 0."""
    x, sig = _prepare(x, sigmas)
    n = len(sig) - 1
    for i in range(n):
        x_hat, sigma_hat = _churn(x, sig[i], n, generator, s_churn, s_tmin, s_tmax, s_noise)
        denoised = _denoise(denoiser, x_hat, sigma_hat, cond)
        d = to_d(x_hat, sigma_hat, denoised)  # Alg. 2 line 7
        x = x_hat + (sig[i + 1] - sigma_hat) * d  # Alg. 2 line 8
        if sig[i + 1] != 0:
            denoised_next = _denoise(denoiser, x, sig[i + 1], cond)
            d_prime = to_d(x, sig[i + 1], denoised_next)  # Alg. 2 line 10
            x = x_hat + (sig[i + 1] - sigma_hat) * 0.5 * (d + d_prime)  # Alg. 2 line 11
        x = _report(callback, i, x, sigma_hat, sig[i + 1], denoised)
    return x


def ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """Split the step σ → σ_next into a deterministic part to σ_down and fresh noise of std σ_up.

    ``σ_up = min(σ_next, η·σ_next·√(σ² − σ_next²)/σ)``, ``σ_down = √(σ_next² − σ_up²)``: DDIM's σ_t
    (Song et al. 2021, eq. 16) written for the VE state ``x/√ᾱ`` (η = 1 is DDPM's ancestral step).
    """
    if sigma_next == 0 or eta == 0:
        return sigma_next, 0.0
    sigma_up = min(sigma_next, eta * sigma_next * math.sqrt(sigma**2 - sigma_next**2) / sigma)
    return math.sqrt(sigma_next**2 - sigma_up**2), sigma_up


@torch.no_grad()
def sample_euler_ancestral(denoiser: Callable[..., Tensor], x: Tensor, sigmas: Tensor, *, cond: Any = None,
                           callback: Callback | None = None, generator: Generators = None,
                           eta: float = 1.0, s_noise: float = 1.0) -> Tensor:
    """Ancestral Euler: an Euler step to σ_down, then noise of std σ_up (see :func:`ancestral_step`)."""
    x, sig = _prepare(x, sigmas)
    for i in range(len(sig) - 1):
        denoised = _denoise(denoiser, x, sig[i], cond)
        sigma_down, sigma_up = ancestral_step(sig[i], sig[i + 1], eta)
        x = x + (sigma_down - sig[i]) * to_d(x, sig[i], denoised)
        if sigma_up > 0:
            x = x + sigma_up * s_noise * _randn(x, generator)
        x = _report(callback, i, x, sig[i], sig[i + 1], denoised)
    return x


@torch.no_grad()
def sample_dpmpp_2m(denoiser: Callable[..., Tensor], x: Tensor, sigmas: Tensor, *, cond: Any = None,
                    callback: Callback | None = None, generator: Generators = None) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) in VE form, λ = −ln σ.

    ``x_next = (σ_next/σ)·x − (e^{−h} − 1)·D̂`` with ``h = λ_next − λ`` and
    ``D̂ = (1 + 1/(2r))·D_i − 1/(2r)·D_{i−1}``, ``r = h_{i−1}/h``. The first step (no history) and a final
    step to σ = 0 are first order (``D̂ = D_i``).
    """
    x, sig = _prepare(x, sigmas)
    denoised_prev: Tensor | None = None
    for i in range(len(sig) - 1):
        sigma, sigma_next = sig[i], sig[i + 1]
        denoised = _denoise(denoiser, x, sigma, cond)
        if sigma_next == 0:
            x = denoised  # the limit of the update as h → ∞
        else:
            h = math.log(sigma / sigma_next)  # λ_next − λ
            if denoised_prev is None:
                d_hat = denoised
            else:
                r = math.log(sig[i - 1] / sigma) / h  # h_{i−1} / h_i
                d_hat = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * denoised_prev  # Alg. 2, D_i
            x = (sigma_next / sigma) * x - math.expm1(-h) * d_hat  # Lu et al. 2022, Alg. 2 update (VE: α = 1)
        denoised_prev = denoised
        x = _report(callback, i, x, sigma, sigma_next, denoised)
    return x


@torch.no_grad()
def sample_ddim(denoiser: Callable[..., Tensor], x: Tensor, sigmas: Tensor, *, cond: Any = None,
                callback: Callback | None = None, generator: Generators = None,
                eta: float = 0.0) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12 with σ_t(η) of eq. 16) on any σ grid, via ᾱ = 1/(1+σ²).

    The VE state ``x`` is mapped to the VP state ``√ᾱ·x``, stepped with eq. 12, and mapped back. With η = 0
    this is exactly Euler on the EDM ODE; with η = 1 it is DDPM's ancestral sampler (same as
    :func:`sample_euler_ancestral` at η = 1).
    """
    x, sig = _prepare(x, sigmas)
    for i in range(len(sig) - 1):
        sigma, sigma_next = sig[i], sig[i + 1]
        denoised = _denoise(denoiser, x, sigma, cond)
        if sigma_next == 0:
            x = denoised
        else:
            a, a_next = 1 / (1 + sigma**2), 1 / (1 + sigma_next**2)  # ᾱ_t, ᾱ_{t−1}
            eps = (x - denoised) / sigma  # ε̂ = (x_t − √ᾱ x̂₀)/√(1−ᾱ), written in the VE state
            sigma_t = eta * math.sqrt((1 - a_next) / (1 - a) * (1 - a / a_next))  # DDIM eq. 16
            x_vp = math.sqrt(a_next) * denoised + math.sqrt(max(1 - a_next - sigma_t**2, 0.0)) * eps  # eq. 12
            if sigma_t > 0:
                x_vp = x_vp + sigma_t * _randn(x, generator)
            x = x_vp / math.sqrt(a_next)
        x = _report(callback, i, x, sigma, sigma_next, denoised)
    return x


Sampler = Callable[..., Tensor]

SAMPLERS: dict[str, Sampler] = {
    "euler": sample_euler,
    "heun": sample_heun,
    "euler_ancestral": sample_euler_ancestral,
    "dpmpp_2m": sample_dpmpp_2m,
    "ddim": sample_ddim,
}


def sampler_by_name(name: str) -> Sampler:
    """The sampler registered as ``name`` in :data:`SAMPLERS` (a ValueError names it and the valid ones)."""
    if not isinstance(name, str) or name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid: {', '.join(sorted(SAMPLERS))}")
    return SAMPLERS[name]
