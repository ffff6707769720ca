"""Noise levels: continuous σ schedules (EDM), discrete DDPM β schedules, their conversions, and q(x_t | x₀).

Two parametrisations of the same forward process are used throughout vidiff:

* VP / DDPM (Ho et al. 2020, eq. 4): ``x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε``;
* VE / EDM (Karras et al. 2022, eq. 2 with s(t)=1): ``x_σ = x₀ + σ·n``.

They describe the same distributions up to a scale: ``x_t = √ᾱ·x_σ`` with ``σ = √((1−ᾱ)/ᾱ)``.
Samplers and denoisers work in the VE form; discrete models are reached through :class:`DiscreteSchedule`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from vidiff.utils import append_dims, build_named

# --------------------------------------------------------------------------------------------------
# Continuous schedules


def _numpy_like_ramp(n: int, device: torch.device | str | None = None) -> Tensor:
    """``linspace(0, 1, n)`` in float64 computed as numpy does (``i·(1/(n−1))``, last element exactly 1)."""
    if n == 1:
        return torch.zeros(1, dtype=torch.float64, device=device)
    ramp = torch.arange(n, dtype=torch.float64, device=device) * (1.0 / (n - 1))
    ramp[-1] = 1.0
    return ramp


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0, *, append_zero: bool = True,
                  dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
    """``n`` noise levels from σ_max down to σ_min (Karras et al. 2022, eq. 5), plus a final 0 if asked.

    ``σ_i = (σ_max^(1/ρ) + i/(n−1)·(σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ``, computed in float64 and then cast to
    ``dtype``; with float32 this equals diffusers' ``EulerDiscreteScheduler(use_karras_sigmas=True)``.
    """
    if n < 1:
        raise ValueError(f"karras_sigmas needs n >= 1, got {n}")
    ramp = _numpy_like_ramp(n, device)
    min_inv_rho = sigma_min ** (1.0 / rho)
    max_inv_rho = sigma_max ** (1.0 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho  # EDM eq. 5
    if append_zero:
        sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    return sigmas.to(dtype)


def initial_noise_scale(sigmas: Tensor) -> Tensor:
    """``√(1+σ₀²)``: the std by which sgm and diffusers scale the initial noise (0-d, sigmas' dtype).

    The exact EDM prior is ``N(0, σ₀²)``; SVD's references instead draw ``N(0, 1+σ₀²)`` (the VE state of a
    VP-normalised sample: sgm's sampler base class, diffusers' ``init_noise_sigma`` for "leading" spacing).
    At σ₀ = 700 the two differ by 1e-6 relative.
    """
    return (sigmas[0] ** 2 + 1) ** 0.5


# --------------------------------------------------------------------------------------------------
# Discrete (DDPM) schedules


def linear_betas(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """β_t linear from 1e-4 to 0.02 over T=1000 steps (Ho et al. 2020, Sec. 4), float64."""
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)


def scaled_linear_betas(T: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> Tensor:
    """Stable Diffusion's β_t: linear in √β, then squared (SD / SVD ``scaled_linear``), float64."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2


def cosine_betas(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """β_t = 1 − ᾱ(t+1)/ᾱ(t), ᾱ(t) = cos²((t/T + s)/(1+s)·π/2), β ≤ 0.999 (Nichol & Dhariwal 2021, eq. 17)."""
    t = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=max_beta)


BETA_SCHEDULES: dict[str, Callable[..., Tensor]] = {
    "linear": linear_betas,
    "scaled_linear": scaled_linear_betas,
    "cosine": cosine_betas,
}
# diffusers' ``beta_schedule`` names where they differ from vidiff's
DIFFUSERS_BETA_NAMES: dict[str, str] = {"cosine": "squaredcos_cap_v2"}


def _beta_name(name: str) -> str:
    """vidiff's name of a β schedule given by either vocabulary (``squaredcos_cap_v2`` -> ``cosine``)."""
    return {v: k for k, v in DIFFUSERS_BETA_NAMES.items()}.get(name, name)


def make_betas(name: str, T: int = 1000, beta_start: float | None = None, beta_end: float | None = None) -> Tensor:
    """β_t of the schedule ``name`` (:data:`BETA_SCHEDULES`, or its diffusers name) over ``T`` steps, float64.

    ``beta_start`` / ``beta_end`` None keep the schedule's own end points (``linear``: 1e-4 → 0.02, Ho et al.
    2020; ``scaled_linear``: 0.00085 → 0.012, SD); the cosine schedule has none.
    """
    ends = {k: v for k, v in (("beta_start", beta_start), ("beta_end", beta_end)) if v is not None}
    return build_named(BETA_SCHEDULES, _beta_name(name), "beta schedule", T=T, **ends)


def beta_schedule_config(name: str, T: int = 1000, beta_start: float | None = None,
                         beta_end: float | None = None) -> dict[str, Any]:
    """diffusers' scheduler keys for a β schedule (``beta_schedule`` in diffusers' vocabulary,
    ``num_train_timesteps``, and the end points, resolved to the schedule's own when None)."""
    name = _beta_name(name)
    if name not in BETA_SCHEDULES:
        raise ValueError(f"unknown beta schedule {name!r}; valid: {', '.join(sorted(BETA_SCHEDULES))}")
    params = inspect.signature(BETA_SCHEDULES[name]).parameters
    config: dict[str, Any] = {"beta_schedule": DIFFUSERS_BETA_NAMES.get(name, name), "num_train_timesteps": int(T)}
    for key, value in (("beta_start", beta_start), ("beta_end", beta_end)):
        if key in params:
            config[key] = float(params[key].default if value is None else value)
    return config


def alphas_cumprod(betas: Tensor) -> Tensor:
    """ᾱ_t = ∏_{s≤t} (1 − β_s) (Ho et al. 2020, notation of eq. 4)."""
    return torch.cumprod(1 - betas, dim=0)


def sigma_from_alpha_bar(alpha_bar: Tensor) -> Tensor:
    """VE noise level of a VP step: σ = √((1−ᾱ)/ᾱ) (Karras et al. 2022, Table 1, VP column)."""
    return ((1 - alpha_bar) / alpha_bar).sqrt()


def alpha_bar_from_sigma(sigma: Tensor) -> Tensor:
    """Inverse of :func:`sigma_from_alpha_bar`: ᾱ = 1/(1+σ²)."""
    return 1 / (1 + sigma**2)


class DiscreteSchedule:
    """The T noise levels σ_t of a discrete DDPM model, and continuous t ↔ σ maps between them.

    ``sigmas[t]`` ascends with t. ``sigma_to_t`` interpolates linearly in log σ between neighbouring integer
    steps (so a sampler can run on any σ grid and hand the network a fractional timestep); ``t_to_sigma`` is
    its inverse on ``[0, T−1]``. Values outside ``[σ_0, σ_{T−1}]`` map to the end steps.
    """

    def __init__(self, alphas_cumprod: Tensor) -> None:
        self.alphas_cumprod = alphas_cumprod.to(torch.float64)
        self.sigmas = sigma_from_alpha_bar(self.alphas_cumprod)
        self.log_sigmas = self.sigmas.log()

    @classmethod
    def from_betas(cls, betas: Tensor) -> DiscreteSchedule:
        return cls(alphas_cumprod(betas))

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> DiscreteSchedule:
        """The schedule a diffusers scheduler config names (``beta_schedule``, ``num_train_timesteps``,
        ``beta_start``, ``beta_end``; diffusers' defaults where absent)."""
        return cls.from_betas(make_betas(str(config.get("beta_schedule", "linear")),
                                         int(config.get("num_train_timesteps", 1000)),
                                         config.get("beta_start"), config.get("beta_end")))

    @property
    def num_timesteps(self) -> int:
        return self.sigmas.shape[0]

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """Continuous timestep of σ by linear interpolation of log σ between integer steps."""
        log_sigmas = self.log_sigmas.to(sigma.device)
        log_sigma = sigma.to(torch.float64).clamp_min(1e-10).log()
        low = (torch.searchsorted(log_sigmas, log_sigma, right=True) - 1).clamp(0, self.num_timesteps - 2)
        lo, hi = log_sigmas[low], log_sigmas[low + 1]
        w = ((log_sigma - lo) / (hi - lo)).clamp(0, 1)
        return (low + w).to(sigma.dtype)

    def t_to_sigma(self, t: Tensor) -> Tensor:
        """σ at a continuous timestep: ``exp`` of the linear interpolation of log σ."""
        log_sigmas = self.log_sigmas.to(t.device)
        t64 = t.to(torch.float64).clamp(0, self.num_timesteps - 1)
        low = t64.floor().long().clamp(max=self.num_timesteps - 2)
        w = t64 - low
        return ((1 - w) * log_sigmas[low] + w * log_sigmas[low + 1]).exp().to(t.dtype)

    def discrete_timesteps(self, n: int) -> Tensor:
        """``n`` integer steps, descending from T−1, roughly equally spaced: ``⌊(T−1)(n−j)/n⌋``, j = 0..n−1.

        The exact-rational form of sgm's ``LegacyDDPMDiscretization`` spacing; ``n = T`` gives every step.
        """
        if not 1 <= n <= self.num_timesteps:
            raise ValueError(f"n must be in [1, {self.num_timesteps}], got {n}")
        j = torch.arange(n)
        return ((self.num_timesteps - 1) * (n - j)) // n

    def discrete_sigmas(self, n: int, *, append_zero: bool = True,
                        dtype: torch.dtype = torch.float32) -> Tensor:
        """σ at :meth:`discrete_timesteps` (descending), plus a final 0: a sampling grid for a DDPM model."""
        sigmas = self.sigmas[self.discrete_timesteps(n)]
        if append_zero:
            sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
        return sigmas.to(dtype)

    def __repr__(self) -> str:
        return (f"DiscreteSchedule(T={self.num_timesteps}, sigma_min={self.sigma_min:.4g}, "
                f"sigma_max={self.sigma_max:.4g})")


# --------------------------------------------------------------------------------------------------
# Forward process q(x_t | x₀)


def ddpm_q_sample(x0: Tensor, alpha_bar: Tensor | float, noise: Tensor, *,
                  alphas_cumprod: Tensor | None = None) -> Tensor:
    """``x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε`` (Ho et al. 2020, eq. 4).

    ``alpha_bar`` is ᾱ per sample ``(B,)`` (or a scalar); with ``alphas_cumprod`` given it is instead an
    integer timestep tensor ``t`` and ᾱ_t is looked up.
    """
    a = torch.as_tensor(alpha_bar, device=x0.device)
    if alphas_cumprod is not None:
        a = alphas_cumprod.to(x0.device)[a.long()]
    a = a.to(x0.dtype)
    if a.ndim == 0:
        a = a.expand(x0.shape[0])
    a = append_dims(a, x0.ndim)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def edm_add_noise(x0: Tensor, sigma: Tensor | float, noise: Tensor) -> Tensor:
    """``x_σ = x₀ + σ·n`` (Karras et al. 2022, Sec. 2).

    Equals ``ddpm_q_sample(x0, ᾱ, n)/√ᾱ`` for σ = √((1−ᾱ)/ᾱ) and the same noise.
    """
    s = torch.as_tensor(sigma, device=x0.device, dtype=x0.dtype)
    if s.ndim == 0:
        s = s.expand(x0.shape[0])
    return x0 + append_dims(s, x0.ndim) * noise
