"""Scalar and camera embedders, and the noise augmentation of the conditioning image.

SVD's micro-conditioning (Blattmann et al. 2023, Sec. 3/4): the frame rate (as fps − 1), the motion
bucket id and the noise-augmentation strength are each embedded with a 256-d sinusoid and concatenated
into the UNet's ``vector`` input (sgm's ``ConcatTimestepEmbedderND``; diffusers' ``add_time_proj``).
SV3D_p adds per-frame camera angles (elevation → polar, azimuth), each with a 512-d sinusoid.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from vidiff.utils import Generators, randn, timestep_embedding

# The scalars each model family embeds, in checkpoint order; "fps" is embedded as fps − 1 (sgm's fps_id).
SVD_SCALARS = ("fps", "motion_bucket_id", "noise_aug_strength")
SV3D_U_SCALARS = ("noise_aug_strength",)


def scalar_values(values: Mapping[str, float | Tensor], keys: Sequence[str], batch: int,
                  device: torch.device | str | None = None) -> Tensor:
    """The raw scalars ``(B, len(keys))`` that get embedded; ``fps`` becomes ``fps − 1``."""
    cols = []
    for key in keys:
        if key not in values:
            raise KeyError(f"conditioning value {key!r} is required by this model (needs {', '.join(keys)})")
        v = torch.as_tensor(values[key], dtype=torch.float32, device=device)
        v = v.expand(batch) if v.ndim == 0 else v.reshape(batch)
        cols.append(v - 1 if key == "fps" else v)
    return torch.stack(cols, dim=1)


def embed_scalars(raw: Tensor, dim: int = 256) -> Tensor:
    """``(B, K)`` scalars -> ``(B, K·dim)``: a sinusoid per scalar, concatenated in order."""
    b, k = raw.shape
    return timestep_embedding(raw.reshape(-1), dim).reshape(b, k * dim)


def sv3d_camera_vector(elevations_deg: Tensor, azimuths_deg: Tensor, noise_aug_strength: float | Tensor,
                       *, dim_aug: int = 256, dim_angle: int = 512) -> Tensor:
    """SV3D_p's per-frame vector ``(B, T, 256 + 512 + 512)``: [cond_aug, polar, azimuth] sinusoids.

    ``polar = rad(90° − elevation)``; ``azimuth = rad((a − a_last) mod 360°)``, relative to the last frame
    (which sgm renders at the input view).
    """
    if elevations_deg.shape != azimuths_deg.shape or elevations_deg.ndim != 2:
        raise ValueError("elevations and azimuths must both be (B, T) tensors of degrees")
    b, t = elevations_deg.shape
    polar = torch.deg2rad(90.0 - elevations_deg.double())
    azim = torch.deg2rad(torch.remainder(azimuths_deg.double() - azimuths_deg.double()[:, -1:], 360.0))
    aug = torch.as_tensor(noise_aug_strength, dtype=torch.float64).expand(b, t)
    parts = [timestep_embedding(aug.reshape(-1), dim_aug), timestep_embedding(polar.reshape(-1), dim_angle),
             timestep_embedding(azim.reshape(-1), dim_angle)]
    return torch.cat(parts, dim=-1).reshape(b, t, -1)


def sv3d_default_orbit(num_frames: int = 21, elevation_deg: float = 10.0) -> tuple[Tensor, Tensor]:
    """sgm's default SV3D_p orbit: constant elevation, azimuths ``linspace(0, 360, T+1)[1:] mod 360``."""
    az = torch.linspace(0, 360, num_frames + 1, dtype=torch.float64)[1:] % 360
    return torch.full((1, num_frames), elevation_deg, dtype=torch.float64), az[None]


def noise_augment(image: Tensor, strength: float | Tensor, generator: Generators = None, *,
                  noise: Tensor | None = None) -> Tensor:
    """``image + strength·ε``, ε ~ N(0, I) drawn on the generator's device in the image's dtype (a list of
    generators: one per image, see :func:`vidiff.utils.randn`), or the given ``noise`` (training's
    per-sample draws). ``strength`` is a number or one per image ``(B,)``.

    SVD conditions on a noisy copy of the input (Blattmann et al. 2023, Sec. 4.1: "noise augmentation");
    the draw matches diffusers' ``randn_tensor`` so seeds reproduce its videos.
    """
    if not math.isfinite(float(torch.as_tensor(strength).max())):
        raise ValueError(f"noise_aug_strength must be finite, got {strength}")
    if noise is None:
        noise = randn(image.shape, generator, device=image.device, dtype=image.dtype)
    elif noise.shape != image.shape:
        raise ValueError(f"noise must have the image's shape {tuple(image.shape)}, got {tuple(noise.shape)}")
    noise = noise.to(image.device, image.dtype)
    s = torch.as_tensor(strength, dtype=image.dtype, device=image.device)
    if s.ndim == 1:
        s = s.view(-1, *([1] * (image.ndim - 1)))
    return image + s * noise
