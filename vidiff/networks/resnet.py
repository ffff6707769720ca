"""Residual blocks of the spatio-temporal UNet: a 2D resnet per frame, a (3,1,1) temporal resnet across
frames, and the learned blend between them.

The factorisation is the one of "Align your Latents" (Blattmann et al. 2023a): every pretrained spatial
layer is followed by a temporal layer whose output is mixed back with a learned factor α,
``out = α·x_spatial + (1−α)·x_temporal``; Stable Video Diffusion (Blattmann et al. 2023b) keeps it.
Attribute names (``spatial_res_block``, ``temporal_res_block``, ``time_mixer.mix_factor``, ``norm1``,
``conv1``, ``time_emb_proj``, ``norm2``, ``conv2``, ``conv_shortcut``) match diffusers' checkpoints.

Time embeddings are passed as ``temb (B, T, E)`` or ``(B, 1, E)``: per frame, or once per video and
broadcast over its frames (exact, and T times fewer projections than embedding every frame).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vidiff.networks.layers import Linear, group_norm
from vidiff.utils.norms import FrameGroupNorm

MERGE_STRATEGIES = ("fixed", "learned", "learned_with_images")


class ResnetBlock2D(nn.Module):
    """Pre-activation residual block ``x + conv(act(norm(conv(act(norm(x))) + W·act(temb))))`` on frames."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int | None,
        *,
        groups: int = 32,
        eps: float = 1e-6,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels, groups, eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.time_emb_proj = Linear(temb_channels, out_channels) if temb_channels else None
        self.norm2 = group_norm(out_channels, groups, eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.conv_shortcut = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None
        )

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        """``x (B·T, C, H, W)``, ``temb (B, T|1, E)`` or ``(B·T, E)`` -> ``(B·T, C_out, H, W)``."""
        h = self.conv1(F.silu(self.norm1(x)))
        if self.time_emb_proj is not None and temb is not None:
            t = self.time_emb_proj(F.silu(temb))
            if t.ndim == 2:  # one embedding per image: (N, C)
                h = h + t[:, :, None, None]
            else:  # per video, broadcast over its frames: (B, T|1, C)
                h = (h.unflatten(0, (t.shape[0], -1)) + t[..., None, None]).flatten(0, 1)
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return skip + h


class TemporalResnetBlock(nn.Module):
    """Residual block of 3D convolutions with kernel (3, 1, 1): mixes each pixel across neighbouring frames.

    Frames at the clip edges see zero padding, as in the reference models.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int | None,
        *,
        groups: int = 32,
        eps: float = 1e-6,
        kernel_size: tuple[int, int, int] = (3, 1, 1),
    ) -> None:
        super().__init__()
        padding = tuple(k // 2 for k in kernel_size)
        self.norm1 = group_norm(in_channels, groups, eps, FrameGroupNorm)  # exact under a frame split
        self.conv1 = nn.Conv3d(in_channels, out_channels, kernel_size=kernel_size, padding=padding)
        self.time_emb_proj = Linear(temb_channels, out_channels) if temb_channels else None
        self.norm2 = group_norm(out_channels, groups, eps, FrameGroupNorm)
        self.conv2 = nn.Conv3d(out_channels, out_channels, kernel_size=kernel_size, padding=padding)
        self.conv_shortcut = (
            nn.Conv3d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None
        )

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        """``x (B, C, T, H, W)``, ``temb (B, T|1, E)`` -> ``(B, C_out, T, H, W)``."""
        h = self.conv1(F.silu(self.norm1(x)))
        if self.time_emb_proj is not None and temb is not None:
            t = self.time_emb_proj(F.silu(temb))  # (B, T|1, C)
            h = h + t.transpose(1, 2)[..., None, None]  # (B, C, T|1, 1, 1)
        h = self.conv2(F.silu(self.norm2(h)))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return skip + h


class AlphaBlender(nn.Module):
    """Blend ``α·x_spatial + (1−α)·x_temporal`` ("Align your Latents", Blattmann et al. 2023a, eq. 3).

    Merge strategies: ``fixed`` (α is a constant buffer), ``learned`` (α = sigmoid(mix_factor)),
    ``learned_with_images`` (as learned, but α = 1, i.e. purely spatial, for frames flagged by
    ``image_only_indicator``: joint image/video training). ``switch_spatial_to_temporal_mix`` swaps the
    roles (α weighs the temporal branch), as SVD's temporal VAE decoder does.
    Inputs carry frames on dim 1: ``(B, T, ...)``.
    """

    def __init__(
        self,
        alpha: float = 0.5,
        merge_strategy: str = "learned_with_images",
        switch_spatial_to_temporal_mix: bool = False,
    ) -> None:
        super().__init__()
        if merge_strategy not in MERGE_STRATEGIES:
            raise ValueError(f"merge_strategy must be one of {MERGE_STRATEGIES}, got {merge_strategy!r}")
        self.merge_strategy = merge_strategy
        self.switch_spatial_to_temporal_mix = switch_spatial_to_temporal_mix
        mix_factor = torch.tensor([float(alpha)])
        if merge_strategy == "fixed":
            self.register_buffer("mix_factor", mix_factor)
        else:
            self.mix_factor = nn.Parameter(mix_factor)

    def get_alpha(self, image_only_indicator: torch.Tensor | None = None) -> torch.Tensor:
        """α in float32: shape ``(1,)``, or ``(B, T)`` when images are flagged."""
        if self.merge_strategy == "fixed":
            return self.mix_factor.float()
        alpha = torch.sigmoid(self.mix_factor.float())
        if self.merge_strategy == "learned_with_images" and image_only_indicator is not None:
            alpha = torch.where(image_only_indicator.bool(), torch.ones_like(alpha), alpha)  # (B, T)
        return alpha

    def forward(
        self,
        x_spatial: torch.Tensor,
        x_temporal: torch.Tensor,
        image_only_indicator: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x_spatial``, ``x_temporal (B, T, ...)``, ``image_only_indicator (B, T)`` -> ``(B, T, ...)``."""
        alpha = self.get_alpha(image_only_indicator).to(x_spatial.dtype)
        if alpha.ndim == 2:
            alpha = alpha.reshape(*alpha.shape, *([1] * (x_spatial.ndim - 2)))
        if self.switch_spatial_to_temporal_mix:
            alpha = 1.0 - alpha
        return alpha * x_spatial + (1.0 - alpha) * x_temporal


class SpatioTemporalResBlock(nn.Module):
    """Spatial resnet per frame, then a temporal resnet across frames, blended by a learned α.

    SVD's ``VideoResBlock`` (Blattmann et al. 2023b). ``temb_channels=None`` builds it without time
    conditioning (as a temporal VAE decoder needs).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int | None,
        *,
        groups: int = 32,
        eps: float = 1e-6,
        temporal_eps: float | None = None,
        merge_factor: float = 0.5,
        merge_strategy: str = "learned_with_images",
        switch_spatial_to_temporal_mix: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.spatial_res_block = ResnetBlock2D(
            in_channels, out_channels, temb_channels, groups=groups, eps=eps, dropout=dropout
        )
        self.temporal_res_block = TemporalResnetBlock(
            out_channels, out_channels, temb_channels, groups=groups,
            eps=eps if temporal_eps is None else temporal_eps,
        )
        self.time_mixer = AlphaBlender(merge_factor, merge_strategy, switch_spatial_to_temporal_mix)

    def forward(
        self,
        x: torch.Tensor,
        temb: torch.Tensor | None,
        num_frames: int,
        image_only_indicator: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x (B·T, C, H, W)``, ``temb (B, T|1, E)`` or None -> ``(B·T, C_out, H, W)``."""
        x = self.spatial_res_block(x, temb)
        spatial = x.unflatten(0, (-1, num_frames))  # (B, T, C, H, W)
        temporal = self.temporal_res_block(spatial.transpose(1, 2), temb)  # (B, C, T, H, W)
        out = self.time_mixer(spatial, temporal.transpose(1, 2), image_only_indicator)  # (B, T, C, H, W)
        return out.flatten(0, 1)
