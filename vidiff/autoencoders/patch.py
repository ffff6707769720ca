"""A parameter-free "autoencoder" that folds ``p × p`` pixel patches into channels (space-to-depth).

``encode`` is ``pixel_unshuffle`` (Shi et al. 2016, "Real-Time Single Image and Video Super-Resolution
Using an Efficient Sub-Pixel Convolutional Neural Network"): ``(N, 3, H, W) -> (N, 3·p², H/p, W/p)``;
``decode`` is its exact inverse, ``pixel_shuffle``. A diffusion model over these "latents" is a pixel-space
model whose UNet runs at ``1/p`` of the resolution (as the patchified inputs of Hoogeboom et al. 2023,
"simple diffusion"). It has the interface of :class:`~vidiff.autoencoders.AutoencoderKLTemporal`, so
pipelines and training treat both alike.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PatchAutoencoder", "PatchConfig", "PatchPosterior"]

CLASS_NAME = "PatchAutoencoder"


@dataclass(frozen=True)
class PatchConfig:
    """``patch_size`` p (the downsampling factor), pixel ``in_channels``, and the latent ``scaling_factor``."""

    patch_size: int = 4
    in_channels: int = 3
    scaling_factor: float = 1.0
    class_name: ClassVar[str] = CLASS_NAME  # the module's ``_class_name`` in config.json

    def __post_init__(self) -> None:
        for name in ("patch_size", "in_channels"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"PatchConfig.{name} must be a positive int, got {v!r}")
        if not self.scaling_factor > 0:
            raise ValueError(f"PatchConfig.scaling_factor must be positive, got {self.scaling_factor!r}")

    @property
    def downsample_factor(self) -> int:
        return self.patch_size

    @property
    def latent_channels(self) -> int:
        return self.in_channels * self.patch_size ** 2

    @property
    def condition_channels(self) -> int:
        """Channels of an encoded conditioning image (the UNet's concat input): the latent channels."""
        return self.latent_channels

    @classmethod
    def from_diffusers(cls, config: dict[str, Any]) -> PatchConfig:
        """From the ``config.json`` written by :meth:`to_diffusers` (keys starting with ``_`` ignored)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(k for k in config if not k.startswith("_") and k not in known)
        if unknown:
            raise ValueError(f"unknown {cls.class_name} config keys {unknown}")
        return cls(**{k: config[k] for k in known if k in config})

    def to_diffusers(self) -> dict[str, Any]:
        return {"_class_name": self.class_name, **asdict(self)}


class PatchPosterior:
    """A point mass at the patchified pixels: ``mode()`` and ``sample()`` both return them."""

    def __init__(self, latents: torch.Tensor) -> None:
        self.mean = latents

    def mode(self) -> torch.Tensor:
        return self.mean

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.mean


class PatchAutoencoder(nn.Module):
    """Space-to-depth encoder and depth-to-space decoder; no parameters, exact inverses of each other."""

    def __init__(self, config: PatchConfig | None = None) -> None:
        super().__init__()
        self.config = config or PatchConfig()

    @property
    def scaling_factor(self) -> float:
        return float(self.config.scaling_factor)

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def encode(self, pixels: torch.Tensor, *, tiled: bool = False) -> PatchPosterior:
        """``(N, C, H, W)`` pixels -> posterior over unscaled ``(N, C·p², H/p, W/p)`` latents."""
        p = self.config.patch_size
        if pixels.ndim != 4 or pixels.shape[1] != self.config.in_channels:
            raise ValueError(f"pixels must be (N, {self.config.in_channels}, H, W), got {tuple(pixels.shape)}")
        if pixels.shape[-2] % p or pixels.shape[-1] % p:
            raise ValueError(f"height and width must be multiples of the patch size {p}, "
                             f"got {tuple(pixels.shape[-2:])}")
        return PatchPosterior(F.pixel_unshuffle(pixels, p))

    def encode_latents(self, pixels: torch.Tensor, *, sample: bool = False,
                       generator: torch.Generator | None = None, tiled: bool = False) -> torch.Tensor:
        """Scaled latents for diffusion: patchified pixels × ``scaling_factor``."""
        return self.encode(pixels).mode() * self.scaling_factor

    def decode(self, z: torch.Tensor, chunk_size: int | None = None, overlap: int = 0, *, tiled: bool = False,
               progress: bool = False) -> torch.Tensor:
        """Unscaled ``(B, T, C·p², h, w)`` latents -> ``(B, T, C, h·p, w·p)`` pixels (chunking is moot)."""
        if z.ndim != 5:
            raise ValueError(f"z must be (B, T, C, h, w), got {tuple(z.shape)}")
        b, t = z.shape[:2]
        return F.pixel_shuffle(z.flatten(0, 1), self.config.patch_size).unflatten(0, (b, t))

    def decode_latents(self, z: torch.Tensor, chunk_size: int | None = None, overlap: int = 0, *,
                       tiled: bool = False, progress: bool = False) -> torch.Tensor:
        """``decode(z / scaling_factor)`` for latents produced by diffusion."""
        return self.decode(z / self.scaling_factor, chunk_size, overlap, tiled=tiled, progress=progress)
