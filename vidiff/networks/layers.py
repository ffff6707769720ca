"""Small building blocks shared by the video backbones: norms, resampling, feed-forward, embedding MLPs.

Module and attribute names follow diffusers' so that state-dict keys line up with
``UNetSpatioTemporalConditionModel`` checkpoints without any renaming (e.g. ``linear_1``, ``net.0.proj``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def group_norm(channels: int, groups: int, eps: float, cls: type[nn.GroupNorm] = nn.GroupNorm) -> nn.GroupNorm:
    """Affine GroupNorm (Wu & He 2018) with a message naming the mismatch instead of torch's bare assert
    (``cls``: ``FrameGroupNorm`` for the norms over frames)."""
    if channels % groups:
        raise ValueError(f"GroupNorm: channels ({channels}) must be divisible by norm_num_groups ({groups})")
    return cls(num_groups=groups, num_channels=channels, eps=eps, affine=True)


def maybe_checkpoint(enabled: bool, fn: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor:
    """Run ``fn(*args)``, recomputing its activations in backward when ``enabled`` and gradients flow.

    Non-reentrant checkpointing (``use_reentrant=False``) supports keyword-free calls with
    non-tensor arguments (frame counts, ``None`` placeholders) and inputs that do not require grad.
    """
    if enabled and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


# Below this many rows, CPU BLAS (MKL) computes a row with another kernel than in a large product (a one-row
# product is a matrix-vector kernel, a few rows a small-matrix one), so the row's rounding depends on how many
# rows share the call. Measured classes (MKL 2024.2): 1 row, 2 to 5-15 rows, and every count from 6-16 rows up.
ROW_INVARIANT_ROWS = 32


def row_invariant_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` whose every row is rounded the same whatever other rows share the call (batch invariance).

    Few-row products (time embeddings, the projections of one CLIP token per video) are computed one row at a
    time on the CPU, so a video's result does not depend on its batch: one process evaluating the guidance
    halves as one batch of two and CFG-parallel ranks evaluating one each give the same bits. Large products,
    CUDA, tracing and compilation take the plain path.
    """
    rows = x.numel() // max(1, x.shape[-1])
    if (rows <= 1 or rows >= ROW_INVARIANT_ROWS or x.device.type != "cpu" or torch.jit.is_tracing()
            or torch.compiler.is_compiling()):
        return F.linear(x, weight, bias)
    flat = x.reshape(rows, x.shape[-1])
    out = torch.cat([F.linear(flat[i:i + 1], weight, bias) for i in range(rows)])
    return out.reshape(*x.shape[:-1], weight.shape[0])


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and keys) computed by :func:`row_invariant_linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return row_invariant_linear(x, self.weight, self.bias)


class Downsample(nn.Module):
    """Strided 3×3 convolution halving H and W (rounding up: ``ceil(H/2)``, as the SD/SVD UNets)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)  # (N, C, H, W) -> (N, C, ceil(H/2), ceil(W/2))


class Upsample(nn.Module):
    """Nearest-neighbour upsampling followed by a 3×3 convolution.

    ``size`` is the spatial size of the skip tensor this output is concatenated with: giving it makes
    latents whose size is not a multiple of the total downsampling round-trip (an odd 9 went to 5 and
    must come back to 9, not 10). For an exact doubling it is the same as ``scale_factor=2``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        if size is None:
            size = (2 * x.shape[-2], 2 * x.shape[-1])
        x = F.interpolate(x, size=size, mode="nearest")  # (N, C, H, W) -> (N, C, *size)
        return self.conv(x)


class GEGLU(nn.Module):
    """Gated GELU projection ``a · gelu(b)`` with ``[a, b] = W x + c`` (Shazeer 2020, "GLU Variants")."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = Linear(dim_in, 2 * dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)  # exact (erf) GELU, as the reference models


class FeedForward(nn.Module):
    """Transformer MLP ``Linear(GEGLU(x))`` with hidden width ``mult · dim``.

    ``net`` is a Sequential of (GEGLU, Dropout, Linear) so the parameter keys are ``net.0.proj`` and
    ``net.2`` as in diffusers' checkpoints.
    """

    def __init__(self, dim: int, dim_out: int | None = None, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner), nn.Dropout(dropout), Linear(inner, dim_out or dim))
        # Memory control: at most this many tokens per call (None: all at once); the MLP is per token.
        self.max_tokens: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.max_tokens is None or x.shape[0] * x.shape[1] <= self.max_tokens:
            return self.net(x)
        rows = max(1, self.max_tokens // x.shape[1])
        return torch.cat([self.net(chunk) for chunk in x.split(rows)])


class TimestepMLP(nn.Module):
    """Two-layer SiLU MLP applied to a sinusoidal embedding (Ho et al. 2020; ``TimestepEmbedding``)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int | None = None) -> None:
        super().__init__()
        self.linear_1 = Linear(in_dim, hidden_dim)
        self.act = nn.SiLU()
        self.linear_2 = Linear(hidden_dim, out_dim or hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))
