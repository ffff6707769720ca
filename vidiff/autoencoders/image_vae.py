"""SD's image VAE (Rombach et al. 2022) decoding video frame by frame: the autoencoder SV3D ships.

Same encoder as SVD's VAE; the decoder has no temporal layers, so chunking over frames is exact and only
bounds memory. State-dict keys follow diffusers' ``AutoencoderKL`` (``post_quant_conv`` optional).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vidiff.autoencoders.blocks import GROUPS, ResnetBlock2D, Upsample
from vidiff.autoencoders.kl import MidBlock
from vidiff.autoencoders.vae import KLVideoAutoencoder, VAEConfig

_IGNORED = {"sample_size", "down_block_types", "up_block_types", "act_fn", "norm_num_groups", "shift_factor",
            "latents_mean", "latents_std", "mid_block_add_attention", "use_quant_conv"}


@dataclass(frozen=True)
class ImageVAEConfig(VAEConfig):
    """``VAEConfig`` plus whether a 1x1 ``post_quant_conv`` precedes the decoder (SD: yes; SV3D: no)."""

    use_post_quant_conv: bool = True

    @classmethod
    def from_diffusers(cls, config: dict[str, Any]) -> ImageVAEConfig:
        """From an ``AutoencoderKL`` ``config.json`` (bookkeeping keys ignored, unknown keys rejected)."""
        if config.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
            raise ValueError(f"vae is a {config['_class_name']}, not an AutoencoderKL")
        for key in ("down_block_types", "up_block_types"):
            kinds = set(config.get(key) or ())
            if kinds - {"DownEncoderBlock2D", "UpDecoderBlock2D"}:
                raise ValueError(f"vae {key} must be SD's encoder/decoder blocks, got {config[key]}")
        if config.get("use_quant_conv", True) is False:
            raise ValueError("vae use_quant_conv=False is not supported (SD and SV3D both have quant_conv)")
        return cls._from_known_keys(config, _IGNORED)

    def to_diffusers(self) -> dict[str, Any]:
        d = super().to_diffusers()
        d["_class_name"] = "AutoencoderKL"
        d["up_block_types"] = ["UpDecoderBlock2D"] * len(self.block_out_channels)
        return d


class _UpBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, layers: int, upsample: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(in_ch if i == 0 else out_ch, out_ch) for i in range(layers)])
        self.upsamplers = nn.ModuleList([Upsample(out_ch)]) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        return x if self.upsamplers is None else self.upsamplers[0](x)


class ImageDecoder(nn.Module):
    """SD's decoder: latents ``(N, C, h, w)`` -> pixels ``(N, 3, h·f, w·f)``, each image on its own."""

    def __init__(self, latent_channels: int, out_channels: int, block_out_channels: tuple[int, ...],
                 layers_per_block: int) -> None:
        super().__init__()
        rev = list(reversed(block_out_channels))
        self.conv_in = nn.Conv2d(latent_channels, rev[0], 3, padding=1)
        self.mid_block = MidBlock(rev[0])
        self.up_blocks = nn.ModuleList(
            _UpBlock(rev[max(i - 1, 0)], rev[i], layers_per_block + 1, upsample=i < len(rev) - 1)
            for i in range(len(rev))
        )
        self.conv_norm_out = nn.GroupNorm(GROUPS, block_out_channels[0], eps=1e-6)
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            h = block(h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))


class AutoencoderKL(KLVideoAutoencoder):
    """SD's image VAE applied per frame (state-dict keys as diffusers' ``AutoencoderKL``)."""

    def __init__(self, config: ImageVAEConfig | None = None) -> None:
        super().__init__(config or ImageVAEConfig())
        cfg = self.config
        c = cfg.latent_channels
        self.post_quant_conv = nn.Conv2d(c, c, 1) if cfg.use_post_quant_conv else None
        self.decoder = ImageDecoder(c, cfg.out_channels, cfg.block_out_channels, cfg.layers_per_block)

    def _decode_frames(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z if self.post_quant_conv is None else self.post_quant_conv(z))
