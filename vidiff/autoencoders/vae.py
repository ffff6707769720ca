"""SVD's video autoencoder: the SD KL encoder with SVD's temporal decoder, plus chunked and tiled decoding.

Latent layout: the encoder gives unscaled latents (SVD concatenates those to the UNet input); the
diffusion model works on latents multiplied by ``scaling_factor`` = 0.18215 (Rombach et al. 2022, Sec. 4.3).
``encode_latents`` / ``decode_latents`` apply that factor; ``encode`` / ``decode`` do not.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from vidiff.autoencoders.kl import DiagonalGaussian, Encoder
from vidiff.autoencoders.temporal import TemporalDecoder

_IGNORED_KEYS = {"sample_size", "down_block_types", "act_fn", "norm_num_groups"}


@dataclass(frozen=True)
class VAEConfig:
    """Architecture of the temporal-decoder VAE (defaults: SVD's; keys as diffusers' ``config.json``)."""

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    scaling_factor: float = 0.18215
    force_upcast: bool = True
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "block_out_channels", tuple(int(c) for c in self.block_out_channels))
        for name in ("in_channels", "out_channels", "latent_channels", "layers_per_block"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"VAEConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        if not self.block_out_channels or any(c % 32 for c in self.block_out_channels):
            raise ValueError(f"VAEConfig.block_out_channels must be multiples of 32 (GroupNorm groups), "
                             f"got {self.block_out_channels}")
        if not self.scaling_factor > 0:
            raise ValueError(f"VAEConfig.scaling_factor must be positive, got {self.scaling_factor!r}")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def from_diffusers(cls, config: dict[str, Any]) -> VAEConfig:
        """From an ``AutoencoderKLTemporalDecoder`` ``config.json`` (bookkeeping keys ignored)."""
        if config.get("_class_name", "AutoencoderKLTemporalDecoder") != "AutoencoderKLTemporalDecoder":
            raise ValueError(f"vae is a {config['_class_name']}, not SVD's AutoencoderKLTemporalDecoder")
        blocks = config.get("down_block_types")
        if blocks is not None and any(b != "DownEncoderBlock2D" for b in blocks):
            raise ValueError(f"vae down_block_types must all be DownEncoderBlock2D, got {blocks}")
        return cls._from_known_keys(config, _IGNORED_KEYS)

    @classmethod
    def _from_known_keys(cls, config: dict[str, Any], ignored: set[str]) -> Any:
        """Build from the dataclass's own keys; bookkeeping (``_*``) and ``ignored`` keys are dropped and any
        other key is an error naming it."""
        known = {f.name for f in fields(cls)} - {"extra"}
        unknown = sorted(k for k in config if not k.startswith("_") and k not in known | ignored)
        if unknown:
            raise ValueError(f"unknown vae config key(s): {', '.join(unknown)}")
        return cls(**{k: v for k, v in config.items() if k in known})

    def to_diffusers(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "extra"}
        d["block_out_channels"] = list(self.block_out_channels)
        d["down_block_types"] = ["DownEncoderBlock2D"] * len(self.block_out_channels)
        return d


VAE_PRESETS: dict[str, VAEConfig] = {
    "svd": VAEConfig(),
    "tiny": VAEConfig(block_out_channels=(32, 64), layers_per_block=1),
}


def _ramp_weights(size: int, start: int, stop: int, overlap: int, device: torch.device) -> torch.Tensor:
    """1-D blending weights of a tile ``[start, stop)`` of ``size``: linear ramps over shared edges."""
    w = torch.ones(stop - start, device=device)
    if overlap > 0:
        ramp = torch.arange(1, overlap + 1, device=device, dtype=torch.float32) / (overlap + 1)
        if start > 0:
            w[:overlap] = torch.minimum(w[:overlap], ramp[: stop - start])
        if stop < size:
            w[-overlap:] = torch.minimum(w[-overlap:], ramp.flip(0)[-(stop - start):])
    return w


def _tiles(size: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    if size <= tile:
        return [(0, size)]
    stride = tile - overlap
    starts = [*list(range(0, size - tile, stride)), size - tile]
    return [(s, s + tile) for s in starts]


class KLVideoAutoencoder(nn.Module):
    """A KL encoder with a video decoder: shared encoding, latent scaling, chunked and tiled decoding.

    Subclasses build ``self.decoder`` and implement :meth:`_decode_frames` for one clip.
    """

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        cfg = self.config = config
        self.encoder = Encoder(cfg.in_channels, cfg.latent_channels, cfg.block_out_channels, cfg.layers_per_block)
        self.quant_conv = nn.Conv2d(2 * cfg.latent_channels, 2 * cfg.latent_channels, 1)
        self.tile_latent_size = 64  # latent pixels per tile side when tiling (512 px for SD's f=8)
        self.tile_latent_overlap = 8

    def _decode_frames(self, z: torch.Tensor) -> torch.Tensor:
        """One clip's latents ``(T, C, h, w)`` -> pixels ``(T, 3, H, W)`` in one decoder call."""
        raise NotImplementedError

    @property
    def scaling_factor(self) -> float:
        return float(self.config.scaling_factor)

    @property
    def dtype(self) -> torch.dtype:
        return self.quant_conv.weight.dtype

    # --- encoding ------------------------------------------------------------------------------------

    def encode(self, pixels: torch.Tensor, *, tiled: bool = False) -> DiagonalGaussian:
        """``(N, 3, H, W)`` in [-1, 1] -> posterior over unscaled latents ``(N, C, H/f, W/f)``."""
        if pixels.ndim != 4:
            raise ValueError(f"encode expects (N, 3, H, W) pixels, got shape {tuple(pixels.shape)}")
        x = pixels.to(self.dtype)
        if tiled:
            f = self.config.downsample_factor
            moments = self._tiled(lambda t: self.quant_conv(self.encoder(t)), x, self.tile_latent_size * f,
                                  self.tile_latent_overlap * f, 1 / f)
        else:
            moments = self.quant_conv(self.encoder(x))
        return DiagonalGaussian(moments)

    def encode_latents(self, pixels: torch.Tensor, *, sample: bool = False,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """Scaled latents for diffusion: posterior mode (or a sample) × ``scaling_factor``."""
        posterior = self.encode(pixels)
        z = posterior.sample(generator) if sample else posterior.mode()
        return z * self.scaling_factor

    # --- decoding ------------------------------------------------------------------------------------

    def decode(self, z: torch.Tensor, chunk_size: int | None = None, overlap: int = 0, *, tiled: bool = False,
               progress: bool = False) -> torch.Tensor:
        """Unscaled latents ``(B, T, C, h, w)`` -> pixels ``(B, T, 3, H, W)`` in about [-1, 1].

        Each video is decoded in chunks of ``chunk_size`` frames (None: all at once), each call seeing
        only its chunk, as diffusers' SVD pipeline does. ``overlap`` > 0 decodes that many extra frames of
        context on each side of a chunk and discards them, so chunk edges match the whole-clip decode
        more closely (off by default, for parity with diffusers).
        """
        if z.ndim != 5:
            raise ValueError(f"decode expects (B, T, C, h, w) latents, got shape {tuple(z.shape)}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
        if overlap < 0:
            raise ValueError(f"overlap must be >= 0, got {overlap}")
        b, t = z.shape[:2]
        step = t if chunk_size is None else min(chunk_size, t)
        spans = [(s, min(s + step, t)) for s in range(0, t, step)]
        out = []
        bar = tqdm(total=b * len(spans), desc="decoding", disable=not progress, leave=False)
        for video in z.to(self.dtype):
            frames = []
            for s, e in spans:
                lo, hi = max(0, s - overlap), min(t, e + overlap)
                decoded = self._decode_clip(video[lo:hi], tiled)
                frames.append(decoded[s - lo: s - lo + (e - s)])
                bar.update(1)
            out.append(torch.cat(frames))
        bar.close()
        return torch.stack(out)

    def decode_latents(self, z: torch.Tensor, chunk_size: int | None = None, overlap: int = 0, *,
                       tiled: bool = False, progress: bool = False) -> torch.Tensor:
        """``decode(z / scaling_factor, ...)`` for latents produced by diffusion."""
        return self.decode(z / self.scaling_factor, chunk_size, overlap, tiled=tiled, progress=progress)

    def _decode_clip(self, z: torch.Tensor, tiled: bool) -> torch.Tensor:
        """One clip ``(T, C, h, w)`` -> ``(T, 3, H, W)``, all frames in one decoder call."""
        if not tiled:
            return self._decode_frames(z)
        f = self.config.downsample_factor
        return self._tiled(self._decode_frames, z, self.tile_latent_size, self.tile_latent_overlap, f)

    @staticmethod
    def _tiled(fn: Any, x: torch.Tensor, tile: int, overlap: int, scale: float) -> torch.Tensor:
        """Apply ``fn`` to overlapping spatial tiles of ``x`` and blend the outputs with linear ramps.

        ``scale`` is the output/input size ratio of ``fn`` (8 for decoding, 1/8 for encoding). Exact when
        one tile covers the input; otherwise close, since norms and attention see only their tile.
        """
        h, w = x.shape[-2:]
        rows, cols = _tiles(h, tile, overlap), _tiles(w, tile, overlap)
        if len(rows) == len(cols) == 1:
            return fn(x)
        out = weight = None
        for r0, r1 in rows:
            for c0, c1 in cols:
                y = fn(x[..., r0:r1, c0:c1])
                R0, R1, C0, C1 = (round(v * scale) for v in (r0, r1, c0, c1))
                if out is None:
                    out = y.new_zeros(*y.shape[:-2], round(h * scale), round(w * scale))
                    weight = torch.zeros(out.shape[-2:], device=y.device)
                o = round(overlap * scale)
                wr = _ramp_weights(out.shape[-2], R0, R1, o, y.device)
                wc = _ramp_weights(out.shape[-1], C0, C1, o, y.device)
                w2 = wr[:, None] * wc[None]
                out[..., R0:R1, C0:C1] += y * w2.to(y.dtype)
                weight[R0:R1, C0:C1] += w2
        return out / weight.to(out.dtype)


class AutoencoderKLTemporal(KLVideoAutoencoder):
    """SVD's VAE (state-dict keys as diffusers' ``AutoencoderKLTemporalDecoder``)."""

    def __init__(self, config: VAEConfig | None = None) -> None:
        super().__init__(config or VAEConfig())
        cfg = self.config
        self.decoder = TemporalDecoder(cfg.latent_channels, cfg.out_channels, cfg.block_out_channels,
                                       cfg.layers_per_block)

    def _decode_frames(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z, num_frames=z.shape[0])
