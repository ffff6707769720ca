"""The KL-regularised image encoder of latent diffusion (Rombach et al. 2022) and its posterior.

The encoder maps ``(N, 3, H, W)`` pixels in [-1, 1] to the mean and log-variance of a diagonal Gaussian
over ``(N, C, H/f, W/f)`` latents (Kingma & Welling 2014); SVD conditions on the posterior's mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vidiff.autoencoders.blocks import GROUPS, Downsample, ResnetBlock2D, SelfAttention2D
from vidiff.utils import randn


class DiagonalGaussian:
    """``N(mean, exp(logvar))`` from encoder moments ``(N, 2C, h, w)`` split on the channel axis."""

    def __init__(self, moments: torch.Tensor) -> None:
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def mode(self) -> torch.Tensor:
        return self.mean

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """``mean + std·ε`` (the reparameterisation trick, Kingma & Welling 2014, eq. 10)."""
        # on the generator's device, then moved: a CPU generator serves a CUDA VAE (diffusers' randn_tensor)
        eps = randn(self.mean.shape, generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def kl(self) -> torch.Tensor:
        """KL(q ‖ N(0, I)) per sample, summed over latent dimensions (Kingma & Welling 2014, App. B)."""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar).sum(dim=(1, 2, 3))


class _DownBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, layers: int, downsample: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(in_ch if i == 0 else out_ch, out_ch) for i in range(layers)])
        self.downsamplers = nn.ModuleList([Downsample(out_ch)]) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        return x if self.downsamplers is None else self.downsamplers[0](x)


class MidBlock(nn.Module):
    """resnet -> attention -> resnet at the lowest resolution."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(ch, ch), ResnetBlock2D(ch, ch)])
        self.attentions = nn.ModuleList([SelfAttention2D(ch)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


class Encoder(nn.Module):
    """SD's VAE encoder: ``(N, 3, H, W)`` -> moments ``(N, 2·latent, H/2^(L−1), W/2^(L−1))``."""

    def __init__(self, in_channels: int, latent_channels: int, block_out_channels: tuple[int, ...],
                 layers_per_block: int) -> None:
        super().__init__()
        ch = block_out_channels
        self.conv_in = nn.Conv2d(in_channels, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            _DownBlock(ch[max(i - 1, 0)], ch[i], layers_per_block, downsample=i < len(ch) - 1)
            for i in range(len(ch))
        )
        self.mid_block = MidBlock(ch[-1])
        self.conv_norm_out = nn.GroupNorm(GROUPS, ch[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(ch[-1], 2 * latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for block in self.down_blocks:
            h = block(h)
        h = self.mid_block(h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))
