"""The metric table of ``vidiff eval``: each metric's name, what it needs, and how it is computed on a set of videos.

A :class:`Metric` is computed either per video (``scope="video"``: one value per video, the set's value the
mean over the videos, e.g. VBench's dimensions, which average per-video scores) or once for the whole set
(``scope="set"``: FVD and per-frame FID compare two distributions). A metric may need pretrained weights
(``needs``: the key of :data:`WEIGHT_FLAGS`, the command-line flag that supplies them), a reference set
(``needs_reference``) or the conditioning images (``needs_images``), and a minimum clip length
(``min_frames``). :func:`plan_metrics` splits a request into what runs and what is skipped, with the reason;
:func:`evaluate` computes what runs and returns JSON-ready values, per-video values and per-frame curves
(:mod:`vidiff.metrics.report` draws them).

The weight-free measures are those of :mod:`vidiff.metrics.temporal` and :mod:`vidiff.metrics.flow`; the
weight-needing ones (FVD with StyleGAN-V's variants, per-frame FID, CLIP consistency) and the fidelity
measures (PSNR, SSIM) live in their own modules and are imported when used.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vidiff.io.video import IMAGE_EXTENSIONS, VideoError, read_image, read_video
from vidiff.metrics.flow import flow_magnitude, video_flow
from vidiff.metrics.temporal import (
    colour_drift_curve,
    frame_differences,
    is_dynamic,
    seam_ratio,
    temporal_flickering,
    warp_errors,
)

__all__ = [
    "METRICS",
    "VIDEO_EXTENSIONS",
    "WEIGHT_FLAGS",
    "EvalInputs",
    "Metric",
    "Video",
    "evaluate",
    "frames_needed",
    "list_videos",
    "load_images",
    "load_videos",
    "plan_metrics",
]

VIDEO_EXTENSIONS = (".mp4", ".webm", ".gif", ".webp", ".mkv", ".mov", ".avi")
# weights key -> the flag of ``vidiff eval`` that supplies them
WEIGHT_FLAGS = {"i3d": "--i3d-weights", "inception": "--inception-weights", "clip": "--clip-model"}


@dataclass
class Video:
    """One decoded video: ``frames (T, 3, H, W)`` float in [0, 1] at ``fps``; ``name`` identifies it in a set
    (the file name; a reference video of the same name is its pair)."""

    name: str
    frames: torch.Tensor
    fps: float
    path: str = ""

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


@dataclass
class EvalInputs:
    """What a metric may use: the generated set, the reference set, the conditioning images by video name,
    and the loaded networks by :data:`WEIGHT_FLAGS` key."""

    generated: list[Video]
    reference: list[Video] | None = None
    images: dict[str, torch.Tensor] | None = None
    models: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"


# A metric's result: the set's value, and optionally {video name: value} and {curve name: {video: values}}.
Result = tuple[float, dict[str, float] | None, dict[str, dict[str, list[float]]] | None]


@dataclass(frozen=True)
class Metric:
    """One row of the metric table (module docstring)."""

    name: str
    description: str
    better: str  # "higher", "lower" or "neither" (a measure of motion, not of quality)
    compute: Callable[[EvalInputs], Result]
    scope: str = "video"
    min_frames: int | Callable[[float], int] = 2
    needs: str | None = None
    needs_reference: bool = False
    needs_images: bool = False
    check: Callable[[EvalInputs], str | None] | None = None  # a problem with the inputs, found before computing


# -- loading -------------------------------------------------------------------------------------------
def _is_frames(path: Path) -> bool:
    return path.is_dir() and any(p.suffix.lower() == ".png" for p in path.iterdir() if not p.name.startswith("."))


def list_videos(path: str | os.PathLike) -> list[Path]:
    """The videos at ``path``: a video file or a folder of png frames is one video; any other folder holds
    videos (files with a video extension, folders of png frames), sorted by name. ``VideoError`` names the
    path when it does not exist or holds none."""
    p = Path(path)
    if not p.exists():
        raise VideoError(f"{p}: no such file or folder")
    if p.is_file() or _is_frames(p):
        return [p]
    found = sorted(q for q in p.iterdir() if not q.name.startswith(".")
                   and ((q.is_file() and q.suffix.lower() in VIDEO_EXTENSIONS) or _is_frames(q)))
    if not found:
        raise VideoError(f"{p}: folder holds no videos ({', '.join(VIDEO_EXTENSIONS)} or folders of png frames)")
    return found


def load_videos(path: str | os.PathLike, *, max_frames: int | None = None) -> list[Video]:
    """Decode every video of :func:`list_videos` (PyAV); ``VideoError`` names the file that cannot be read."""
    videos = []
    for p in list_videos(path):
        frames, fps = read_video(p, max_frames=max_frames)
        videos.append(Video(p.name, frames, fps, str(p)))
    return videos


def load_images(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The images of a folder (or one image file) by file stem, ``(3, H, W)`` in [0, 1]; ``ValueError`` names
    the path when it holds none or one cannot be read."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{p}: no such file or folder")
    files = [p] if p.is_file() else sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_EXTENSIONS
                                            and not q.name.startswith("."))
    if not files:
        raise ValueError(f"{p}: folder holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return {f.stem: read_image(f) for f in files}


# -- weight-free per-video metrics ---------------------------------------------------------------------
def _per_video(fn: Callable[[Video], tuple[float, Mapping[str, list[float]]]]) -> Callable[[EvalInputs], Result]:
    """A per-video measure as a metric: the set's value is the mean over the videos."""

    def compute(inputs: EvalInputs) -> Result:
        values: dict[str, float] = {}
        curves: dict[str, dict[str, list[float]]] = {}
        for v in inputs.generated:
            values[v.name], c = fn(v)
            for key, curve in c.items():
                curves.setdefault(key, {})[v.name] = curve
        return _mean(values.values()), values, curves or None

    return compute


def _mean(values: Any) -> float:
    vals = [float(x) for x in values]
    return math.fsum(vals) / len(vals) if vals else math.nan


def _flicker(v: Video) -> tuple[float, dict[str, list[float]]]:
    return temporal_flickering(v.frames), {}


def _seams(v: Video) -> tuple[float, dict[str, list[float]]]:
    return seam_ratio(v.frames), {"frame_difference": frame_differences(v.frames).tolist()}


def _drift(v: Video) -> tuple[float, dict[str, list[float]]]:
    curve = colour_drift_curve(v.frames)
    return curve.max().item(), {"colour_drift": curve.tolist()}


def _warp(v: Video) -> tuple[float, dict[str, list[float]]]:
    errs = warp_errors(v.frames)
    return errs.mean().item(), {"warp_error": errs.tolist()}


def _motion(v: Video) -> tuple[float, dict[str, list[float]]]:
    mags = flow_magnitude(video_flow(v.frames)).flatten(1).double().mean(1)
    return mags.mean().item(), {"flow_magnitude": mags.tolist()}


def _dynamic(v: Video) -> tuple[float, dict[str, list[float]]]:
    return float(is_dynamic(v.frames, v.fps)), {}


def _dynamic_min_frames(fps: float) -> int:
    """Frames :func:`~vidiff.metrics.temporal.is_dynamic` needs to keep two at its stride ``round(fps / 8)``."""
    return max(1, round(fps / 8)) + 1


# -- fidelity against a paired frame (PSNR, SSIM) ------------------------------------------------------
def _key(name: str) -> str:
    return Path(name).stem if Path(name).suffix.lower() in VIDEO_EXTENSIONS else name


def _pairs(inputs: EvalInputs) -> list[tuple[Video, Video]]:
    """Generated videos with the reference video of the same name (extension aside)."""
    refs = {_key(r.name): r for r in inputs.reference or []}
    return [(v, refs[_key(v.name)]) for v in inputs.generated if _key(v.name) in refs]


def _at_size(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``image (3, h, w)`` resized to the frame size with Lanczos, as the image-to-video pipeline resizes its
    input (a no-op at the size already)."""
    if tuple(image.shape[-2:]) == (height, width):
        return image
    import numpy as np
    from PIL import Image

    pil = Image.fromarray((image * 255).round().byte().permute(1, 2, 0).numpy())
    arr = np.asarray(pil.resize((width, height), resample=Image.LANCZOS))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255


def _fidelity(measure: str, first_frame: bool) -> Callable[[EvalInputs], Result]:
    """PSNR or SSIM (:mod:`vidiff.metrics.fidelity`) of frame 0 against the conditioning image (the curve:
    every frame against it), or of every frame against the same frame of the paired reference video (over
    the frames both have; the value is the mean SSIM over frames, and the PSNR of the mean squared error over
    frames — FFmpeg's average PSNR — so that one identical frame (infinite PSNR) does not make the whole
    video's value infinite)."""

    def compute(inputs: EvalInputs) -> Result:
        from vidiff.metrics import fidelity

        fn = getattr(fidelity, measure)
        values: dict[str, float] = {}
        curves: dict[str, list[float]] = {}
        for v, target in _targets(inputs, first_frame):
            n = min(v.num_frames, target.shape[0])
            curve = fn(v.frames[:n], target[:n])
            if first_frame:
                values[v.name] = curve[0].item()
            elif measure == "psnr":  # back to MSE (peak 1), averaged, to dB
                mse = torch.pow(10.0, -curve.double() / 10).mean().item()
                values[v.name] = math.inf if mse == 0 else -10 * math.log10(mse)
            else:
                values[v.name] = _mean(curve.tolist())
            curves[v.name] = curve.tolist()
        if not values:
            raise ValueError("no generated video has a " + ("conditioning image of its name" if first_frame
                                                            else "reference video of its name"))
        key = f"{'first_frame' if first_frame else 'reference'}_{measure}"
        return _mean(values.values()), values, {key: curves}

    return compute


def _targets(inputs: EvalInputs, first_frame: bool) -> list[tuple[Video, torch.Tensor]]:
    """Each generated video with what it is compared to: its conditioning image at the frame size repeated
    over its frames, or its reference video's frames."""
    if not first_frame:
        return [(v, r.frames) for v, r in _pairs(inputs)]
    images = inputs.images or {}
    out = []
    for v in inputs.generated:
        image = images.get(v.name, images.get(_key(v.name)))
        if image is not None:
            out.append((v, _at_size(image, *v.frames.shape[-2:]).expand_as(v.frames)))
    return out


def _check_pairs(inputs: EvalInputs) -> str | None:
    """Why the reference fidelity cannot be computed (no pairs, or frames of another size), or None."""
    pairs = _pairs(inputs)
    if not pairs:
        return "no generated video has a reference video of its name"
    for v, r in pairs:
        if v.frames.shape[1:] != r.frames.shape[1:]:
            size = "x".join(map(str, v.frames.shape[-1:-3:-1]))
            return (f"{v.path or v.name} has {size} frames, its reference {r.path or r.name} "
                    f"{'x'.join(map(str, r.frames.shape[-1:-3:-1]))}")
    return None


# -- metrics with pretrained networks ------------------------------------------------------------------
def _named(videos: Sequence[Video] | None) -> dict[str, torch.Tensor]:
    return {v.path or v.name: v.frames for v in videos or []}


def _fvd(variant: str) -> Callable[[EvalInputs], Result]:
    def compute(inputs: EvalInputs) -> Result:
        from vidiff.metrics.fvd import fvd

        return fvd(_named(inputs.generated), _named(inputs.reference), variant=variant,
                   i3d=inputs.models["i3d"]), None, None

    return compute


def _frame_fid(inputs: EvalInputs) -> Result:
    from vidiff.metrics.inception import frame_fid

    return frame_fid(_named(inputs.generated), _named(inputs.reference), inputs.models["inception"]), None, None


def _clip_consistency(inputs: EvalInputs) -> Result:
    """Per video the mean of its ``c_t``; the set's value VBench's: all ``c_t`` of all videos averaged."""
    from vidiff.metrics.clip_consistency import clip_consistency_curve

    curves = {v.name: clip_consistency_curve(v.frames, inputs.models["clip"]).tolist() for v in inputs.generated}
    pooled = [c for curve in curves.values() for c in curve]
    return _mean(pooled), {k: _mean(c) for k, c in curves.items()}, {"clip_consistency": curves}


def _fvd_metrics() -> list[Metric]:
    from vidiff.metrics.fvd import FVD_VARIANTS

    return [Metric(name, f"Fréchet video distance, StyleGAN-V's {name}: {v.num_frames}-frame clips"
                   + (f", every {v.subsample}th frame" if v.subsample > 1 else "") + " (I3D features)", "lower",
                   _fvd(name), scope="set", min_frames=v.min_frames, needs="i3d", needs_reference=True)
            for name, v in FVD_VARIANTS.items()]


def _table() -> dict[str, Metric]:
    metrics = [
        Metric("temporal_flickering", "VBench temporal flickering, (255 - MAE of consecutive frames) / 255",
               "higher", _per_video(_flicker)),
        Metric("dynamic_degree", "VBench dynamic degree: fraction of videos that move (flow above "
               "VBench's threshold)", "higher", _per_video(_dynamic), min_frames=_dynamic_min_frames),
        Metric("warp_error", "Lai et al. warp error: previous frame warped by the flow against the frame "
               "(squared error on [0, 1])", "lower", _per_video(_warp)),
        Metric("seam_ratio", "largest over median consecutive-frame difference", "lower", _per_video(_seams),
               min_frames=3),
        Metric("colour_drift", "largest deviation of the colour mean and spread from frame 0", "lower",
               _per_video(_drift)),
        Metric("mean_flow", "mean optical-flow magnitude between consecutive frames (px/frame)", "neither",
               _per_video(_motion)),
        Metric("reference_psnr", "PSNR of each frame against the same frame of the reference video of the "
               "same name (dB)", "higher", _fidelity("psnr", False), min_frames=1, needs_reference=True,
               check=_check_pairs),
        Metric("reference_ssim", "SSIM of each frame against the same frame of the reference video of the "
               "same name", "higher", _fidelity("ssim", False), min_frames=1, needs_reference=True,
               check=_check_pairs),
        Metric("first_frame_psnr", "PSNR of frame 0 against the conditioning image (dB)", "higher",
               _fidelity("psnr", True), min_frames=1, needs_images=True),
        Metric("first_frame_ssim", "SSIM of frame 0 against the conditioning image", "higher",
               _fidelity("ssim", True), min_frames=1, needs_images=True),
        *_fvd_metrics(),
        Metric("frame_fid", "per-frame FID (Inception features of every frame)", "lower", _frame_fid,
               scope="set", min_frames=1, needs="inception", needs_reference=True),
        Metric("clip_consistency", "CLIP temporal consistency (cosine of consecutive frames' CLIP "
               "features)", "higher", _clip_consistency, needs="clip"),
    ]
    return {m.name: m for m in metrics}


METRICS: dict[str, Metric] = _table()


def frames_needed(metric: Metric, fps: float) -> int:
    """The fewest frames a video at ``fps`` needs for ``metric``."""
    return metric.min_frames(fps) if callable(metric.min_frames) else metric.min_frames


def plan_metrics(names: Sequence[str] | None, inputs: EvalInputs, *,
                 weights: Mapping[str, object | None]) -> tuple[list[Metric], dict[str, str]]:
    """Which metrics run and which are skipped (name -> reason, with the flag that enables it).

    ``names``: the metrics asked for (None: all of the table). ``weights``: what was given for each key of
    :data:`WEIGHT_FLAGS`. A metric asked for by name whose videos are too short raises ``ValueError`` naming
    the shortest video; with ``names=None`` it is skipped instead.
    """
    unknown = [n for n in names or [] if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    run, skipped = [], {}
    for m in [METRICS[n] for n in dict.fromkeys(names)] if names else list(METRICS.values()):
        if m.needs is not None and weights.get(m.needs) is None:
            skipped[m.name] = f"needs {m.needs} weights: pass {WEIGHT_FLAGS[m.needs]}"
            continue
        if m.needs_reference and not inputs.reference:
            skipped[m.name] = "needs reference videos: pass --reference"
            continue
        if m.needs_images and not inputs.images:
            skipped[m.name] = "needs the conditioning images: pass --images"
            continue
        problem = m.check(inputs) if m.check is not None else None
        if problem is not None:
            if names:
                raise ValueError(f"{m.name}: {problem}")
            skipped[m.name] = problem
            continue
        short = [(v, frames_needed(m, v.fps)) for v in inputs.generated + (inputs.reference or [])
                 if v.num_frames < frames_needed(m, v.fps)]
        if short:
            v, need = short[0]
            problem = (f"{v.path or v.name} has {v.num_frames} frame{'s' * (v.num_frames != 1)}, {m.name} "
                       f"needs at least {need}")
            if names:
                raise ValueError(problem)
            skipped[m.name] = problem
            continue
        run.append(m)
    return run, skipped


def evaluate(metrics: Sequence[Metric], inputs: EvalInputs) -> dict[str, Any]:
    """Compute ``metrics`` (from :func:`plan_metrics`); returns ``{"metrics": {name: value}, "per_video":
    {video: {name: value}}, "curves": {curve: {video: [values]}}, "better": {name: "higher" | "lower"}}``."""
    values: dict[str, float] = {}
    per_video: dict[str, dict[str, float]] = {v.name: {} for v in inputs.generated}
    curves: dict[str, dict[str, list[float]]] = {}
    for m in metrics:
        value, by_video, c = m.compute(inputs)
        values[m.name] = float(value)
        for name, x in (by_video or {}).items():
            per_video[name][m.name] = float(x)
        for key, by in (c or {}).items():
            curves.setdefault(key, {}).update(by)
    return {"metrics": values, "per_video": per_video, "curves": curves,
            "better": {m.name: m.better for m in metrics},
            "descriptions": {m.name: m.description for m in metrics}}
