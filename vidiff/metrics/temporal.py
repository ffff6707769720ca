"""Weight-free temporal measures of one video: flicker, seams, colour drift, warp error, dynamic degree.

Every function takes ``video (T, C, H, W)`` float in [0, 1] (as :func:`vidiff.io.video.read_video` returns)
and computes in float64 where it sums over pixels.

- :func:`temporal_flickering` — VBench (Huang et al. 2024, "Temporal Flickering";
  ``vbench/temporal_flickering.py``): the mean absolute difference of consecutive frames on the 0…255 scale
  of the decoded uint8 frames, ``score = (255 − MAE) / 255``; 1.0 for a static video.
- :func:`seam_ratio` — ``max_i d_i / median_i d_i`` with ``d_i`` the mean absolute difference of frames
  i, i+1 on [0, 1] (:func:`frame_differences`): a single jump (the seam between two generated windows, a
  dropped frame) stands out against the typical frame-to-frame change.
- :func:`colour_drift` — per-channel mean and standard deviation of each frame (the colour moments of
  Reinhard et al. 2001) against frame 0: ``δ_t = ‖(μ_t − μ₀, σ_t − σ₀)‖₂`` over the channels.
- :func:`warp_errors` — Lai et al. 2018 ("Learning Blind Video Temporal Consistency"):
  ``E(V_t, V_{t−1}) = Σ_p M_t(p) ‖V_t(p) − V̂_{t−1}(p)‖² / Σ_p M_t(p)`` with ``V̂_{t−1}`` the previous frame
  warped to frame t by the optical flow (:mod:`vidiff.metrics.flow`) and ``M_t`` the non-occluded pixels
  by the forward–backward consistency check of Ruder et al. 2016 (their disocclusion test).
- :func:`is_dynamic` / :func:`dynamic_degree` — VBench's dynamic degree (``vbench/dynamic_degree.py``):
  frames are taken every ``round(fps / 8)``; each consecutive pair scores the mean of its top 5 % flow
  magnitudes; a video moves when at least ``round(4 N / 16)`` pairs (N the frames kept) exceed
  ``6 · max(1, 8 / fps) · min(H, W) / 256`` pixels; the dimension is the fraction of videos that move.
  VBench estimates the flow with RAFT; vidiff uses its own weight-free estimator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from vidiff.metrics.flow import estimate_flow, flow_magnitude
from vidiff.utils import warp

__all__ = [
    "colour_drift",
    "colour_drift_curve",
    "dynamic_degree",
    "dynamic_threshold",
    "frame_differences",
    "frame_statistics",
    "is_dynamic",
    "motion_scores",
    "seam_ratio",
    "temporal_flickering",
    "warp_error",
    "warp_errors",
]


def _check_video(video: torch.Tensor, min_frames: int = 2) -> torch.Tensor:
    if video.ndim != 4 or video.shape[0] < min_frames or not video.is_floating_point():
        raise ValueError(f"video must be float (T >= {min_frames}, C, H, W) in [0, 1], got "
                         f"{video.dtype} {tuple(video.shape)}")
    return video


def frame_differences(video: torch.Tensor) -> torch.Tensor:
    """``d_i``, the mean absolute difference of frames i and i+1 on [0, 1]: ``(T − 1,)`` float64."""
    v = _check_video(video).double()
    return (v[1:] - v[:-1]).abs().mean(dim=(1, 2, 3))


def temporal_flickering(video: torch.Tensor) -> float:
    """VBench's temporal flickering score ``(255 − MAE) / 255`` in [0, 1]; higher is steadier.

    Frames are first quantised to uint8 levels (``round(255 x)``), as VBench reads them from the video
    file, and the MAE averages over pixels, channels and consecutive pairs.
    """
    levels = (_check_video(video).double().clamp(0, 1) * 255).round()
    mae = (levels[1:] - levels[:-1]).abs().mean().item()
    return (255.0 - mae) / 255.0


def seam_ratio(video: torch.Tensor) -> float:
    """``max_i d_i / median_i d_i`` over consecutive frame differences (:func:`frame_differences`).

    1.0 when every step changes the frame equally (or not at all); ``inf`` when the median step is zero
    but some step is not. The median of an even count is the mean of the two middle values.
    """
    d = frame_differences(video)
    peak, median = d.max().item(), d.quantile(0.5).item()
    if peak == 0.0:
        return 1.0
    return peak / median if median > 0 else math.inf


def frame_statistics(video: torch.Tensor) -> torch.Tensor:
    """Per-frame, per-channel colour moments ``(T, 2, C)`` float64: ``[:, 0]`` the means, ``[:, 1]`` the
    standard deviations (population) over the pixels of each frame."""
    v = _check_video(video, min_frames=1).double().flatten(2)
    return torch.stack([v.mean(2), v.std(2, correction=0)], dim=1)


def colour_drift_curve(video: torch.Tensor) -> torch.Tensor:
    """``δ_t = ‖(μ_t − μ₀, σ_t − σ₀)‖₂`` over channels, for every frame: ``(T,)`` float64, ``δ_0 = 0``."""
    stats = frame_statistics(video)
    return (stats - stats[:1]).flatten(1).norm(dim=1)


def colour_drift(video: torch.Tensor) -> float:
    """The largest colour-moment deviation from frame 0 over the video, ``max_t δ_t`` on [0, 1] values."""
    return colour_drift_curve(video).max().item()


def _inside(flow: torch.Tensor) -> torch.Tensor:
    """Pixels whose flow target ``p + flow(p)`` lies inside the frame: ``(N, H, W)`` bool."""
    h, w = flow.shape[-2:]
    xs = torch.arange(w, device=flow.device, dtype=flow.dtype) + flow[:, 0]
    ys = torch.arange(h, device=flow.device, dtype=flow.dtype).view(h, 1) + flow[:, 1]
    return (xs >= 0) & (xs <= w - 1) & (ys >= 0) & (ys <= h - 1)


def warp_errors(video: torch.Tensor, *, mask_occlusions: bool = True, **flow_kwargs: float) -> torch.Tensor:
    """Lai et al.'s warping error of each frame against the flow-warped previous frame: ``(T − 1,)`` float64.

    The flow ``f`` from frame t to frame t−1 (``V_t(p) ≈ V_{t−1}(p + f(p))``) warps ``V_{t−1}`` onto frame t
    (:func:`vidiff.utils.warp`). Pixels whose flow leaves the frame are excluded, and with
    ``mask_occlusions`` also those failing Ruder et al.'s forward–backward check
    ``|f + b(p + f)|² ≤ 0.01 (|f|² + |b(p + f)|²) + 0.5`` (``b`` the flow from t−1 to t). The squared error
    is summed over channels and averaged over the remaining pixels; a pair with no such pixel gives NaN.
    ``flow_kwargs`` go to :func:`vidiff.metrics.flow.estimate_flow`.
    """
    v = _check_video(video).float()
    cur, prev = v[1:], v[:-1]
    fwd = estimate_flow(cur, prev, **flow_kwargs)
    mask = _inside(fwd)
    if mask_occlusions:
        bwd_at = warp(estimate_flow(prev, cur, **flow_kwargs), fwd)
        diff = (fwd + bwd_at).square().sum(1)
        bound = 0.01 * (fwd.square().sum(1) + bwd_at.square().sum(1)) + 0.5
        mask &= diff <= bound
    mask &= torch.isfinite(fwd).all(1)  # a non-finite flow vector predicts nothing (and NaN·0 would be NaN)
    err = torch.where(mask, (warp(prev, fwd) - cur).double().square().sum(1), 0.0)
    return err.sum((1, 2)) / mask.double().sum((1, 2))


def warp_error(video: torch.Tensor, *, mask_occlusions: bool = True, **flow_kwargs: float) -> float:
    """Lai et al.'s ``E_warp``: the mean of :func:`warp_errors` over the consecutive pairs of the video."""
    return warp_errors(video, mask_occlusions=mask_occlusions, **flow_kwargs).mean().item()


def motion_scores(video: torch.Tensor, **flow_kwargs: float) -> torch.Tensor:
    """VBench's per-pair motion score: the mean of the largest 5 % (``int(0.05 H W)`` pixels) of the flow
    magnitudes between consecutive frames, in pixels: ``(T − 1,)`` float64."""
    v = _check_video(video).float()
    h, w = v.shape[-2:]
    k = max(1, int(h * w * 0.05))
    mag = flow_magnitude(estimate_flow(v[:-1], v[1:], **flow_kwargs)).flatten(1).double()
    return mag.topk(k, dim=1).values.mean(1)


def dynamic_threshold(height: int, width: int, fps: float) -> float:
    """VBench's motion threshold in pixels, ``6 · max(1, 8 / fps) · min(H, W) / 256``."""
    if fps <= 0 or height < 1 or width < 1:
        raise ValueError(f"need fps > 0 and a positive frame size, got fps={fps}, size={height}x{width}")
    return 6.0 * max(1.0, 8.0 / fps) * min(height, width) / 256.0


def is_dynamic(video: torch.Tensor, fps: float, **flow_kwargs: float) -> bool:
    """Whether VBench's dynamic degree counts ``video`` (at ``fps`` frames per second) as moving.

    Keeps every ``max(1, round(fps / 8))``-th frame; moving when at least ``round(4 N / 16)`` of the kept
    pairs' :func:`motion_scores` exceed :func:`dynamic_threshold` (N the number of kept frames).
    """
    _check_video(video)
    thres = dynamic_threshold(video.shape[-2], video.shape[-1], fps)
    kept = video[:: max(1, round(fps / 8))]
    if kept.shape[0] < 2:
        raise ValueError(f"a {video.shape[0]}-frame video at {fps} fps keeps fewer than 2 frames at 8 fps")
    count_num = round(4 * kept.shape[0] / 16)
    return int((motion_scores(kept, **flow_kwargs) > thres).sum()) >= count_num


def dynamic_degree(videos: Sequence[torch.Tensor], fps: float | Sequence[float], **flow_kwargs: float) -> float:
    """VBench's dynamic degree: the fraction of ``videos`` that :func:`is_dynamic` counts as moving."""
    if not videos:
        raise ValueError("dynamic_degree needs at least one video")
    rates = [float(fps)] * len(videos) if isinstance(fps, (int, float)) else [float(f) for f in fps]
    if len(rates) != len(videos):
        raise ValueError(f"{len(videos)} videos but {len(rates)} frame rates")
    return sum(is_dynamic(v, r, **flow_kwargs) for v, r in zip(videos, rates)) / len(videos)
