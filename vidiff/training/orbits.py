"""Orbit data for fine-tuning SV3D_u / SV3D_p (Voleti et al. 2024): a numpy orbit renderer and two datasets.

SV3D learns to render an orbit of ``T`` views of an object from one of them; SV3D_p is told the camera of
every frame (elevation, azimuth). Items here are image-to-video items (``vidiff.training.data``) whose
conditioning image is the **last** frame — the input view, at relative azimuth 0 in SV3D_p's camera vector
(``vidiff.conditioning.sv3d_camera_vector``) — plus the camera of every frame:

    {"video": (T, 3, H, W) in [-1, 1], "cond_image": video[-1], "elevations_deg": (T,) float64,
     "azimuths_deg": (T,) float64, "fps": 7.0, "motion_bucket_id": 0, "path": str, "start": 0}

* :class:`SyntheticOrbitDataset` renders textured simple solids (cube, sphere, cylinder) at known angles
  with :func:`render_view` (orthographic ray casting, Lambertian shading, 2x2 supersampling; pure numpy,
  deterministic; item ``index`` depends only on ``(seed, index)``).
* :class:`OrbitFolderDataset` reads orbits from disk: a folder of images (sorted by name) or a video file,
  each with a sidecar JSON ``{"elevations_deg": [..] or one number, "azimuths_deg": [..]}`` — ``cameras.json``
  inside an image folder, ``<stem>.json`` next to a video. :func:`write_orbit_folder` writes one.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from vidiff.io.video import probe_video, read_image, read_video
from vidiff.pipelines.sv3d import sv3d_orbit

__all__ = ["SHAPES", "OrbitFolderDataset", "Solid", "SyntheticOrbitDataset", "orbit_item", "random_solid",
           "render_orbit", "render_view", "write_orbit_folder"]

SHAPES = ("cube", "sphere", "cylinder")
SIDECAR = "cameras.json"
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
VIDEO_EXTS = (".mp4", ".webm", ".gif", ".mov", ".mkv")
_EXTENT = 1.0  # half-width of the orthographic view, in object units
_LIGHT = np.array([0.45, 0.75, 0.5]) / np.linalg.norm([0.45, 0.75, 0.5])  # world-fixed light direction
_AMBIENT = 0.35


@dataclass(frozen=True)
class Solid:
    """A textured solid at the origin (y up): ``shape`` in :data:`SHAPES`, four ``palette`` colours (one per
    quadrant of longitude, so every azimuth looks different) modulated by a 3-D checker of ``frequency``."""

    shape: str
    palette: tuple[tuple[float, float, float], ...]
    frequency: float = 2.0

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {list(SHAPES)}, got {self.shape!r}")
        if len(self.palette) != 4:
            raise ValueError(f"palette must hold 4 colours, got {len(self.palette)}")


def random_solid(rng: np.random.Generator) -> Solid:
    """A solid with a random shape, palette and checker frequency drawn from ``rng``."""
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    palette = tuple(tuple(float(c) for c in rng.uniform(0.1, 0.9, 3)) for _ in range(4))
    return Solid(shape, palette, float(rng.uniform(1.5, 3.0)))


def _camera(elevation_deg: float, azimuth_deg: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors (towards the camera, right, up) of a camera at this elevation and azimuth."""
    a, e = math.radians(azimuth_deg % 360.0), math.radians(elevation_deg)
    c = np.array([math.cos(e) * math.sin(a), math.sin(e), math.cos(e) * math.cos(a)])
    r = np.array([math.cos(a), 0.0, -math.sin(a)])
    return c, r, np.cross(c, r)


def _intersect(shape: str, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First hit distance ``t (N,)`` (inf = miss) and surface normal ``(N, 3)`` of rays ``o + t·d``."""
    n = o.shape[0]
    t = np.full(n, np.inf)
    normal = np.zeros((n, 3))
    with np.errstate(divide="ignore", invalid="ignore"):
        if shape == "sphere":
            radius = 0.8
            b = o @ d
            disc = b * b - (np.einsum("ij,ij->i", o, o) - radius**2)
            hit = disc >= 0
            t[hit] = -b[hit] - np.sqrt(disc[hit])
            normal = (o + t[:, None] * d) / radius
        elif shape == "cube":
            h = 0.5
            dd = np.where(np.abs(d) < 1e-12, 1e-12, d)
            t1, t2 = (-h - o) / dd, (h - o) / dd
            near, far = np.minimum(t1, t2), np.maximum(t1, t2)
            tmin, tmax = near.max(axis=1), far.min(axis=1)
            hit = (tmin <= tmax) & (tmax > 0)
            t[hit] = tmin[hit]
            axis = near.argmax(axis=1)
            normal[np.arange(n), axis] = -np.sign(dd[axis])
        else:  # cylinder about y: side x² + z² = R², caps y = ±h
            radius, h = 0.55, 0.6
            a2 = d[0] ** 2 + d[2] ** 2
            b = o[:, 0] * d[0] + o[:, 2] * d[2]
            disc = b * b - a2 * (o[:, 0] ** 2 + o[:, 2] ** 2 - radius**2)
            ts = (-b - np.sqrt(disc)) / a2
            ys = o[:, 1] + ts * d[1]
            ts = np.where((disc >= 0) & (np.abs(ys) <= h) & (ts > 0), ts, np.inf)
            tc = (np.sign(-d[1]) * h - o[:, 1]) / d[1]  # the cap facing the camera
            pc = o + tc[:, None] * d
            tc = np.where((pc[:, 0] ** 2 + pc[:, 2] ** 2 <= radius**2) & (tc > 0), tc, np.inf)
            t = np.minimum(ts, tc)
            p = o + np.where(np.isfinite(t), t, 0)[:, None] * d
            normal = np.where((tc <= ts)[:, None], np.array([0.0, np.sign(-d[1]), 0.0]),
                              p * np.array([1.0, 0.0, 1.0]) / radius)
    return t, normal


def _albedo(solid: Solid, p: np.ndarray) -> np.ndarray:
    """Palette colour by quadrant of longitude, darkened on alternate cells of a 3-D checker."""
    quadrant = np.floor((np.arctan2(p[:, 0], p[:, 2]) + math.pi) / (math.pi / 2)).astype(int) % 4
    cells = np.floor(solid.frequency * (p + 2.0)).astype(int).sum(axis=1) % 2
    return np.asarray(solid.palette)[quadrant] * (0.6 + 0.4 * cells)[:, None]


def render_view(solid: Solid, elevation_deg: float, azimuth_deg: float, size: int | tuple[int, int] = 32, *,
                supersample: int = 2, background: float = 1.0, return_mask: bool = False) -> Any:
    """The solid seen from ``(elevation, azimuth)`` degrees: ``(H, W, 3)`` float32 in [0, 1] on a plain
    ``background`` (SV3D's white), orthographic, Lambertian under a world-fixed light; with ``return_mask``
    also the ``(H, W)`` coverage in [0, 1]. Azimuth is taken mod 360 (0 and 360 render identically)."""
    h, w = (size, size) if isinstance(size, int) else size
    if not -90 <= elevation_deg <= 90:
        raise ValueError(f"elevation {elevation_deg:g} is outside [-90, 90] degrees")
    c, r, u = _camera(elevation_deg, azimuth_deg)
    sh, sw = h * supersample, w * supersample
    xs = ((np.arange(sw) + 0.5) / sw * 2 - 1) * _EXTENT * (sw / max(sh, sw))
    ys = -((np.arange(sh) + 0.5) / sh * 2 - 1) * _EXTENT * (sh / max(sh, sw))
    o = (xs[None, :, None] * r + ys[:, None, None] * u + 3.0 * c).reshape(-1, 3)
    t, normal = _intersect(solid.shape, o, -c)
    hit = np.isfinite(t)
    p = o[hit] + t[hit, None] * (-c)
    shade = _AMBIENT + (1 - _AMBIENT) * np.clip(normal[hit] @ _LIGHT, 0, None)
    rgb = np.full((sh * sw, 3), background, dtype=np.float64)
    rgb[hit] = np.clip(_albedo(solid, p) * shade[:, None], 0, 1)
    rgb = rgb.reshape(h, supersample, w, supersample, 3).mean(axis=(1, 3)).astype(np.float32)
    if not return_mask:
        return rgb
    return rgb, hit.reshape(h, supersample, w, supersample).mean(axis=(1, 3)).astype(np.float32)


def render_orbit(solid: Solid, elevations_deg: Sequence[float], azimuths_deg: Sequence[float],
                 size: int | tuple[int, int] = 32) -> torch.Tensor:
    """Views at each ``(elevation, azimuth)`` as a video ``(T, 3, H, W)`` float32 in [0, 1]."""
    views = [render_view(solid, e, a, size) for e, a in zip(elevations_deg, azimuths_deg, strict=True)]
    return torch.from_numpy(np.stack(views)).permute(0, 3, 1, 2).contiguous()


def orbit_item(frames01: torch.Tensor, elevations_deg: Sequence[float], azimuths_deg: Sequence[float],
               path: str) -> dict[str, Any]:
    """A training item (module docstring) from frames in [0, 1]; the last frame is the conditioning view."""
    video = frames01.float() * 2 - 1
    return {"video": video, "cond_image": video[-1].clone(), "fps": 7.0, "motion_bucket_id": 0,
            "elevations_deg": torch.tensor(list(elevations_deg), dtype=torch.float64),
            "azimuths_deg": torch.tensor(list(azimuths_deg), dtype=torch.float64), "path": path, "start": 0}


def default_offsets(num_frames: int) -> tuple[float, ...]:
    """sgm's orbit spacing as offsets from the input view: ``360·(i+1)/T`` for ``i < T``, ending at 360 ≡ 0."""
    return tuple(360.0 * (i + 1) / num_frames for i in range(num_frames))


class SyntheticOrbitDataset(Dataset):
    """Orbits of random textured solids (:func:`random_solid`) rendered on the fly by :func:`render_view`.

    Item ``index``: a solid, an input-view azimuth ``a₀ ~ U[0, 360)`` and one elevation ``~ U(elevation_range)``
    drawn from ``(seed, index)``; frame ``i`` is seen from azimuth ``a₀ + offsets[i]`` (default
    :func:`default_offsets`; the last offset must be ≡ 0 mod 360: the input view ends the orbit, as in SV3D).
    Other ``offsets`` render views at azimuths training never showed (held-out evaluation).
    """

    def __init__(self, num_samples: int, num_frames: int, size: Sequence[int] = (32, 32), *, seed: int = 0,
                 elevation_range: tuple[float, float] = (-10.0, 30.0),
                 offsets: Sequence[float] | None = None) -> None:
        if num_samples < 1 or num_frames < 1:
            raise ValueError(f"num_samples and num_frames must be >= 1, got {num_samples}, {num_frames}")
        self.offsets = tuple(offsets) if offsets is not None else default_offsets(num_frames)
        if len(self.offsets) != num_frames:
            raise ValueError(f"offsets: {len(self.offsets)} values given for {num_frames} frames")
        if self.offsets[-1] % 360.0 != 0:
            raise ValueError(f"offsets: the last frame is the input view, its offset must be 0 mod 360, got "
                             f"{self.offsets[-1]:g}")
        lo, hi = elevation_range
        if not -90 <= lo <= hi <= 90:
            raise ValueError(f"elevation_range must satisfy -90 <= lo <= hi <= 90, got {elevation_range}")
        self.num_samples, self.num_frames, self.seed = num_samples, num_frames, seed
        self.size, self.elevation_range = (int(size[0]), int(size[1])), (float(lo), float(hi))

    def set_epoch(self, epoch: int) -> None:
        """Accepted for a uniform interface; synthetic orbits do not change with the epoch."""

    def __len__(self) -> int:
        return self.num_samples

    def camera(self, index: int) -> tuple[Solid, list[float], list[float]]:
        """The solid and per-frame elevations / azimuths (degrees) of item ``index``."""
        rng = np.random.default_rng([self.seed, index])
        solid = random_solid(rng)
        a0 = float(rng.uniform(0.0, 360.0))
        elevation = float(rng.uniform(*self.elevation_range))
        return solid, [elevation] * self.num_frames, [(a0 + off) % 360.0 for off in self.offsets]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        solid, elev, azim = self.camera(index)
        return orbit_item(render_orbit(solid, elev, azim, self.size), elev, azim, f"synthetic:{self.seed}:{index}")


def _read_sidecar(path: Path, num_frames: int) -> tuple[list[float], list[float]]:
    """Per-frame cameras from a sidecar JSON, checked as SV3D_p's inference checks them (``sv3d_orbit``)."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable camera sidecar ({e})") from None
    if not isinstance(meta, dict) or "azimuths_deg" not in meta:
        raise ValueError(f"{path}: a camera sidecar must be a JSON object with azimuths_deg (and elevations_deg)")
    orbit = sv3d_orbit(num_frames, meta.get("elevations_deg"), meta["azimuths_deg"],
                       names=(f"{path}: elevations_deg", f"{path}: azimuths_deg"))
    return list(orbit.elevations_deg), list(orbit.azimuths_deg)


class OrbitFolderDataset(Dataset):
    """Orbits under ``root``: every sub-folder holding :data:`SIDECAR` and images (frames sorted by name), and
    every video with a ``<stem>.json`` sidecar next to it (module docstring). An orbit of ``N >= num_frames``
    frames gives ``num_frames`` evenly spaced frames ending at its last (the input view); frames are resized
    to ``size`` (antialiased). Sidecars are checked when the dataset is built: a wrong number of values or an
    elevation outside [-90, 90] is a ``ValueError`` naming the file."""

    def __init__(self, root: str | os.PathLike, num_frames: int, size: Sequence[int] = (32, 32)) -> None:
        self.root, self.num_frames, self.size = Path(root), num_frames, (int(size[0]), int(size[1]))
        if not self.root.is_dir():
            raise ValueError(f"orbit folder {self.root} does not exist")
        self.orbits: list[tuple[Path, list[Path] | None, list[float], list[float]]] = []
        for sidecar in sorted(self.root.rglob("*.json")):
            if sidecar.name == SIDECAR:
                frames = sorted(p for p in sidecar.parent.iterdir() if p.suffix.lower() in IMAGE_EXTS)
                source, count = sidecar.parent, len(frames)
            else:
                videos = [sidecar.with_suffix(e) for e in VIDEO_EXTS if sidecar.with_suffix(e).is_file()]
                if not videos:
                    continue
                source, frames, count = videos[0], None, probe_video(videos[0]).num_frames
            if count < num_frames:
                raise ValueError(f"{source}: {count} frames, an orbit needs at least {num_frames}")
            elev, azim = _read_sidecar(sidecar, count)
            self.orbits.append((source, frames, elev, azim))
        if not self.orbits:
            raise ValueError(f"no orbit under {self.root} (image folders with {SIDECAR}, or videos with a "
                             "<stem>.json sidecar)")

    def set_epoch(self, epoch: int) -> None:
        """Accepted for a uniform interface; every epoch reads the same frames."""

    def __len__(self) -> int:
        return len(self.orbits)

    def __getitem__(self, index: int) -> dict[str, Any]:
        source, files, elev, azim = self.orbits[index]
        n, t = len(elev), self.num_frames
        picks = [round(n - 1 - (t - 1 - i) * n / t) for i in range(t)]  # evenly spaced, ending at the last
        if files is not None:
            frames = torch.stack([read_image(files[i]) for i in picks])
        else:
            frames = read_video(source)[0][picks]
        if tuple(frames.shape[-2:]) != self.size:
            frames = F.interpolate(frames, size=self.size, mode="bilinear", antialias=True,
                                   align_corners=False).clamp(0, 1)
        return orbit_item(frames, [elev[i] for i in picks], [azim[i] for i in picks], str(source))


def write_orbit_folder(folder: str | os.PathLike, solid: Solid, elevations_deg: Sequence[float],
                       azimuths_deg: Sequence[float], size: int | tuple[int, int] = 64) -> Path:
    """Render an orbit into ``folder`` as ``view_NNN.png`` plus :data:`SIDECAR` (demos and tests)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    video = render_orbit(solid, elevations_deg, azimuths_deg, size)
    for i, frame in enumerate(video):
        pixels = (frame.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"view_{i:03d}.png")
    (folder / SIDECAR).write_text(json.dumps({"elevations_deg": [float(e) for e in elevations_deg],
                                              "azimuths_deg": [float(a) for a in azimuths_deg]}))
    return folder
