"""Classifier-free guidance (Ho & Salimans 2022) as a denoiser wrapper, and SVD/SV3D per-frame scale ramps.

Guidance is applied to the denoised output: ``D̃ = D_u + s·(D_c − D_u)``. Because ``D = c_skip·x +
c_out·F`` is affine in the network output with the same ``c_skip·x`` for both branches,
``D̃ = c_skip·x + c_out·(F_u + s·(F_c − F_u))``: identical to guiding v or ε as diffusers does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from vidiff.diffusion.denoiser import expand_sigma
from vidiff.utils import append_dims, build_named


def cat_conds(a: Any, b: Any) -> Any:
    """Batch two conditionings: ``torch.cat`` for tensors, per key for mappings, ``a.cat(b)`` if defined."""
    if a is None and b is None:
        return None
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return torch.cat([a, b])
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        if set(a) != set(b):
            raise KeyError(f"conditioning keys differ: {sorted(a)} vs {sorted(b)}")
        return {k: cat_conds(a[k], b[k]) for k in a}
    if hasattr(a, "cat"):
        return a.cat(b)
    raise TypeError(f"cannot batch conditionings of types {type(a).__name__} and {type(b).__name__}")


class CFGDenoiser:
    """``D̃(x, σ, c) = D(x, σ, u) + s·(D(x, σ, c) − D(x, σ, u))`` with ``[u, c]`` evaluated as one batch.

    ``scale`` is a float or a tensor broadcastable against the denoised output (e.g. ``(1, T, 1, 1, 1)``
    per-frame ramps for ``(B, T, C, H, W)`` data, see :func:`per_frame`). A scale of exactly 1 everywhere
    evaluates only the conditional branch.
    """

    def __init__(self, denoiser: Callable[[Tensor, Tensor, Any], Tensor], uncond: Any,
                 scale: float | Tensor) -> None:
        if isinstance(scale, Tensor) and scale.ndim == 1 and scale.numel() > 1:
            raise ValueError("a 1-D scale tensor is ambiguous: shape per-frame scales with per_frame(scales)")
        self.denoiser = denoiser
        self.uncond = uncond
        self.scale = scale
        self.unit = bool(torch.all(torch.as_tensor(scale) == 1))

    def __call__(self, x: Tensor, sigma: Tensor | float, cond: Any = None) -> Tensor:
        sigma = expand_sigma(sigma, x)
        if self.unit:
            return self.denoiser(x, sigma, cond)
        D = self.denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), cat_conds(self.uncond, cond))
        D_u, D_c = D.chunk(2)
        s = torch.as_tensor(self.scale, device=D.device, dtype=D.dtype)
        return D_u + s * (D_c - D_u)  # Ho & Salimans 2022, eq. 6, on D

    def __repr__(self) -> str:
        return f"CFGDenoiser(scale={self.scale})"


def constant_scales(scale: float, num_frames: int, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """The same guidance scale for every frame, ``(T,)``."""
    return torch.full((num_frames,), float(scale), dtype=dtype)


def linear_frame_scales(min_scale: float, max_scale: float, num_frames: int, *,
                        dtype: torch.dtype = torch.float32) -> Tensor:
    """SVD's ramp ``linspace(min, max, T)`` over frames, ``(T,)`` (diffusers' SVD pipeline, sgm's
    LinearPredictionGuider; computed in ``dtype`` as both do)."""
    return torch.linspace(min_scale, max_scale, num_frames, dtype=dtype)


def triangle_frame_scales(min_scale: float, max_scale: float, num_frames: int, *, period: float = 1.0,
                          dtype: torch.dtype = torch.float32) -> Tensor:
    """SV3D's ramp ``min + (max − min)·2|v/p − ⌊v/p + ½⌋|``, ``v = linspace(0, 1, T)``, ``(T,)``.

    A triangle wave (sgm's TrianglePredictionGuider, computed in ``dtype``): with period 1, ``min`` at the
    first and last frame (the input view) and ``max`` half-way round the orbit.
    """
    v = torch.linspace(0, 1, num_frames, dtype=dtype) / period
    wave = 2 * (v - torch.floor(v + 0.5)).abs()
    return wave * (max_scale - min_scale) + min_scale


def spatiotemporal_scales(min_scale: float, max_scale: float, num_frames: int, num_views: int, *,
                          dtype: torch.dtype = torch.float32) -> Tensor:
    """SV4D's guidance over a window of ``T`` frames × ``V`` views flattened t-major, ``(T·V,)``.

    ``min + (max − min)·(½·linspace(0, 1, T)[t] + ½·triangle(v))``, the triangle of
    :func:`triangle_frame_scales` over the views (SV4D, Xie et al. 2024; sgm's SpatiotemporalPredictionGuider):
    guidance grows along time and peaks at the view opposite the input camera.
    """
    time = torch.linspace(0, 1, num_frames, dtype=dtype)[:, None] * 0.5
    view = triangle_frame_scales(0.0, 1.0, num_views, dtype=dtype)[None, :] * 0.5
    grid = torch.zeros(num_frames, num_views, dtype=dtype) + time + view
    return grid.flatten() * (max_scale - min_scale) + min_scale


FRAME_SCALES: dict[str, Callable[..., Tensor]] = {
    "linear": linear_frame_scales,
    "triangle": triangle_frame_scales,
}


def frame_scales(ramp: str, min_scale: float, max_scale: float, num_frames: int, *,
                 dtype: torch.dtype = torch.float32) -> Tensor:
    """Per-frame guidance scales ``(T,)`` from the ramp registered as ``ramp`` in :data:`FRAME_SCALES`
    (an unknown name is a ValueError listing the valid ones)."""
    return build_named(FRAME_SCALES, ramp, "guidance ramp", min_scale=min_scale, max_scale=max_scale,
                       num_frames=num_frames, dtype=dtype)


def per_frame(scales: Tensor, ndim: int = 5) -> Tensor:
    """Shape per-frame scales ``(T,)`` as ``(1, T, 1, 1, 1)`` to broadcast over ``(B, T, C, H, W)``."""
    if scales.ndim != 1:
        raise ValueError(f"per-frame scales must be 1-D (T,), got shape {tuple(scales.shape)}")
    return append_dims(scales[None], ndim)


