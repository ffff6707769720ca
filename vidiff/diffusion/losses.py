"""Training side: noise-level samplers p(σ), loss weightings λ(σ), and the denoising losses.

EDM's objective (Karras et al. 2022, eq. 2 and 8): ``E_{σ, x₀, n}[λ(σ)·‖D(x₀ + σn, σ) − x₀‖²]``, as sgm's
``StandardDiffusionLoss`` computes it; DDPM's ε-MSE (Ho et al. 2020, Algorithm 1) is the special case
``EpsScaling`` + ``EpsWeighting`` + σ at the discrete steps (``DiscreteSigmaSampler``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from vidiff.diffusion.schedules import ddpm_q_sample, edm_add_noise
from vidiff.utils import append_dims, build_named

# --------------------------------------------------------------------------------------------------
# Noise-level samplers p(σ): __call__(n, generator=None, device=None) -> (n,)


def _draw_device(generator: torch.Generator | None, device: torch.device | str | None) -> torch.device | str:
    """Draw where the generator lives (reproducible across target devices), then move to ``device``."""
    if generator is not None:
        return generator.device
    return device if device is not None else "cpu"


class EDMLogNormalSampler:
    """``ln σ ~ N(P_mean, P_std²)`` (Karras et al. 2022, Table 1 "Training", P_mean −1.2, P_std 1.2)."""

    def __init__(self, p_mean: float = -1.2, p_std: float = 1.2) -> None:
        self.p_mean = float(p_mean)
        self.p_std = float(p_std)

    def __call__(self, n: int, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> Tensor:
        z = torch.randn(n, generator=generator, device=_draw_device(generator, device))
        return (self.p_mean + self.p_std * z).exp().to(device or z.device)

    def __repr__(self) -> str:
        return f"EDMLogNormalSampler(p_mean={self.p_mean}, p_std={self.p_std})"


class DiscreteSigmaSampler:
    """σ uniform over a finite set, e.g. the T levels of a DDPM schedule (Ho et al. 2020, Alg. 1 line 3)."""

    def __init__(self, sigmas: Tensor) -> None:
        if sigmas.ndim != 1 or sigmas.numel() == 0:
            raise ValueError(f"sigmas must be a non-empty 1-D tensor, got shape {tuple(sigmas.shape)}")
        self.sigmas = sigmas

    def __call__(self, n: int, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> Tensor:
        idx = torch.randint(0, self.sigmas.numel(), (n,), generator=generator,
                            device=_draw_device(generator, device))
        return self.sigmas.to(idx.device)[idx].to(device or idx.device)

    def __repr__(self) -> str:
        return f"DiscreteSigmaSampler(n={self.sigmas.numel()})"


SIGMA_SAMPLERS: dict[str, type] = {
    "edm_lognormal": EDMLogNormalSampler,
    "discrete": DiscreteSigmaSampler,
}

# --------------------------------------------------------------------------------------------------
# Loss weightings λ(σ): __call__(sigma (B,)) -> (B,)


class UnitWeighting:
    """λ(σ) = 1."""

    def __call__(self, sigma: Tensor) -> Tensor:
        return torch.ones_like(sigma)

    def __repr__(self) -> str:
        return "UnitWeighting()"


class EDMWeighting:
    """λ(σ) = (σ² + σ_d²)/(σ·σ_d)² = 1/c_out² (Karras et al. 2022, Table 1): unit effective loss weight."""

    def __init__(self, sigma_data: float = 0.5) -> None:
        self.sigma_data = float(sigma_data)

    def __call__(self, sigma: Tensor) -> Tensor:
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigma_data={self.sigma_data})"


class VWeighting(EDMWeighting):
    """λ(σ) = (σ² + 1)/σ²: EDM weighting with σ_d = 1, i.e. plain MSE on v for :class:`VScaling`."""

    def __init__(self) -> None:
        super().__init__(sigma_data=1.0)

    def __repr__(self) -> str:
        return "VWeighting()"


class EpsWeighting:
    """λ(σ) = σ⁻²: turns ‖D − x₀‖² into ‖ε̂ − ε‖² for :class:`EpsScaling` (Ho et al. 2020, eq. 14)."""

    def __call__(self, sigma: Tensor) -> Tensor:
        return sigma**-2.0

    def __repr__(self) -> str:
        return "EpsWeighting()"


class FlowWeighting:
    """λ(σ) = ((1 + σ)/σ)² = 1/t²: turns ‖D − x₀‖² into the rectified-flow velocity loss ‖F − (ε − x₀)‖² for
    :class:`~vidiff.diffusion.flow_matching.FlowScaling` (Liu et al. 2022, eq. 1; Wan 2025, eq. 2), because
    ``D − x₀ = −t·(F − v)`` with ``t = σ/(1 + σ)``."""

    def __call__(self, sigma: Tensor) -> Tensor:
        return ((1 + sigma) / sigma) ** 2

    def __repr__(self) -> str:
        return "FlowWeighting()"


WEIGHTINGS: dict[str, type] = {
    "unit": UnitWeighting,
    "edm": EDMWeighting,
    "v": VWeighting,
    "eps": EpsWeighting,
    "flow": FlowWeighting,
}


def weighting_by_name(name: str, sigma_data: float = 1.0) -> Callable[[Tensor], Tensor]:
    """The weighting ``WEIGHTINGS[name]``; ``sigma_data`` goes to those that have one (EDM).

    An unknown name is a ``ValueError`` listing the valid ones."""
    return build_named(WEIGHTINGS, name, "loss weighting", sigma_data=sigma_data)


# --------------------------------------------------------------------------------------------------
# Losses


def _randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def denoising_loss(denoiser: Callable[[Tensor, Tensor, Any], Tensor], x0: Tensor, cond: Any,
                   sigma_sampler: Callable[..., Tensor], weighting: Callable[[Tensor], Tensor], *,
                   generator: torch.Generator | None = None, noise: Tensor | None = None) -> Tensor:
    """Per-sample ``λ(σ)·mean((D(x₀ + σn, σ) − x₀)²)`` with σ ~ p(σ), n ~ N(0, I) (EDM eq. 2 and 8), ``(B,)``.

    ``sigma_sampler`` may return per-frame σ ``(B, T)`` (diffusion forcing): λ then weights each frame.

    Draw order: σ first, then the noise (unless ``noise`` is given).
    """
    sigma = sigma_sampler(x0.shape[0], generator=generator, device=x0.device).to(x0.dtype)
    n = _randn_like(x0, generator) if noise is None else noise
    x_noisy = edm_add_noise(x0, sigma, n)  # EDM eq. 2: x_σ = x₀ + σ n (σ per video or per frame)
    D_x = denoiser(x_noisy, sigma, cond)
    if sigma.ndim == 2:  # per-frame σ (B, T): each frame's error weighted by its own λ(σ)
        return (append_dims(weighting(sigma), x0.ndim) * (D_x - x0).square()).flatten(1).mean(1)
    return weighting(sigma) * (D_x - x0).square().flatten(1).mean(1)  # EDM eq. 8


def ddpm_eps_loss(eps_model: Callable[[Tensor, Tensor, Any], Tensor], x0: Tensor, cond: Any,
                  alphas_cumprod: Tensor, *, generator: torch.Generator | None = None,
                  noise: Tensor | None = None, timesteps: Tensor | None = None) -> Tensor:
    """Per-sample ``mean((ε − ε_θ(√ᾱ_t x₀ + √(1−ᾱ_t) ε, t))²)``, t ~ U{0..T−1} (Ho et al. 2020, Alg. 1).

    Returns ``(B,)``.

    ``eps_model(x_t, t, cond)`` receives ``t`` as a float tensor in x₀'s dtype. Draw order: t, then ε;
    ``timesteps`` (integer ``(B,)``) and ``noise``, when given, are used instead of drawing them.
    """
    T = alphas_cumprod.shape[0]
    device = generator.device if generator is not None else x0.device
    t = (torch.randint(0, T, (x0.shape[0],), generator=generator, device=device) if timesteps is None
         else timesteps.long()).to(x0.device)
    eps = _randn_like(x0, generator) if noise is None else noise
    x_t = ddpm_q_sample(x0, t, eps, alphas_cumprod=alphas_cumprod)  # DDPM eq. 4
    return (eps - eps_model(x_t, t.to(x0.dtype), cond)).square().flatten(1).mean(1)
