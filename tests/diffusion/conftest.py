"""Closed-form denoisers used as oracles: the ideal (MMSE) denoiser of Gaussian-mixture data.

For data ``x₀ ~ Σ_k w_k N(μ_k, s_k²)`` (elementwise, independent coordinates) and ``x = x₀ + σn``:
``p(k | x) ∝ w_k N(x; μ_k, s_k² + σ²)`` and ``E[x₀ | x, k] = (s_k² x + σ² μ_k)/(s_k² + σ²)``, so
``D*(x, σ) = E[x₀ | x] = Σ_k p(k | x)·E[x₀ | x, k]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from vidiff.utils import append_dims


@dataclass(frozen=True)
class GaussianMixture:
    weights: tuple[float, ...]
    means: tuple[float, ...]
    stds: tuple[float, ...]

    def _params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        kw = {"dtype": x.dtype, "device": x.device}
        return tuple(torch.tensor(v, **kw) for v in (self.weights, self.means, self.stds))

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond: object = None) -> torch.Tensor:
        """E[x₀ | x₀ + σn = x], elementwise; ``sigma`` is ``(B,)``."""
        w, mu, s = self._params(x)
        var = s**2 + append_dims(sigma, x.ndim)[..., None] ** 2  # (B, ..., K)
        xe = x[..., None]
        log_p = w.log() - 0.5 * torch.log(2 * math.pi * var) - (xe - mu) ** 2 / (2 * var)
        post = torch.softmax(log_p, dim=-1)
        sig2 = var - s**2
        mean_k = (s**2 * xe + sig2 * mu) / var
        return (post * mean_k).sum(-1)

    def sample(self, shape: tuple[int, ...], generator: torch.Generator, dtype=torch.float64) -> torch.Tensor:
        w, mu, s = (torch.tensor(v, dtype=dtype) for v in (self.weights, self.means, self.stds))
        k = torch.multinomial(w, math.prod(shape), replacement=True, generator=generator).reshape(shape)
        return mu[k] + s[k] * torch.randn(shape, generator=generator, dtype=dtype)


@pytest.fixture
def gmm() -> GaussianMixture:
    """Two well-separated 1-D modes (3.5 apart, stds ≤ 0.5): nearest-mode assignment is almost exact."""
    return GaussianMixture(weights=(0.3, 0.7), means=(-2.0, 1.5), stds=(0.3, 0.5))


@pytest.fixture
def gaussian() -> GaussianMixture:
    """A single Gaussian N(0.3, 0.5²): its probability-flow ODE has a closed-form solution."""
    return GaussianMixture(weights=(1.0,), means=(0.3,), stds=(0.5,))
