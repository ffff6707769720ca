"""Tensor helpers: the one place where per-sample scalars are reshaped against data, seeded noise is drawn
for a batch, and backward warping (shared by optical flow, the flow-consistency loss and the flow
autoencoder)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

Generators = torch.Generator | Sequence[torch.Generator] | None


def randn(shape: Sequence[int], generator: Generators, *, device: torch.device | str | None = None,
          dtype: torch.dtype | None = None) -> torch.Tensor:
    """Standard normal noise of ``shape``, drawn as diffusers' ``randn_tensor`` draws it.

    One generator: one draw of the whole ``shape`` on the generator's device, then moved to ``device``.
    A sequence of generators: row ``i`` (the first axis) drawn from ``generator[i]``, so each sample of a
    batch repeats alone whatever the batch. None: the global generator, on ``device``.
    """
    shape = tuple(int(n) for n in shape)
    if isinstance(generator, Sequence):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators given for a batch of {shape[0]}: pass one per sample")
        rows = [torch.randn((1, *shape[1:]), generator=g, device=g.device, dtype=dtype) for g in generator]
        return torch.cat(rows).to(device)
    where = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=where, dtype=dtype).to(device)


def append_dims(x: torch.Tensor, target_ndim: int) -> torch.Tensor:
    """Append trailing singleton dims so a per-sample tensor broadcasts against ``target_ndim`` data.

    ``sigma`` of shape ``(B,)`` against ``x`` of shape ``(B, T, C, H, W)`` becomes ``(B, 1, 1, 1, 1)``; a
    per-frame ``(B, T)`` becomes ``(B, T, 1, 1, 1)``.
    """
    missing = target_ndim - x.ndim
    if missing < 0:
        raise ValueError(f"cannot append dims: input has {x.ndim} dims, target has {target_ndim}")
    return x.reshape(*x.shape, *([1] * missing))


def warp(image: torch.Tensor, flow: torch.Tensor, *, mode: str = "bilinear",
         padding_mode: str = "border") -> torch.Tensor:
    """Differentiable backward warp: ``out(p) = image(p + flow(p))`` sampled with ``grid_sample``.

    ``image (N, C, H, W)``, ``flow (N, 2, H, W)`` in pixels ``(dx, dy)``. Points outside the image take the
    border value (``padding_mode="border"``), the mirrored image (``"reflection"``) or zero (``"zeros"``).
    Flow convention as :mod:`vidiff.metrics.flow`: pixel centres at integer coordinates.
    """
    n, _, h, w = image.shape
    if flow.shape != (n, 2, h, w):
        raise ValueError(f"flow must be {(n, 2, h, w)} for image {tuple(image.shape)}, "
                         f"got {tuple(flow.shape)}")
    ys = torch.arange(h, device=image.device, dtype=flow.dtype).view(1, h, 1)
    xs = torch.arange(w, device=image.device, dtype=flow.dtype).view(1, 1, w)
    gx = (xs + flow[:, 0]) * (2.0 / max(w - 1, 1)) - 1.0
    gy = (ys + flow[:, 1]) * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack([gx, gy], dim=-1).to(image.dtype)
    return F.grid_sample(image, grid, mode=mode, padding_mode=padding_mode, align_corners=True)
