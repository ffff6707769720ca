"""GroupNorm of a video whose statistics are merged from each frame's: the same bits for a clip whole or split.

GroupNorm (Wu & He 2018) normalises a video ``(B, C, T, H, W)`` with the mean and variance of each group over
``(C/G, T, H, W)``. Torch's kernel reduces all those values in one pass, in an order that depends on ``T``;
a clip whose frames are split over processes (``vidiff.parallel.frames``) cannot repeat it, and the float32
rounding then differs from one process by an ulp here and there, which a network amplifies. Here the
moments ``(μ_ct, σ²_ct)`` of each channel of each frame over ``(H, W)`` depend on that frame alone, and each
group's are merged from them in float64 (Chan, Golub & LeVeque 1979, equal counts):

    μ = mean_ct μ_ct,    σ² = mean_ct [σ²_ct + (μ_ct − μ)²],    y = γ·(x − μ)/√(σ² + ε) + β,

so one process and any split of the frames (gathering the per-frame moments) normalise with the same bits.
"""

from __future__ import annotations

import torch
from torch import nn


def centered_frames(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x (B, C, T, H, W)`` -> ``(d, moments)``: ``d (B, C, T, H·W)``, each channel of each frame minus its mean,
    and ``moments (2, B, C, T)``, that mean and the (biased) variance over ``H·W`` (two passes: no cancellation),
    both float32 (float64 for float64 input). Every row depends on its own frame and channel alone."""
    b, c, t = x.shape[:3]
    rows = x.reshape(b, c, t, -1)
    if rows.dtype not in (torch.float32, torch.float64):
        rows = rows.float()  # half precisions: moments and the centred copy in float32
    mean = rows.mean(-1, keepdim=True)
    d = rows - mean
    var = torch.linalg.vector_norm(d, dim=-1) ** 2 / rows.shape[-1]
    return d, torch.stack([mean[..., 0], var])


def normalize_centered(d: torch.Tensor, mean: torch.Tensor, moments: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """``norm`` (its groups, ε, γ, β) applied in place to ``d (B, C, T_local, H·W)`` from :func:`centered_frames`
    (its row means ``mean (B, C, T_local)``), with the group statistics merged from ``moments (2, B, C, T)`` of
    every frame of the clip (the module docstring's formula, over channels and frames of equal counts)."""
    b, c = d.shape[:2]
    g = norm.num_groups
    m = moments.double().reshape(2, b, g, -1)  # (2, B, G, C/G·T)
    group_mean = m[0].mean(-1)  # (B, G)
    var = (m[1] + (m[0] - group_mean[..., None]) ** 2).mean(-1)
    scale = torch.rsqrt(var + norm.eps).repeat_interleave(c // g, dim=1)  # (B, C)
    if norm.affine:
        scale = scale * norm.weight.double()
    shift = (mean.double() - group_mean.repeat_interleave(c // g, dim=1)[..., None]) * scale[..., None]  # (B, C, T)
    if norm.affine:
        shift = shift + norm.bias.double()[:, None]
    shift, scale = shift.to(d.dtype)[..., None], scale.to(d.dtype)[..., None, None]
    if torch.is_grad_enabled() and (d.requires_grad or scale.requires_grad):
        return torch.addcmul(shift, d, scale)  # training: autograd needs d
    return torch.addcmul(shift, d, scale, out=d)  # inference: in place, no memory beyond d


class FrameGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (same parameters and keys) that normalises a float32/float64 video on the CPU with
    statistics merged from per-frame moments (see the module docstring), so a clip split over processes gives
    one process's bits. Other inputs (4D, CUDA, half precision, tracing for export) use torch's kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.ndim != 5 or x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64)
                or torch.jit.is_tracing() or torch.compiler.is_compiling()):
            return super().forward(x)
        d, moments = centered_frames(x)
        return normalize_centered(d, moments[0], moments, self).reshape(x.shape)
