"""Wan's causal 3D VAE (Wan team 2025, Sec. 3.1), versions 2.1 (8×8×4, 16 channels) and 2.2 (16×16×4, 48).

Every temporal convolution is causal (padded with zeros in front only), so frame ``k`` of the output depends
on input frames ``≤ k`` and a video can be processed in chunks that carry the last frames each causal layer
saw (a ``stream``, Wan's "feature cache"): memory is bounded by one chunk whatever the clip length. The
first frame is compressed alone (an image), then every 4 frames become one latent frame, so ``1 + 4k`` frames
give ``1 + k`` latents. The temporal down/upsamplers treat frame 0 apart, exactly as the reference chunked
pass does; with or without chunking the result is the same. Parameter names match diffusers'
``AutoencoderKLWan``. Public layout ``(B, T, C, H, W)``; pixels in [−1, 1].
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

from vidiff.autoencoders.kl import DiagonalGaussian
from vidiff.autoencoders.wan_vae_blocks import (
    CausalConv3d,
    Decoder3d,
    Encoder3d,
    Stream,
    patchify,
    unpatchify,
)
from vidiff.utils import dataclass_from_config

__all__ = ["WAN_VAE_PRESETS", "WanVAE", "WanVAEConfig"]

_MEAN_21 = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517,
            -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
_STD_21 = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579,
           1.6382, 1.1253, 2.8251, 1.9160)
_BOOKKEEPING = frozenset({"_class_name", "_diffusers_version", "_name_or_path", "clip_output"})


@dataclass(frozen=True)
class WanVAEConfig:
    """Architecture of :class:`WanVAE` (defaults: Wan 2.1's; keys as diffusers' ``config.json``).

    ``is_residual``, ``patch_size`` 2 and ``decoder_base_dim`` describe Wan 2.2's VAE: pixel-unshuffled
    input, residual down/up blocks with parameter-free average/duplicate shortcuts.
    """

    base_dim: int = 96
    decoder_base_dim: int | None = None
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = ()
    temperal_downsample: tuple[bool, ...] = (False, True, True)
    dropout: float = 0.0
    latents_mean: tuple[float, ...] = _MEAN_21
    latents_std: tuple[float, ...] = _STD_21
    is_residual: bool = False
    in_channels: int = 3
    out_channels: int = 3
    patch_size: int | None = None
    scale_factor_temporal: int | None = 4
    scale_factor_spatial: int | None = 8

    def __post_init__(self) -> None:
        for name in ("dim_mult", "attn_scales", "temperal_downsample", "latents_mean", "latents_std"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if len(self.temperal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(f"WanVAEConfig.temperal_downsample needs {len(self.dim_mult) - 1} entries (one per "
                             f"downsampling), got {self.temperal_downsample!r}")
        if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
            raise ValueError(f"WanVAEConfig.latents_mean/std need z_dim={self.z_dim} entries, got "
                             f"{len(self.latents_mean)} and {len(self.latents_std)}")
        for name, value in (("scale_factor_spatial", self.spatial_factor), ("scale_factor_temporal",
                                                                            self.temporal_factor)):
            if getattr(self, name) not in (None, value):
                raise ValueError(f"WanVAEConfig.{name}={getattr(self, name)} disagrees with the layers ({value})")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WanVAEConfig:
        return dataclass_from_config(cls, d, _BOOKKEEPING, "AutoencoderKLWan")

    def replace(self, **changes: Any) -> WanVAEConfig:
        return replace(self, **changes)

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(self.temperal_downsample)

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.dim_mult) - 1) * (self.patch_size or 1)


_TINY = {"base_dim": 8, "z_dim": 4, "dim_mult": (1, 2, 2), "num_res_blocks": 1, "temperal_downsample": (True, True),
         "latents_mean": (0.1, -0.2, 0.3, 0.0), "latents_std": (1.5, 0.7, 1.1, 2.0), "scale_factor_spatial": 4}
WAN_VAE_PRESETS: dict[str, WanVAEConfig] = {
    "wan2.1": WanVAEConfig(),
    "wan2.2": WanVAEConfig(
        base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True, in_channels=12, out_channels=12,
        patch_size=2, scale_factor_spatial=16,
        latents_mean=(-0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542,
                      0.2813, 0.0891, 0.157, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665,
                      -0.2108, -0.2158, 0.2502, -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799,
                      -0.123, -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.052, 0.3748, 0.0152, 0.1957,
                      0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667),
        latents_std=(0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.499, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894,
                     1.0901, 0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146,
                     0.8986, 0.5659, 0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709,
                     0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.06, 0.3943, 0.5537,
                     0.5444, 0.4089, 0.7468, 0.7744)),
    "tiny-2.1": WanVAEConfig(**_TINY),
    "tiny-2.2": WanVAEConfig(**{**_TINY, "decoder_base_dim": 12, "is_residual": True, "in_channels": 12,
                                "out_channels": 12, "patch_size": 2, "scale_factor_spatial": 8}),
}


class WanVAE(nn.Module):
    """Wan's video VAE: ``encode (B, T, 3, H, W) -> posterior``, ``decode (B, t, z, h, w) -> (B, T, 3, H, W)``."""

    def __init__(self, config: WanVAEConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or WanVAEConfig()
        self.encoder = Encoder3d(cfg.in_channels, cfg.base_dim, 2 * cfg.z_dim, cfg.dim_mult, cfg.num_res_blocks,
                                 cfg.attn_scales, cfg.temperal_downsample, cfg.is_residual)
        self.quant_conv = CausalConv3d(2 * cfg.z_dim, 2 * cfg.z_dim, 1)
        self.post_quant_conv = CausalConv3d(cfg.z_dim, cfg.z_dim, 1)
        self.decoder = Decoder3d(cfg.decoder_base_dim or cfg.base_dim, cfg.z_dim, cfg.dim_mult, cfg.num_res_blocks,
                                 cfg.attn_scales, cfg.temperal_downsample[::-1], cfg.out_channels, cfg.is_residual)

    def _check_frames(self, frames: int) -> None:
        f = self.config.temporal_factor
        if (frames - 1) % f:
            raise ValueError(f"Wan's VAE takes 1 + {f}k frames (1, {1 + f}, {1 + 2 * f}, ...), got {frames}")

    def encode(self, x: torch.Tensor, *, chunked: bool = True) -> DiagonalGaussian:
        """``x (B, T, C, H, W)`` in [−1, 1], ``T = 1 + 4k`` -> posterior over ``(B, 2z, 1 + k, h, w)`` moments
        (channel-first, as diffusers' ``latent_dist``). ``chunked``: frame 0, then 4 frames at a time."""
        self._check_frames(x.shape[1])
        x = patchify(x.transpose(1, 2), self.config.patch_size)  # (B, C', T, H', W')
        f = self.config.temporal_factor
        if chunked:
            stream = Stream()
            chunks = [x[:, :, :1], *(x[:, :, 1:].split(f, dim=2) if x.shape[2] > 1 else ())]  # a still: 1 chunk
            h = torch.cat([self.encoder(c, stream) for c in chunks], dim=2)
        else:
            h = self.encoder(x, None)
        return DiagonalGaussian(self.quant_conv(h))

    def decode(self, z: torch.Tensor, *, chunk_frames: int | None = 1) -> torch.Tensor:
        """``z (B, t, z_dim, h, w)`` (unnormalised) -> ``(B, 1 + 4(t − 1), C, H, W)`` clamped to [−1, 1].

        ``chunk_frames`` latent frames are decoded at a time (1: the reference; None: all at once). Exact.
        """
        z = self.post_quant_conv(z.transpose(1, 2))
        if chunk_frames is None:
            out = self.decoder(z, None)
        else:
            if chunk_frames < 1:
                raise ValueError(f"chunk_frames must be >= 1 or None, got {chunk_frames}")
            stream = Stream()
            out = torch.cat([self.decoder(c, stream) for c in z.split(chunk_frames, dim=2)], dim=2)
        out = unpatchify(out, self.config.patch_size).clamp(-1.0, 1.0)
        return out.transpose(1, 2)

    # --- normalised latents (what the transformer sees) -------------------------------------------------

    def _stats(self, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, 1, -1, 1, 1)
        mean = torch.tensor(self.config.latents_mean, device=ref.device, dtype=ref.dtype).reshape(shape)
        std = torch.tensor(self.config.latents_std, device=ref.device, dtype=ref.dtype).reshape(shape)
        return mean, std

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Unnormalised latents ``(B, t, z, h, w)`` -> the transformer's ``(z − μ)/σ`` per channel."""
        mean, std = self._stats(z)
        return (z - mean) / std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(z)
        return z * std + mean

    def encode_latents(self, x: torch.Tensor, generator: torch.Generator | None = None,
                       sample: bool = False) -> torch.Tensor:
        """Pixels ``(B, T, C, H, W)`` -> normalised latents ``(B, t, z, h, w)`` (the mode, or a sample)."""
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample else posterior.mode()
        return self.normalize(z.transpose(1, 2))

    def decode_latents(self, z: torch.Tensor, chunk_frames: int | None = 1) -> torch.Tensor:
        return self.decode(self.denormalize(z), chunk_frames=chunk_frames)

    @property
    def dtype(self) -> torch.dtype:
        return self.quant_conv.weight.dtype

