"""Building blocks of the KL autoencoders: resnets (2D and temporal), single-head attention, resampling.

Parameter names follow diffusers' checkpoints (``norm1``, ``conv1``, ``conv_shortcut``, ``group_norm``,
``to_q`` ..., ``time_mixer.mix_factor``) so SVD's VAE weights load without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vidiff.utils.norms import FrameGroupNorm

GROUPS = 32  # GroupNorm groups everywhere in SD/SVD autoencoders


class ResnetBlock2D(nn.Module):
    """``x + conv(silu(norm(conv(silu(norm(x))))))`` with a 1x1 shortcut when the width changes (He et al. 2016)."""

    def __init__(self, in_ch: int, out_ch: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(GROUPS, in_ch, eps=eps)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = nn.GroupNorm(GROUPS, out_ch, eps=eps)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class TemporalResnetBlock(nn.Module):
    """The same residual block with (3, 1, 1) convolutions across frames, on ``(B, C, T, H, W)``."""

    def __init__(self, ch: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm1 = FrameGroupNorm(GROUPS, ch, eps=eps)  # exact under a frame split (vidiff.parallel.decode)
        self.conv1 = nn.Conv3d(ch, ch, (3, 1, 1), padding=(1, 0, 0))
        self.norm2 = FrameGroupNorm(GROUPS, ch, eps=eps)
        self.conv2 = nn.Conv3d(ch, ch, (3, 1, 1), padding=(1, 0, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


class LearnedMix(nn.Module):
    """``σ(m)·temporal + (1 − σ(m))·spatial`` with a learned scalar ``m`` (SVD decoder's "learned" blend)."""

    def __init__(self, init: float = 0.0) -> None:
        super().__init__()
        self.mix_factor = nn.Parameter(torch.tensor([init]))

    def forward(self, spatial: torch.Tensor, temporal: torch.Tensor) -> torch.Tensor:
        beta = torch.sigmoid(self.mix_factor).to(spatial.dtype)  # weight of the temporal path
        return (1 - beta) * spatial + beta * temporal


class SpatioTemporalResBlock(nn.Module):
    """A 2D resnet per frame, then a temporal resnet across frames, blended (Blattmann et al. 2023, SVD)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.spatial_res_block = ResnetBlock2D(in_ch, out_ch, eps=1e-6)
        self.temporal_res_block = TemporalResnetBlock(out_ch, eps=1e-5)
        self.time_mixer = LearnedMix()

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        """``x (B·T, C, H, W)`` -> ``(B·T, C', H, W)``."""
        s = self.spatial_res_block(x)
        bt, c, h, w = s.shape
        s = s.reshape(bt // num_frames, num_frames, c, h, w).transpose(1, 2)  # (B, C', T, H, W)
        out = self.time_mixer(s, self.temporal_res_block(s))
        return out.transpose(1, 2).reshape(bt, c, h, w)


class SelfAttention2D(nn.Module):
    """Single-head self-attention over the pixels of each image, with GroupNorm and a residual."""

    def __init__(self, ch: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.group_norm = nn.GroupNorm(GROUPS, ch, eps=eps)
        self.to_q = nn.Linear(ch, ch)
        self.to_k = nn.Linear(ch, ch)
        self.to_v = nn.Linear(ch, ch)
        self.to_out = nn.ModuleList([nn.Linear(ch, ch)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        t = self.group_norm(x).reshape(n, c, h * w).transpose(1, 2)  # (N, HW, C)
        q, k, v = (proj(t)[:, None] for proj in (self.to_q, self.to_k, self.to_v))  # (N, 1, HW, C)
        out = F.scaled_dot_product_attention(q, k, v)[:, 0]  # softmax(q kᵀ/√C) v
        out = self.to_out[0](out).transpose(1, 2).reshape(n, c, h, w)
        return x + out


class Downsample(nn.Module):
    """Stride-2 3x3 convolution after padding one pixel on the right and bottom (SD's asymmetric pad)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 convolution."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
