"""SV3D orbits (Voleti et al. 2024): novel views around an object from one image, on the image-to-video pipeline.

SV3D is SVD's video UNet fine-tuned to render an orbit of ``T = 21`` views at 576x576 (the paper's Sec. 3).
SV3D_u is conditioned like SVD minus fps and motion bucket (its vector is the 256-d sinusoid of
``cond_aug``); SV3D_p adds the camera of every frame (Sec. 3, "camera pose conditioning"): the vector of
frame ``i`` is

    [emb_256(cond_aug) | emb_512(polar_i) | emb_512(azimuth_i)],   polar = rad(90° − elevation),
                                                                   azimuth = rad((a_i − a_T) mod 360°)

so the UNet's added embedding differs per frame (``Cond.vector`` of shape ``(B, T, 1280)``). Sampling is
SVD's (EDM Euler, σ_max 700) with the triangle CFG scale of Sec. 3 ("triangular CFG scaling":
``vidiff.diffusion.guidance``'s ``triangle`` ramp, 1 at the input view, ``max_guidance_scale`` half-way
round). Stability's script then replaces the last decoded frame by the input image, which that frame
renders (relative azimuth 0).

This module holds no math of its own: the camera sinusoids are ``vidiff.conditioning.sv3d_camera_vector``,
the default orbit ``sv3d_default_orbit``, the ramp and sampler the image-to-video pipeline's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from vidiff.conditioning import Cond, sv3d_camera_vector, sv3d_default_orbit
from vidiff.pipelines.image_to_video import Image, ImageToVideoPipeline
from vidiff.pipelines.memory import MemoryPlan
from vidiff.pipelines.settings import GenerationSettings

DEFAULT_ELEVATION = 10.0  # simple_video_sample.py: ``elevations_deg = 10.0`` for SV3D
ELEVATION_RANGE = (-90.0, 90.0)  # polar = 90° − elevation must stay in [0°, 180°]

Angles = float | Sequence[float] | None


@dataclass(frozen=True)
class Orbit:
    """The camera of each of ``T`` frames, in degrees (elevation above the object's equator, azimuth)."""

    elevations_deg: tuple[float, ...]
    azimuths_deg: tuple[float, ...]

    @property
    def num_frames(self) -> int:
        return len(self.azimuths_deg)

    def vector(self, noise_aug_strength: float, batch: int = 1) -> torch.Tensor:
        """SV3D_p's per-frame vector ``(batch, T, 1280)`` (float32), as sgm's three embedders build it."""
        elev = torch.tensor(self.elevations_deg, dtype=torch.float64)[None]
        azim = torch.tensor(self.azimuths_deg, dtype=torch.float64)[None]
        return sv3d_camera_vector(elev, azim, noise_aug_strength).float().expand(batch, -1, -1)

    def to_dict(self) -> dict[str, list[float]]:
        return {"elevations_deg": list(self.elevations_deg), "azimuths_deg": list(self.azimuths_deg)}


def _as_list(values: float | Sequence[float], name: str) -> list[float]:
    """``values`` as floats, each finite (a non-number is a ValueError naming ``name`` and the value)."""
    items = [values] if isinstance(values, (int, float)) else list(values)
    out = []
    for v in items:
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: {v!r} is not a number of degrees") from None
        if not math.isfinite(f):
            raise ValueError(f"{name}: {v!r} is not a finite number of degrees")
        out.append(f)
    return out


def sv3d_orbit(num_frames: int, elevations: Angles = None, azimuths: Angles = None, *,
               names: tuple[str, str] = ("elevations", "azimuths")) -> Orbit:
    """The orbit of ``num_frames`` views, checked as Stability's script checks it (one elevation or one per
    frame; one azimuth per frame), plus the elevation range ``[-90, 90]``.

    Unset elevations: 10° for every frame; unset azimuths: sgm's default orbit ``linspace(0, 360, T+1)[1:]``
    (evenly spaced, ending at the input view). ``names`` are what errors call the two inputs (the CLI passes
    its flags)."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    elev_name, azim_name = names
    elev = _as_list(DEFAULT_ELEVATION if elevations is None else elevations, elev_name)
    if len(elev) == 1:
        elev = elev * num_frames
    if len(elev) != num_frames:
        raise ValueError(f"{elev_name}: {len(elev)} values given for {num_frames} frames; give one elevation, "
                         f"or one per frame")
    lo, hi = ELEVATION_RANGE
    for e in elev:
        if not lo <= e <= hi:
            raise ValueError(f"{elev_name}: elevation {e:g} is outside [{lo:g}, {hi:g}] degrees")
    if azimuths is None:
        azim = sv3d_default_orbit(num_frames, DEFAULT_ELEVATION)[1][0].tolist()
    else:
        azim = _as_list(azimuths, azim_name)
        if len(azim) != num_frames:
            raise ValueError(f"{azim_name}: {len(azim)} values given for {num_frames} frames; give one azimuth "
                             "per frame")
    return Orbit(tuple(elev), tuple(azim))


class SV3DPipeline(ImageToVideoPipeline):
    """SV3D_u / SV3D_p orbit generation: ``pipe(image, elevations=..., azimuths=...)``.

    Everything else is :class:`ImageToVideoPipeline`'s (arguments, memory controls, RNG order); the
    family's reference defaults are sgm's (50 steps, cond_aug 1e-5, triangle guidance 1 -> 2.5, 21 frames
    at 576x576). ``replace_last_frame`` (default True, as Stability's script) puts the input image, resized,
    in place of the last frame, the view it stands for."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._check_family()
        self._camera: tuple[Angles, Angles] = (None, None)
        self._orbit: Orbit | None = None
        self._input_view: torch.Tensor | None = None
        self.replace_last_frame = True

    @classmethod
    def from_pipeline(cls, pipe: ImageToVideoPipeline) -> SV3DPipeline:
        """The SV3D pipeline over the modules an :class:`ImageToVideoPipeline` already loaded (no copy)."""
        new = cls.__new__(cls)
        new.__dict__.update(pipe.__dict__)
        new._check_family()
        new._camera, new._orbit, new._input_view, new.replace_last_frame = (None, None), None, None, True
        return new

    def _check_family(self) -> None:
        if not self.family.name.startswith("sv3d"):
            raise ValueError(f"SV3DPipeline needs an SV3D model (sv3d_u or sv3d_p), got {self.family.name}")

    @property
    def has_camera(self) -> bool:
        """SV3D_p takes a camera per frame; SV3D_u does not."""
        return self.family.name == "sv3d_p"

    def __call__(self, image: Any, *args: Any, elevations: Angles = None, azimuths: Angles = None,
                 **kwargs: Any) -> Any:
        """:meth:`ImageToVideoPipeline.__call__` for one view per input image; ``elevations``: one value or one
        per frame (degrees, in [-90, 90]; default 10); ``azimuths``: one per frame (degrees; default sgm's
        evenly spaced orbit ending at the input view). SV3D_u takes neither."""
        if not self.has_camera and (elevations is not None or azimuths is not None):
            raise ValueError(f"{self.family.name} has no camera conditioning: elevations and azimuths need "
                             "an sv3d_p model")
        self._camera = (elevations, azimuths)
        try:
            return super().__call__(image, *args, **kwargs)
        finally:
            self._camera, self._input_view = (None, None), None

    def orbit(self, num_frames: int, *, names: tuple[str, str] = ("elevations", "azimuths")) -> Orbit:
        """The orbit a call with the current camera arguments renders over ``num_frames`` frames."""
        return sv3d_orbit(num_frames, *self._camera, names=names)

    def _condition(self, images: list[Image], resized: torch.Tensor, s: GenerationSettings,
                   generator: torch.Generator | Sequence[torch.Generator]) -> tuple[Cond, Cond]:
        """The image-to-video conditioning, with SV3D_p's per-frame camera vector in both branches (sgm's
        unconditional branch keeps the vector)."""
        self._orbit = self.orbit(s.num_frames) if self.has_camera else None  # checked before any work
        cond, uncond = super()._condition(images, resized, s, generator)
        self._input_view = resized
        if self._orbit is None:
            return cond, uncond
        vector = self._orbit.vector(s.noise_aug_strength, cond.batch_size).to(self.device, self.dtype)
        return replace(cond, vector=vector), replace(uncond, vector=vector)

    def _decode(self, x: torch.Tensor, s: GenerationSettings, plan: MemoryPlan, progress: bool,
                reference: torch.Tensor | None = None) -> torch.Tensor:
        frames = super()._decode(x, s, plan, progress, reference)
        if self.replace_last_frame and self._input_view is not None:
            view = self._input_view.to(frames.device, frames.dtype)
            frames[:, -1] = view.repeat_interleave(frames.shape[0] // view.shape[0], dim=0)
        return frames

    def run_record(self, plan: MemoryPlan) -> dict[str, Any]:
        """The image-to-video run record plus the camera of every frame (SV3D_p) and the last-frame rule."""
        record = super().run_record(plan)
        record["sv3d"] = {"replace_last_frame": self.replace_last_frame,
                          **(self._orbit.to_dict() if self._orbit is not None and self.has_camera else {})}
        return record

