"""Samplers for the probability-flow ODE / reverse SDE in EDM form (Karras et al. 2022, eq. 4 with σ(t) = t).

Every sampler has the signature ``(denoiser, x, sigmas, *, cond=None, callback=None, generator=None,
**options) -> x`` and walks ``sigmas[0] > sigmas[1] > … ≥ sigmas[-1]`` (usually ending in 0). ``x`` is the
initial noise already scaled (``σ₀``, or ``√(1+σ₀²)`` as SVD's references do). The denoiser is called as
``denoiser(x, sigma_vec, cond)`` with ``sigma_vec (B,)`` in the state dtype. The state stays float32 or
float64 (lower-precision inputs are upcast to float32, and float32 is returned).

Per-frame schedules: ``sigmas`` may be a matrix ``S (T, N+1)`` for ``x (B, T, ...)``, row ``f`` the levels
frame ``f`` walks (chaining, FIFO, keyframes: ``vidiff.pipelines.long_video`` builds them). The
denoiser then gets ``sigma_vec (B, T)`` (column ``i``) and every formula is applied per frame. A frame whose
level does not change in a step (``S[f, i] == S[f, i+1]``, e.g. a frame held clean at σ = 0) is left exactly
as it is, and is neither churned nor noised. A step where all frames agree uses the 1-D arithmetic, so a
matrix with equal rows reproduces the 1-D schedule bit for bit (same random draws included). Rows must not
rise from σ = 0 (an ODE step cannot leave a clean frame).

``callback`` receives ``{"i", "x", "sigma", "sigma_next", "denoised"}`` after each step: ``x`` is the new
state (at ``sigma_next``) and ``sigma`` the level at which ``denoised`` was evaluated (python floats; with a
per-frame schedule, float64 tensors ``(T,)``). If it returns a mapping with an ``"x"`` entry, sampling
continues from that state (diffusers' ``callback_on_step_end`` replacing ``latents``).

Random draws (the only randomness; a sampler given the same generator state repeats bit for bit): at most
one per step, ``vidiff.utils.randn(x.shape, generator)`` in the state dtype (one generator: drawn whole
on its device; a list: row ``b`` of the batch from ``generator[b]``). Churn noise (euler, heun with
``s_churn`` > 0) is drawn at the start of a step, before the denoiser; ancestral noise (euler_ancestral,
ddim with η > 0) after it. euler, heun without churn, dpmpp_2m and ddim with η = 0 draw nothing.

The ODE is ``dx/dσ = (x − D(x, σ))/σ`` (EDM eq. 3 with s = 1, σ(t) = t).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from vidiff.utils import Generators, append_dims, randn

Callback = Callable[[dict[str, Any]], None]
Column = tuple[float, ...]  # the levels of one step: (σ,) for a 1-D schedule, one per frame for a matrix
Value = float | Tensor  # a python float where every frame agrees, else a per-frame (1, T, 1, …) tensor


class _Levels:
    """The schedule as python floats, one column per step (branching on floats needs no device sync)."""

    def __init__(self, x: Tensor, sigmas: Tensor) -> None:
        if sigmas.ndim not in (1, 2) or sigmas.shape[-1] < 2:
            raise ValueError(f"sigmas must be (N+1,) or (T, N+1) with N >= 1, got shape {tuple(sigmas.shape)}")
        self.per_frame = sigmas.ndim == 2
        if self.per_frame and (x.ndim < 3 or sigmas.shape[0] != x.shape[1]):
            raise ValueError(f"a per-frame schedule {tuple(sigmas.shape)} needs x (B, T, ...) with T = "
                             f"{sigmas.shape[0]} frames, got x {tuple(x.shape)}")
        table = sigmas.detach().cpu().to(torch.float64).reshape(-1, sigmas.shape[-1])  # (1 or T, N+1)
        self.columns: list[Column] = [tuple(col) for col in table.T.tolist()]
        self.x = x

    def __len__(self) -> int:
        """The number of steps."""
        return len(self.columns) - 1

    def __getitem__(self, i: int) -> Column:
        return self.columns[i]

    def _frames(self, values: Sequence[float] | Sequence[bool], dtype: torch.dtype) -> Tensor:
        t = torch.tensor(values, dtype=dtype).to(self.x.device)
        return t.reshape(1, -1, *([1] * (self.x.ndim - 2)))

    def value(self, values: Sequence[float]) -> Value:
        """One number per frame: a python float when all agree (the 1-D arithmetic), else ``(1, T, 1, …)``."""
        if all(v == values[0] for v in values):
            return values[0]
        return self._frames(values, torch.float64).to(self.x.dtype)

    def map(self, fn: Callable[..., float], *columns: Column) -> Value:
        """``fn`` applied frame by frame to the columns, as :meth:`value`."""
        return self.value([fn(*args) for args in zip(*columns, strict=True)])

    def select(self, mask: Sequence[bool], a: Tensor, b: Tensor) -> Tensor:
        """``a`` on the frames where ``mask`` holds, else ``b`` (no copy when all frames agree)."""
        if all(mask):
            return a
        if not any(mask):
            return b
        return torch.where(self._frames(mask, torch.bool), a, b)

    def hold(self, x_new: Tensor, x: Tensor, sigma: Column, sigma_next: Column) -> Tensor:
        """The new state, except on frames whose level does not change (per-frame schedules only)."""
        if not self.per_frame:
            return x_new
        return self.select([s != n for s, n in zip(sigma, sigma_next, strict=True)], x_new, x)

    def sigma_vec(self, sigma: Column, x: Tensor) -> Tensor:
        """The denoiser's σ: ``(B,)``, or ``(B, T)`` for a per-frame schedule, in the state dtype."""
        if not self.per_frame:
            return torch.full((x.shape[0],), sigma[0], device=x.device, dtype=x.dtype)
        return torch.tensor(sigma, dtype=torch.float64).to(x.device, x.dtype).expand(x.shape[0], -1)

    def report(self, sigma: Column) -> float | Tensor:
        return torch.tensor(sigma, dtype=torch.float64) if self.per_frame else sigma[0]


def _prepare(x: Tensor, sigmas: Tensor) -> tuple[Tensor, _Levels]:
    """State in float32/float64, and the schedule's columns."""
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    return x, _Levels(x, sigmas)


def _denoise(denoiser: Callable[..., Tensor], x: Tensor, levels: _Levels, sigma: Column, cond: Any) -> Tensor:
    return denoiser(x, levels.sigma_vec(sigma, x), cond).to(x.dtype)


def _randn(x: Tensor, generator: Generators) -> Tensor:
    return randn(x.shape, generator, device=x.device, dtype=x.dtype)


def to_d(x: Tensor, sigma: float | Tensor, denoised: Tensor) -> Tensor:
    """ODE derivative ``dx/dσ = (x − D(x, σ))/σ`` (Karras et al. 2022, eq. 3 / Algorithm 1 line 4).

    ``sigma``: a float, ``(B,)`` (per sample) or already broadcastable against ``x`` (per frame)."""
    if isinstance(sigma, Tensor) and sigma.ndim == 1:
        sigma = append_dims(sigma, x.ndim)
    return (x - denoised) / sigma


def _report(callback: Callback | None, i: int, x: Tensor, levels: _Levels, sigma: Column, sigma_next: Column,
            denoised: Tensor) -> Tensor:
    """Call ``callback`` after step ``i``; the state to continue from (the callback's ``"x"`` if it gave one)."""
    if callback is None:
        return x
    out = callback({"i": i, "x": x, "sigma": levels.report(sigma), "sigma_next": levels.report(sigma_next),
                    "denoised": denoised})
    if isinstance(out, Mapping) and out.get("x") is not None:
        new = out["x"]
        if new.shape != x.shape:
            raise ValueError(f"callback returned a state of shape {tuple(new.shape)}, expected {tuple(x.shape)}")
        return new.to(x.device, x.dtype)
    return x


def _churn(x: Tensor, levels: _Levels, i: int, generator: Generators, s_churn: float,
           s_tmin: float, s_tmax: float, s_noise: float) -> tuple[Tensor, Column]:
    """Raise the noise level to σ̂ = (1+γ)σ by adding fresh noise (EDM Algorithm 2, lines 4–6)."""
    sigma, sigma_next = levels[i], levels[i + 1]
    gamma = min(s_churn / len(levels), math.sqrt(2) - 1)
    gammas = [gamma if s_tmin <= s <= s_tmax and not (levels.per_frame and s == n) else 0.0
              for s, n in zip(sigma, sigma_next, strict=True)]
    if all(g <= 0 for g in gammas):
        return x, sigma
    sigma_hat = tuple(s * (1 + g) if g > 0 else s for s, g in zip(sigma, gammas, strict=True))
    amount = levels.map(lambda s, sh: math.sqrt(sh**2 - s**2) * s_noise, sigma, sigma_hat)
    return x + amount * _randn(x, generator), sigma_hat


@torch.no_grad()
def sample_euler(denoiser: Callable[..., Tensor], x: Tensor, sigmas: Tensor, *, cond: Any = None,
                 callback: Callback | None = None, generator: Generators = None,
                 s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
                 s_noise: float = 1.0) -> Tensor:
    """Euler on the PF-ODE (EDM Algorithm 1 without its correction); churn as in Alg. 2 if s_churn > 0."""
    x, lv = _prepare(x, sigmas)
    for i in range(len(lv)):
        x_hat, sigma_hat = _churn(x, lv, i, generator, s_churn, s_tmin, s_tmax, s_noise)
        denoised = _denoise(denoiser, x_hat, lv, sigma_hat, cond)
        step = lv.map(lambda sh, n: n - sh, sigma_hat, lv[i + 1])
        x_new = x_hat + step * to_d(x_hat, lv.value(sigma_hat), denoised)  # Euler step, EDM Alg. 2 line 8
        x = _report(callback, i, lv.hold(x_new, x, lv[i], lv[i + 1]), lv, sigma_hat, lv[i + 1], denoised)
    return x


@torch.no_grad()
def sample_heun(denoiser: Callable[..., Tensor], x: Tensor, sigmas: Tensor, *, cond: Any = None,
                callback: Callback | None = None, generator: Generators = None,
                s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
                s_noise: float = 1.0) -> Tensor:
    """Heun's 2nd-order method with churn (Karras et al. 2022, Algorithm 2); a plain Euler step to σ = 0."""
    x, lv = _prepare(x, sigmas)
    for i in range(len(lv)):
        sigma_next = lv[i + 1]
        x_hat, sigma_hat = _churn(x, lv, i, generator, s_churn, s_tmin, s_tmax, s_noise)
        denoised = _denoise(denoiser, x_hat, lv, sigma_hat, cond)
        d = to_d(x_hat, lv.value(sigma_hat), denoised)  # Alg. 2 line 7
        x_new = x_hat + lv.map(lambda sh, n: n - sh, sigma_hat, sigma_next) * d  # Alg. 2 line 8
        x_new = lv.hold(x_new, x, lv[i], sigma_next)  # held frames stay as they are for the second call
        second = [n != 0 for n in sigma_next]
        if any(second):
            denoised_next = _denoise(denoiser, x_new, lv, sigma_next, cond)
            d_prime = to_d(x_new, lv.value(sigma_next), denoised_next)  # Alg. 2 line 10
            half = lv.map(lambda sh, n: (n - sh) * 0.5, sigma_hat, sigma_next)
            x_new = lv.select(second, x_hat + half * (d + d_prime), x_new)  # Alg. 2 line 11
        x = _report(callback, i, lv.hold(x_new, x, lv[i], sigma_next), lv, sigma_hat, sigma_next, denoised)
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
    x, lv = _prepare(x, sigmas)
    for i in range(len(lv)):
        sigma, sigma_next = lv[i], lv[i + 1]
        denoised = _denoise(denoiser, x, lv, sigma, cond)
        down, up = zip(*(ancestral_step(s, n, eta) for s, n in zip(sigma, sigma_next, strict=True)), strict=True)
        x_new = x + lv.map(lambda s, sd: sd - s, sigma, down) * to_d(x, lv.value(sigma), denoised)
        if any(u > 0 for u in up):
            x_new = x_new + lv.map(lambda u: u * s_noise, up) * _randn(x, generator)
        x = _report(callback, i, lv.hold(x_new, x, sigma, sigma_next), lv, sigma, sigma_next, denoised)
    return x


def _dpmpp_2m_coefficients(before: float | None, sigma: float, sigma_next: float) -> tuple[float, ...]:
    """``(a, b, c_i, c_prev)`` of ``x_next = a·x − b·(c_i·D_i − c_prev·D_{i−1})`` for one frame (σ_next > 0)."""
    h = math.log(sigma / sigma_next)  # λ_next − λ
    if before is None or not before > sigma:  # no history for this frame: first order
        return sigma_next / sigma, math.expm1(-h), 1.0, 0.0
    r = math.log(before / sigma) / h  # h_{i−1} / h_i
    return sigma_next / sigma, math.expm1(-h), 1 + 1 / (2 * r), 1 / (2 * r)


@torch.no_grad()
def sample_dpmpp_2m(denoiser: Callable[..., Tensor], x: Tensor, sigmas: Tensor, *, cond: Any = None,
                    callback: Callback | None = None, generator: Generators = None) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) in VE form, λ = −ln σ.

    ``x_next = (σ_next/σ)·x − (e^{−h} − 1)·D̂`` with ``h = λ_next − λ`` and
    ``D̂ = (1 + 1/(2r))·D_i − 1/(2r)·D_{i−1}``, ``r = h_{i−1}/h``. The first step (no history; per frame: a
    frame that did not move in the previous step) and a final step to σ = 0 are first order (``D̂ = D_i``).
    """
    x, lv = _prepare(x, sigmas)
    denoised_prev: Tensor | None = None
    for i in range(len(lv)):
        sigma, sigma_next = lv[i], lv[i + 1]
        denoised = _denoise(denoiser, x, lv, sigma, cond)
        moving = [n != 0 and n != s for s, n in zip(sigma, sigma_next, strict=True)]
        x_new = denoised  # the limit of the update as h → ∞ (σ_next = 0)
        if any(moving):
            before = lv[i - 1] if denoised_prev is not None else (None,) * len(sigma)
            coefs = [_dpmpp_2m_coefficients(p, s, n) if m else (0.0, 0.0, 1.0, 0.0)
                     for p, s, n, m in zip(before, sigma, sigma_next, moving, strict=True)]
            a, b, c_i, c_prev = (lv.value(list(c)) for c in zip(*coefs, strict=True))
            first_order = isinstance(c_prev, float) and c_prev == 0.0
            d_hat = denoised if first_order else c_i * denoised - c_prev * denoised_prev  # Alg. 2, D_i
            x_new = lv.select(moving, a * x - b * d_hat, x_new)  # Lu et al. 2022, Alg. 2 update (VE: α = 1)
        denoised_prev = denoised
        x = _report(callback, i, lv.hold(x_new, x, sigma, sigma_next), lv, sigma, sigma_next, denoised)
    return x


def _ddim_coefficients(sigma: float, sigma_next: float, eta: float) -> tuple[float, float, float]:
    """``(√ᾱ_{t−1}, √(1 − ᾱ_{t−1} − σ_t²), σ_t)`` of DDIM eq. 12 and 16 for one frame (σ_next > 0)."""
    a, a_next = 1 / (1 + sigma**2), 1 / (1 + sigma_next**2)  # ᾱ_t, ᾱ_{t−1}
    sigma_t = eta * math.sqrt((1 - a_next) / (1 - a) * (1 - a / a_next))  # DDIM eq. 16
    return math.sqrt(a_next), math.sqrt(max(1 - a_next - sigma_t**2, 0.0)), sigma_t


@torch.no_grad()
def sample_ddim(denoiser: Callable[..., Tensor], x: Tensor, sigmas: Tensor, *, cond: Any = None,
                callback: Callback | None = None, generator: Generators = None,
                eta: float = 0.0) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12 with σ_t(η) of eq. 16) on any σ grid, via ᾱ = 1/(1+σ²).

    The VE state ``x`` is mapped to the VP state ``√ᾱ·x``, stepped with eq. 12, and mapped back. With η = 0
    this is exactly Euler on the EDM ODE; with η = 1 it is DDPM's ancestral sampler (same as
    :func:`sample_euler_ancestral` at η = 1).
    """
    x, lv = _prepare(x, sigmas)
    for i in range(len(lv)):
        sigma, sigma_next = lv[i], lv[i + 1]
        denoised = _denoise(denoiser, x, lv, sigma, cond)
        moving = [n != 0 and n != s for s, n in zip(sigma, sigma_next, strict=True)]
        x_new = denoised
        if any(moving):
            coefs = [_ddim_coefficients(s, n, eta) if m else (1.0, 0.0, 0.0)
                     for s, n, m in zip(sigma, sigma_next, moving, strict=True)]
            root_a_next, root_rest, sigma_t = (lv.value(list(c)) for c in zip(*coefs, strict=True))
            eps = (x - denoised) / lv.map(lambda s, m: s if m else 1.0, sigma, moving)  # ε̂ in the VE state
            x_vp = root_a_next * denoised + root_rest * eps  # DDIM eq. 12
            if any(c[2] > 0 for c in coefs):
                x_vp = x_vp + sigma_t * _randn(x, generator)
            x_new = lv.select(moving, x_vp / root_a_next, x_new)
        x = _report(callback, i, lv.hold(x_new, x, sigma, sigma_next), lv, sigma, sigma_next, denoised)
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
