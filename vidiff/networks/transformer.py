"""Spatio-temporal transformer of the SVD UNet: spatial attention per frame, then temporal attention per
pixel across frames, blended by a learned α ("Align your Latents", Blattmann et al. 2023a; Stable Video
Diffusion, Blattmann et al. 2023b). sgm calls it ``SpatialVideoTransformer``; names of submodules match
diffusers' ``TransformerSpatioTemporalModel`` so checkpoints load without renaming.

Context tensors are per video, ``(B, S, D)``; the attention layers broadcast them over the frames (spatial
attention) or the pixels (temporal attention) of that video without copying (see ``attention.py``).
"""

from __future__ import annotations

import torch
from torch import nn

from vidiff.networks.attention import Attention
from vidiff.networks.layers import FeedForward, TimestepMLP, group_norm
from vidiff.networks.resnet import AlphaBlender
from vidiff.utils import timestep_embedding


class BasicTransformerBlock(nn.Module):
    """Pre-LN block: self-attention, cross-attention to the context, GEGLU feed-forward (each residual)."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, head_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, head_dim, context_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, dropout=dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """``x (B·T, HW, C)``, ``context (B, S, D)`` -> ``(B·T, HW, C)``."""
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SequenceTransformerBlock(nn.Module):
    """Feed-forward in (sgm's ``ff_in``), self-attention, cross-attention, feed-forward, each residual, on
    ready-made token sequences (sgm's ``BasicTransformerTimeMixBlock`` once its rearrange is done).

    Which tokens form a sequence is the caller's choice: the frames of one pixel (SVD's temporal block,
    below), the views of one frame or the times of one view (SV4D, ``sv4d.py``).
    """

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None, dropout: float = 0.0):
        super().__init__()
        self.norm_in = nn.LayerNorm(dim)
        self.ff_in = FeedForward(dim, dropout=dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, head_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, head_dim, context_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, dropout=dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """``x (N, L, C)``: N sequences of L tokens; ``context (M, S, D)``, ``N % M == 0`` -> ``(N, L, C)``."""
        x = x + self.ff_in(self.norm_in(x))
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)  # each context row serves N / M consecutive sequences
        return x + self.ff(self.norm3(x))


class TemporalTransformerBlock(SequenceTransformerBlock):
    """The sequence block over the frame axis (SVD's temporal attention).

    Every pixel of every video is one sequence of T tokens; cross-attention reads the video's
    first-frame context (sgm ``use_spatial_context``).
    """

    def forward(self, x: torch.Tensor, context: torch.Tensor, num_frames: int) -> torch.Tensor:  # type: ignore[override]
        """``x (B·T, HW, C)``, ``context (B, S, D)`` -> ``(B·T, HW, C)``."""
        bt, hw, c = x.shape
        # Tokens of one pixel across the frames of its video become one sequence.
        x = x.reshape(-1, num_frames, hw, c).transpose(1, 2).reshape(-1, num_frames, c)  # (B·HW, T, C)
        x = super().forward(x, context)  # each context row serves the HW pixels of its video
        return x.reshape(-1, hw, num_frames, c).transpose(1, 2).reshape(bt, hw, c)


class SpatioTemporalTransformer(nn.Module):
    """GroupNorm → proj_in → [spatial block, temporal block (with frame-position embedding), α-blend]×depth
    → proj_out, added to the input."""

    def __init__(
        self,
        channels: int,
        heads: int,
        context_dim: int,
        *,
        depth: int = 1,
        groups: int = 32,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels ({channels}) must be divisible by the number of heads ({heads})")
        head_dim = channels // heads
        self.norm = group_norm(channels, groups, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(channels, heads, head_dim, context_dim, dropout) for _ in range(depth)]
        )
        self.temporal_transformer_blocks = nn.ModuleList(
            [TemporalTransformerBlock(channels, heads, head_dim, context_dim, dropout) for _ in range(depth)]
        )
        # Frame index -> sinusoid -> MLP, added before each temporal block (learned positions over time).
        self.time_pos_embed = TimestepMLP(channels, 4 * channels, channels)
        self.time_mixer = AlphaBlender(0.5, "learned_with_images")
        self.proj_out = nn.Linear(channels, channels)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        num_frames: int,
        image_only_indicator: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x (B·T, C, H, W)``, ``context (B, S, D)``, ``image_only_indicator (B, T)`` -> same as x."""
        bt, c, height, width = x.shape
        residual = x
        x = self.norm(x).permute(0, 2, 3, 1).reshape(bt, height * width, c)  # (B·T, HW, C)
        x = self.proj_in(x)

        frames = torch.arange(num_frames, device=x.device)
        pos = self.time_pos_embed(timestep_embedding(frames, c).to(x.dtype))  # (T, C), same for every video
        pos = pos[:, None, :]  # (T, 1, C)

        for block, temporal_block in zip(self.transformer_blocks, self.temporal_transformer_blocks):
            x = block(x, context)
            x_mix = (x.unflatten(0, (-1, num_frames)) + pos).flatten(0, 1)  # (B·T, HW, C)
            x_mix = temporal_block(x_mix, context, num_frames)
            x = self.time_mixer(
                x.unflatten(0, (-1, num_frames)), x_mix.unflatten(0, (-1, num_frames)), image_only_indicator
            ).flatten(0, 1)  # (B·T, HW, C)

        x = self.proj_out(x)
        x = x.reshape(bt, height, width, c).permute(0, 3, 1, 2)  # (B·T, C, H, W)
        return x + residual
