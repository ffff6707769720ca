"""GroupNorm of a video whose statistics are merged from each frame's: the same bits for a clip whole or split.

GroupNorm (Wu & He 2018) normalises a video ``(B, C, T, H, W)`` with the mean and variance of each group over
``(C/G, T, H, W)``. Torch's kernel reduces all those values in one pass, in an order that depends on ``T``;
a clip whose frames are split over processes (``vidiff.parallel.frames``) cannot repeat it, and the float32
rounding then differs from one process by an ulp here and there, which a network amplifies. Here each
frame's moments ``(μ_t, σ²_t)`` over ``(C/G, H, W)`` depend on that frame alone, and the clip's are merged
from them in float64 (Chan, Golub & LeVeque 1979, equal counts):

    μ = mean_t μ_t,    σ² = mean_t [σ²_t + (μ_t − μ)²],    y = γ·(x − μ)/√(σ² + ε) + β,

so one process and any split of the frames (gathering the per-frame moments) normalise with the same bits.
"""

from __future__ import annotations

import torch
from torch import nn


def frame_moments(x: torch.Tensor, groups: int) -> torch.Tensor:
    """``(2, B, G, T)``: the mean and (biased) variance of each group of each frame of ``x (B, C, T, H, W)``,
    float32 (float64 for float64 input; half precisions are reduced in float32)."""
    b, c, t = x.shape[:3]
    x = x if x.dtype in (torch.float32, torch.float64) else x.float()
    var, mean = torch.var_mean(x.reshape(b, groups, c // groups, t, -1), dim=(2, 4), correction=0)
    return torch.stack([mean, var])


def normalize_with_moments(x: torch.Tensor, moments: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """``norm`` (its groups, ε, γ, β) applied to ``x (B, C, T_local, H, W)`` with the clip's statistics merged
    from ``moments (2, B, G, T)`` of every frame of the clip (the module docstring's formula)."""
    m = moments.double()
    mean = m[0].mean(-1)  # (B, G)
    var = (m[1] + (m[0] - mean[..., None]) ** 2).mean(-1)
    b, c = x.shape[:2]
    scale = torch.rsqrt(var + norm.eps).repeat_interleave(c // norm.num_groups, dim=1)  # (B, C)
    shift = -mean.repeat_interleave(c // norm.num_groups, dim=1) * scale
    if norm.affine:
        scale, shift = scale * norm.weight.double(), shift * norm.weight.double() + norm.bias.double()
    shape = (b, c) + (1,) * (x.ndim - 2)
    return torch.addcmul(shift.to(x.dtype).reshape(shape), x, scale.to(x.dtype).reshape(shape))


class FrameGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (same parameters and keys) that normalises a float32/float64 video on the CPU with
    statistics merged from per-frame moments (see the module docstring), so a clip split over processes gives
    one process's bits. Other inputs (4D, CUDA, half precision, tracing for export) use torch's kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.ndim != 5 or x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64)
                or torch.jit.is_tracing() or torch.compiler.is_compiling()):
            return super().forward(x)
        return normalize_with_moments(x, frame_moments(x, self.num_groups), self)
