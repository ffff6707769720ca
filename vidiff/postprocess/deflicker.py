"""Deflickering: per-frame affine colour correction toward temporally smoothed statistics.

Model (per channel c, frame t): the frame is the scene's content under an exposure ``x_t = s_t · u + m_t``
(``s_t`` a gain, ``m_t`` an offset). Flicker is the fast part of ``(log s_t, m_t)``; the correction keeps
the slow part (Reinhard et al. 2001's colour transfer, ``x' = m̃ + (x − m) · s̃ / s``, with the target
moments taken from the clip itself, smoothed in time):

    s̃_t = exp(Σ_k w_k log s_k),  m̃_t = Σ_k w_k m_k,   w_k ∝ exp(−(t − k)² / 2σ²) within t's shot,
    y_t = x_t + λ · (m̃_t + (x_t − m_t) · s̃_t / s_t − x_t)              (λ = ``strength`` in [0, 1])

Two estimates of ``(s_t, m_t)``:

* ``flow=False`` (default): the frame's own mean and standard deviation per channel.
* ``flow=True``: only the exposure change between frames is measured, on pixels that correspond under
  the optical flow (:mod:`vidiff.metrics.flow`, computed on exposure-normalised frames) and survive a
  residual trim (occlusions), so a moving object that changes a frame's mean is not mistaken for flicker:
  frame t ≈ ``a · warp(frame t−1) + b`` gives ``s_t = a s_{t−1}``, ``m_t = a m_{t−1} + b``.

Shots: a cut is where consecutive frames, each normalised to zero mean and unit deviation per channel
(which removes any affine flicker exactly), differ by more than ``cut_threshold`` on a 16×16 thumbnail;
smoothing never crosses a cut, so frames after a cut are not pulled toward those before.

Streaming: :func:`plan_deflicker` reads the frames once and keeps a few numbers per frame (the plan);
:func:`apply_deflicker` reads them a second time and corrects each as it passes. Memory does not grow
with the number of frames (beyond those numbers).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from vidiff.metrics.flow import estimate_flow
from vidiff.utils import warp

__all__ = ["DeflickerConfig", "DeflickerPlan", "apply_deflicker", "deflicker_frames", "deflicker_video",
           "plan_deflicker"]

_EPS = 1e-4  # deviation floor (a flat frame has no gain to correct)
_THUMB = 16  # side of the cut-detection thumbnail


@dataclass(frozen=True)
class DeflickerConfig:
    """Settings of the deflicker filter (see the module docstring for the symbols)."""

    strength: float = 1.0  # λ: 0 leaves the video unchanged, 1 applies the full correction
    sigma: float = 6.0  # σ of the temporal Gaussian, in frames
    cut_threshold: float = 0.65  # mean |Δ| of normalised thumbnails that starts a new shot
    flow: bool = False  # measure exposure changes on flow-matched pixels
    flow_size: int = 64  # short side (pixels) at which flow-guided statistics are measured

    def __post_init__(self) -> None:
        checks = {
            "strength": isinstance(self.strength, (int, float)) and 0.0 <= self.strength <= 1.0,
            "sigma": isinstance(self.sigma, (int, float)) and math.isfinite(self.sigma) and self.sigma > 0,
            "cut_threshold": isinstance(self.cut_threshold, (int, float)) and self.cut_threshold > 0,
            "flow_size": isinstance(self.flow_size, int) and self.flow_size >= 16,
        }
        ranges = {"strength": "in [0, 1]", "sigma": "> 0", "cut_threshold": "> 0", "flow_size": "an integer >= 16"}
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"deflicker {name} must be {ranges[name]}, got {getattr(self, name)!r}")


@dataclass
class DeflickerPlan:
    """The per-frame correction ``y_t = gain_t · x_t + offset_t`` (``(T, C)`` each) and the shots found."""

    config: DeflickerConfig
    gains: torch.Tensor
    offsets: torch.Tensor
    cuts: list[int] = field(default_factory=list)  # first frame of each shot after the first

    @property
    def num_frames(self) -> int:
        return self.gains.shape[0]

    def to_dict(self) -> dict:
        """What a sidecar records of the run."""
        return {**asdict(self.config), "num_frames": self.num_frames, "cuts": list(self.cuts)}


def _moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation of ``(C, H, W)`` in float64."""
    x = x.double().flatten(1)
    return x.mean(1), x.std(1, correction=0).clamp_min(_EPS)


def _normalised(x: torch.Tensor) -> torch.Tensor:
    """``(x − mean) / std`` per channel: invariant to any per-channel affine exposure change."""
    mean, std = _moments(x)
    return ((x.double() - mean[:, None, None]) / std[:, None, None]).float()


def _thumbnail(x: torch.Tensor, short_side: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    scale = min(1.0, short_side / min(h, w))
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return F.adaptive_avg_pool2d(x[None].float(), size)[0]


def _affine_fit(cur: torch.Tensor, prev: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``a, b`` with ``cur ≈ a · prev + b`` on ``mask``, by matching the first two moments
    (symmetric in the noise of both frames, unlike least squares), then again on the pixels whose residual
    is within 2.5 median absolute residuals (occlusions and flow failures drop out)."""
    c = cur.double().flatten(1)
    p = prev.double().flatten(1)
    m = mask.flatten().clone()
    for _ in range(2):
        if int(m.sum()) < 16:  # too few matched pixels: assume no exposure change
            return torch.ones(c.shape[0], dtype=torch.float64), torch.zeros(c.shape[0], dtype=torch.float64)
        a = c[:, m].std(1) / p[:, m].std(1).clamp_min(_EPS)
        b = c[:, m].mean(1) - a * p[:, m].mean(1)
        resid = (c - a[:, None] * p - b[:, None]).abs().sum(0)
        m = mask.flatten() & (resid <= 2.5 * resid[m].median() + 1e-6)
    return a, b


def _flow_step(cur: torch.Tensor, prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exposure change ``(a, b)`` from thumbnail ``prev`` to ``cur`` on flow-matched pixels."""
    to_unit = lambda z: (0.5 + 0.15 * z).clamp(0, 1)  # noqa: E731 (normalised frames in the flow's range)
    flow = estimate_flow(to_unit(_normalised(cur))[None], to_unit(_normalised(prev))[None],  # cur(p) ≈ prev(p+f)
                         warps=2, iterations=10)  # small frames: a coarse flow finds the corresponding pixels
    h, w = cur.shape[-2:]
    xs = torch.arange(w).view(1, w) + flow[0, 0]
    ys = torch.arange(h).view(h, 1) + flow[0, 1]
    inside = (xs >= 0) & (xs <= w - 1) & (ys >= 0) & (ys <= h - 1) & torch.isfinite(flow[0]).all(0)
    return _affine_fit(cur, warp(prev[None], flow)[0], inside)


def _smooth(values: torch.Tensor, cuts: list[int], sigma: float) -> torch.Tensor:
    """Gaussian smoothing along frames of ``(T, C)`` values, renormalised at the ends of each shot."""
    out = torch.empty_like(values)
    bounds = [0, *cuts, values.shape[0]]
    radius = max(1, math.ceil(3 * sigma))
    k = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (k / sigma) ** 2)
    for s, e in itertools.pairwise(bounds):
        seg = values[s:e].T[:, None]  # (C, 1, L)
        ones = torch.ones_like(seg[:1])
        num = F.conv1d(F.pad(seg, (radius, radius)), kernel.view(1, 1, -1))
        den = F.conv1d(F.pad(ones, (radius, radius)), kernel.view(1, 1, -1))
        out[s:e] = (num / den)[:, 0].T
    return out


def plan_deflicker(frames: Iterable[torch.Tensor], config: DeflickerConfig | None = None) -> DeflickerPlan:
    """Read ``(C, H, W)`` frames in [0, 1] once and return the per-frame correction (first pass)."""
    config = config or DeflickerConfig()
    # python floats, not tensors: thousands of small tensors kept between per-frame buffers fragment the
    # heap so that it never shrinks (measured: +0.6 MiB per frame), which would defeat the streaming
    centres: list[list[float]] = []
    log_scales: list[list[float]] = []
    m = ls = None
    cuts: list[int] = []
    prev_thumb = prev_small = None
    shape = None
    for t, frame in enumerate(frames):
        if frame.ndim != 3 or (shape is not None and frame.shape != shape):
            raise ValueError(f"frame {t} has shape {tuple(frame.shape)}; expected {shape or '(C, H, W)'}")
        shape = frame.shape
        thumb = _thumbnail(_normalised(frame), _THUMB)
        new_shot = prev_thumb is None or (thumb - prev_thumb).abs().mean().item() > config.cut_threshold
        if t and new_shot:
            cuts.append(t)
        small = _thumbnail(frame, config.flow_size) if config.flow else None
        if config.flow and not new_shot:
            a, b = _flow_step(small, prev_small)
            m, ls = a * m + b, torch.log(a.clamp_min(_EPS)) + ls
        else:
            mean, std = _moments(frame if not config.flow else small)
            m, ls = mean, torch.log(std)
        centres.append(m.tolist())
        log_scales.append(ls.tolist())
        prev_thumb, prev_small = thumb, small
    if not centres:
        raise ValueError("the video has no frames")
    m, ls = torch.tensor(centres, dtype=torch.float64), torch.tensor(log_scales, dtype=torch.float64)
    m_s, ls_s = _smooth(m, cuts, config.sigma), _smooth(ls, cuts, config.sigma)
    gain = torch.exp(ls_s - ls)
    lam = float(config.strength)
    gains = 1 + lam * (gain - 1)  # y = x + λ(m̃ + (x − m) s̃/s − x)
    offsets = lam * (m_s - m * gain)
    return DeflickerPlan(config, gains, offsets, cuts)


def apply_deflicker(frames: Iterable[torch.Tensor], plan: DeflickerPlan) -> Iterator[torch.Tensor]:
    """Correct each ``(C, H, W)`` frame as it passes (second pass); output clamped to [0, 1]."""
    n = 0
    for t, frame in enumerate(frames):
        if t >= plan.num_frames:
            raise ValueError(f"more frames than the {plan.num_frames} planned")
        g = plan.gains[t].to(frame.device, torch.float32)[:, None, None]
        o = plan.offsets[t].to(frame.device, torch.float32)[:, None, None]
        yield (frame.float() * g + o).clamp_(0, 1)
        n = t + 1
    if n != plan.num_frames:
        raise ValueError(f"{n} frames read, but {plan.num_frames} planned")


def deflicker_frames(source: Callable[[], Iterable[torch.Tensor]], config: DeflickerConfig | None = None,
              ) -> tuple[DeflickerPlan, Iterator[torch.Tensor]]:
    """Deflicker a re-readable frame source (``source()`` starts a new pass): the plan, and the corrected
    frames as an iterator (nothing is corrected before it is consumed)."""
    plan = plan_deflicker(source(), config)
    return plan, apply_deflicker(source(), plan)


def deflicker_video(video: torch.Tensor, config: DeflickerConfig | None = None) -> tuple[torch.Tensor, DeflickerPlan]:
    """Deflicker a clip held in memory, ``(T, C, H, W)`` in [0, 1]: the corrected clip and its plan."""
    if video.ndim != 4 or video.shape[0] == 0:
        raise ValueError(f"video must be (T >= 1, C, H, W), got {tuple(video.shape)}")
    plan, out = deflicker_frames(lambda: iter(video), config)
    return torch.stack(list(out)), plan
