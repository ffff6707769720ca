"""The denoiser contract ``D(x, σ, cond) -> x̂₀`` built from a network and a preconditioning (EDM eq. 7)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from vidiff.diffusion.scalings import Scaling
from vidiff.utils import append_dims

DenoiserFn = Callable[[Tensor, Tensor, Any], Tensor]
"""Any callable ``D(x, sigma, cond) -> x0`` with ``x (B, T, ...)`` and ``sigma`` ``(B,)`` or per frame
``(B, T)``, in x's dtype."""

CLEAN_SIGMA = 0.002
"""The level at which a network is shown frames held clean (σ = 0): SVD's and EDM's σ_min."""


def expand_sigma(sigma: Tensor | float, x: Tensor) -> Tensor:
    """σ on x's device and dtype: ``(B,)`` from a python float, a 0-d or a ``(B,)`` tensor; per-frame levels
    ``(B, T)`` for ``x (B, T, ...)`` stay ``(B, T)``."""
    sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype)
    if sigma.ndim == 0:
        return sigma.expand(x.shape[0]).clone()
    if sigma.shape != (x.shape[0],) and (x.ndim < 3 or sigma.shape != tuple(x.shape[:2])):
        per_frame = f" or {tuple(x.shape[:2])}" if x.ndim >= 3 else ""
        raise ValueError(f"sigma must be a scalar or of shape ({x.shape[0]},){per_frame}, "
                         f"got {tuple(sigma.shape)}")
    return sigma


class Denoiser:
    """``D(x, σ) = c_skip·x + c_out·F(c_in·x, c_noise, cond)`` (Karras et al. 2022, eq. 7).

    ``network(x_in, c_noise, cond) -> F_x`` gets ``x_in`` in its own dtype (from its first parameter, else
    x's, or the ``dtype`` argument). ``c_noise`` stays in x's dtype: networks embed it in float32, as
    diffusers does with its float32 timesteps (rounding ¼ ln σ to fp16 first would change the embedding).
    The coefficients and the result stay in x's dtype (float32/float64 sampler state).

    σ may be per frame, ``(B, T)``: the coefficients broadcast over each frame and the network gets
    ``c_noise (B, T)``. Frames at σ = 0 are held clean: their result is ``x`` itself, the ideal denoiser at
    σ = 0, and the network (never trained at σ = 0, where ``c_noise = ¼ ln σ`` is −∞) sees them as at
    ``clean_sigma`` (``c_in`` and ``c_noise`` of that level), so they condition the other frames as
    nearly-clean frames. Where no σ is 0 nothing changes, bit for bit.
    """

    def __init__(self, network: Callable[..., Tensor], scaling: Scaling, *, dtype: torch.dtype | None = None,
                 clean_sigma: float = CLEAN_SIGMA):
        self.network = network
        self.scaling = scaling
        self.dtype = dtype
        self.clean_sigma = float(clean_sigma)

    def network_dtype(self, x: Tensor) -> torch.dtype:
        if self.dtype is not None:
            return self.dtype
        if hasattr(self.network, "parameters"):
            param = next(iter(self.network.parameters()), None)
            if param is not None:
                return param.dtype
        return x.dtype

    def __call__(self, x: Tensor, sigma: Tensor | float, cond: Any = None) -> Tensor:
        sigma = expand_sigma(sigma, x)
        clean = sigma == 0
        shown = torch.where(clean, torch.full_like(sigma, self.clean_sigma), sigma)  # the network's σ
        c_skip, c_out, c_in, c_noise = self.scaling(shown)
        c_skip, c_out, c_in = (append_dims(c, x.ndim) for c in (c_skip, c_out, c_in))
        dtype = self.network_dtype(x)
        F_x = self.network((c_in * x).to(dtype), c_noise, cond)
        D_x = c_skip * x + c_out * F_x.to(x.dtype)  # EDM eq. 7
        return torch.where(append_dims(clean, x.ndim), x, D_x)  # D(x, 0) = x

    def __repr__(self) -> str:
        return f"Denoiser({type(self.network).__name__}, {self.scaling!r})"


class KnownValuesDenoiser:
    """A denoiser for data some of whose entries are known exactly: ``D'(x) = m·v + (1 − m)·D(x)``.

    Where the data distribution of an entry is a point mass at ``v`` (e.g. the first frame of a latent that
    is defined relative to that frame), the ideal denoiser ``E[x₀ | x_σ]`` is ``v`` at every σ, whatever the
    network makes of it; the other entries keep the wrapped denoiser's estimate. ``mask`` and ``value``
    broadcast against ``x`` (e.g. ``(1, T, 1, 1, 1)`` for whole frames); σ (``(B,)`` or ``(B, T)``) is
    passed through.
    """

    def __init__(self, denoiser: DenoiserFn, mask: Tensor, value: Tensor | float = 0.0) -> None:
        self.denoiser = denoiser
        self.mask = mask.bool()
        self.value = value

    def __call__(self, x: Tensor, sigma: Tensor | float, cond: Any = None) -> Tensor:
        d = self.denoiser(x, sigma, cond)
        value = torch.as_tensor(self.value, dtype=d.dtype, device=d.device)
        return torch.where(self.mask.to(d.device), value, d)

    def __repr__(self) -> str:
        return f"KnownValuesDenoiser({self.denoiser!r})"
