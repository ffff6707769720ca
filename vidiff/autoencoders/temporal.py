"""SVD's temporal VAE decoder (Blattmann et al. 2023, Sec. 3): the SD decoder with a temporal resnet in
every block, blended by a learned factor, and a final (3, 1, 1) convolution across frames.

Frames are folded into the batch, ``(B·T, C, h, w)``; every temporal layer sees the ``T`` frames of the
call, so decoding in chunks of frames changes the result at chunk edges (zero padding in time).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vidiff.autoencoders.blocks import GROUPS, SelfAttention2D, SpatioTemporalResBlock, Upsample


class _MidBlock(nn.Module):
    """``layers`` spatio-temporal resnets with one attention after the first (as SVD's checkpoints hold).

    With a single resnet the attention's weights exist but are never applied: the reference pairs each
    attention with a following resnet.
    """

    def __init__(self, ch: int, layers: int) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([SpatioTemporalResBlock(ch, ch) for _ in range(layers)])
        self.attentions = nn.ModuleList([SelfAttention2D(ch)])

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        x = self.resnets[0](x, num_frames)
        for attn, resnet in zip(self.attentions, self.resnets[1:]):
            x = resnet(attn(x), num_frames)
        return x


class _UpBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, layers: int, upsample: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            [SpatioTemporalResBlock(in_ch if i == 0 else out_ch, out_ch) for i in range(layers)]
        )
        self.upsamplers = nn.ModuleList([Upsample(out_ch)]) if upsample else None

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x, num_frames)
        return x if self.upsamplers is None else self.upsamplers[0](x)


class TemporalDecoder(nn.Module):
    """Latents ``(B·T, C, h, w)`` -> pixels ``(B·T, 3, h·f, w·f)`` for clips of ``num_frames`` frames."""

    def __init__(self, latent_channels: int, out_channels: int, block_out_channels: tuple[int, ...],
                 layers_per_block: int) -> None:
        super().__init__()
        rev = list(reversed(block_out_channels))
        self.conv_in = nn.Conv2d(latent_channels, rev[0], 3, padding=1)
        self.mid_block = _MidBlock(rev[0], layers_per_block)
        self.up_blocks = nn.ModuleList(
            _UpBlock(rev[max(i - 1, 0)], rev[i], layers_per_block + 1, upsample=i < len(rev) - 1)
            for i in range(len(rev))
        )
        self.conv_norm_out = nn.GroupNorm(GROUPS, block_out_channels[0], eps=1e-6)
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, 3, padding=1)
        self.time_conv_out = nn.Conv3d(out_channels, out_channels, (3, 1, 1), padding=(1, 0, 0))

    @property
    def temporal_receptive_field(self) -> int:
        """Frames of context on each side that influence an output frame: one per (3, 1, 1) conv."""
        resnets = len(self.mid_block.resnets) + sum(len(b.resnets) for b in self.up_blocks)
        return 2 * resnets + 1

    def forward(self, z: torch.Tensor, num_frames: int) -> torch.Tensor:
        h = self.conv_in(z)
        h = self.mid_block(h, num_frames)
        for block in self.up_blocks:
            h = block(h, num_frames)
        h = self.conv_out(F.silu(self.conv_norm_out(h)))  # (B·T, 3, H, W)
        bt, c, height, width = h.shape
        h = h.reshape(bt // num_frames, num_frames, c, height, width).transpose(1, 2)  # (B, 3, T, H, W)
        return self.time_conv_out(h).transpose(1, 2).reshape(bt, c, height, width)
