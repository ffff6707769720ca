"""SV4D / SV4D 2.0 sampling plans: variants, cameras, windows and guidance scales (no networks, no tensors of
pixels).

SV4D (Xie et al. 2024) turns a monocular video of ``N = 21`` frames into ``V = 8`` novel-view videos. The
network denoises one window of ``T`` frames × ``V`` views at a time, the ``T·V`` latents flattened t-major
(row ``t·V + v``). SV4D's windows (Sec. 3.3, "sampling"): SV3D_u renders the orbit of frame 0 (the reference
views), an *anchor* pass renders frames ``T−1, 2(T−1), …, N−1`` conditioned on those views, then *dense*
windows ``t0 … t0+T−1`` fill the gaps, each step alternating between conditioning on the views of frame
``t0`` (frames in order) and those of frame ``t0+T−1`` (frames reversed). SV4D 2.0 (Yao et al. 2025) drops
SV3D: windows run left to right, the first one with its reference-view latents zeroed and each later one
conditioned on the views the previous window rendered at its first frame.

Everything here follows Stability's scripts ``simple_video_sample_4d.py`` / ``simple_video_sample_4d2.py``
(defaults, camera conventions, window starts); :mod:`vidiff.pipelines.sv4d` runs the plans.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from vidiff.diffusion import linear_frame_scales, spatiotemporal_scales
from vidiff.pipelines.sv3d import Angles, Orbit, sv3d_orbit
from vidiff.utils import timestep_embedding

SIGMA_DIM, ANGLE_DIM = 256, 512  # vector = [cond σ 256 | polar 512 | azimuth 512]
SV3D_ORBIT_FRAMES = 21  # SV4D: the SV3D_u orbit of frame 0, subsampled to the reference views
SV3D_SUBSAMPLED = (0, 2, 5, 7, 9, 12, 14, 16, 19)  # simple_video_sample_4d.py's ``subsampled_views``
SV4D_FRAMES = 21  # frames of the input and output videos (the scripts' ``n_frames``)
COND_SIGMA = 1e-5  # noise level of the conditioning images: sgm's ``ZeroSampler`` returns 1e-5, not 0


@dataclass(frozen=True)
class SV4DVariant:
    """One released model's sampling recipe (the scripts' constants and defaults).

    ``frames``/``views``: the window ``T × V``; ``cameras``: how many camera values the user gives (SV4D: the
    21 views of the SV3D orbit; SV4D 2.0: the input view plus the ``V`` novel ones); ``guidance``: ``linear``
    over the ``T·V`` latents or ``spatiotemporal``; ``relative_polar``: SV4D 2.0's polar is relative to the
    input view's (``p − p₀ + π/2``); ``stride``: window step of SV4D 2.0 (``T``, or ``T − 1`` to share a frame).
    """

    name: str
    frames: int
    views: int
    num_inference_steps: int
    guidance: str
    min_guidance_scale: float
    max_guidance_scale: float
    elevation: float
    azimuths: tuple[float, ...] | None  # None: SV3D's orbit ``linspace(0, 360, 22)[1:] mod 360``
    relative_polar: bool
    uses_sv3d: bool
    stride: int
    sigma_min: float = 0.002
    sigma_max: float = 700.0
    rho: float = 7.0
    orbit_index: tuple[int, ...] = SV3D_SUBSAMPLED  # SV4D: the input view and the V novel ones in the orbit
    orbit_frames: int = SV3D_ORBIT_FRAMES

    def __post_init__(self) -> None:
        if self.uses_sv3d and len(self.orbit_index) != self.views + 1:
            raise ValueError(f"{self.name}: orbit_index must list the input view and {self.views} views, got "
                             f"{self.orbit_index}")
        if self.guidance not in ("linear", "spatiotemporal"):
            raise ValueError(f"{self.name}: guidance must be linear or spatiotemporal, got {self.guidance!r}")

    @property
    def cameras(self) -> int:
        return self.orbit_frames if self.uses_sv3d else self.views + 1

    @property
    def latents(self) -> int:
        """Latents per window, ``T·V``."""
        return self.frames * self.views

    def scales(self, min_scale: float | None = None, max_scale: float | None = None) -> Tensor:
        """Guidance scale of each latent of a window, ``(T·V,)`` t-major (float32, as sgm's guiders).

        SV4D 2.0's 4-view guider is sgm's LinearPredictionGuider built without ``min_scale``: the ramp starts
        at 1 whatever ``min_cfg`` says; the 8-view guiders are the spatiotemporal ones."""
        lo = self.min_guidance_scale if min_scale is None else min_scale
        hi = self.max_guidance_scale if max_scale is None else max_scale
        if self.guidance == "linear":
            return linear_frame_scales(lo, hi, self.latents)
        return spatiotemporal_scales(lo, hi, self.frames, self.views)


VARIANTS: dict[str, SV4DVariant] = {
    # simple_video_sample_4d.py: T=5, V=8, 20 steps, guider 5 (spatiotemporal) cfg 2.0 (min 1.0), elevation 10
    "sv4d": SV4DVariant("sv4d", 5, 8, 20, "spatiotemporal", 1.0, 2.0, 10.0, None, False, True, 4),
    # simple_video_sample_4d2.py "sv4d2": T=12, V=4, 50 steps, guider 2 (linear) cfg 2.0, windows of stride T
    "sv4d2": SV4DVariant("sv4d2", 12, 4, 50, "linear", 1.0, 2.0, 0.0, (0.0, 60.0, 120.0, 180.0, 240.0),
                         True, False, 12),
    # "sv4d2_8views": T=5, V=8, 50 steps, guider 5 cfg 2.5 / min 1.5, windows sharing one frame
    "sv4d2_8views": SV4DVariant("sv4d2_8views", 5, 8, 50, "spatiotemporal", 1.5, 2.5, 0.0,
                                (0.0, 30.0, 75.0, 120.0, 165.0, 210.0, 255.0, 300.0, 330.0), True, False, 4),
}


def sv4d_cameras(variant: SV4DVariant, elevations: Angles = None, azimuths: Angles = None, *,
                 names: tuple[str, str] = ("elevations", "azimuths")) -> Orbit:
    """The cameras the user asked for (degrees), checked as SV3D's orbit is: one elevation or one per camera
    (in [-90, 90]), one azimuth per camera (``variant.cameras`` of them); unset ones take the script's."""
    elev = variant.elevation if elevations is None else elevations
    azim = variant.azimuths if azimuths is None else azimuths
    try:
        return sv3d_orbit(variant.cameras, elev, azim, names=names)
    except ValueError as e:  # SV3D's orbit counts frames; here each value is a camera
        raise ValueError(str(e).replace(" frames;", f" cameras of {variant.name};").replace(
            "one per frame", "one per camera")) from None


def window_angles(variant: SV4DVariant, orbit: Orbit) -> tuple[Tensor, Tensor]:
    """``(polar, azimuth)`` in radians of the ``V`` novel views, float64 ``(V,)``, as the scripts compute them.

    ``polar = rad(90° − e)``; ``azimuth = rad((a − a_last) mod 360°)``, then relative to camera 0's
    (``mod 2π``). SV4D takes the novel views' cameras at the subsampled orbit indices ``orbit_index``;
    SV4D 2.0 takes cameras 1…V and makes the polar relative too (``p − p₀ + π/2 mod 2π``)."""
    elev = torch.tensor(orbit.elevations_deg, dtype=torch.float64)
    az = torch.tensor(orbit.azimuths_deg, dtype=torch.float64)
    polar = torch.deg2rad(90.0 - elev)
    azim = torch.deg2rad(torch.remainder(az - az[-1], 360.0))
    index = list(variant.orbit_index[1:]) if variant.uses_sv3d else list(range(1, variant.views + 1))
    p, a = polar[index], torch.remainder(azim[index] - azim[0], 2 * math.pi)
    if variant.relative_polar:
        p = torch.remainder(p - polar[0] + math.pi / 2, 2 * math.pi)
    return p, a


def camera_vector(variant: SV4DVariant, polar: Tensor, azimuth: Tensor) -> tuple[Tensor, Tensor]:
    """``(cond, uncond)`` vectors ``(T·V, 1280)`` float32: [σ 256 | polar 512 | azimuth 512], the view values
    tiled over the ``T`` frames (t-major).

    The 256-d part embeds the noise level of the conditioning images, :data:`COND_SIGMA`; the unconditional
    branch zeroes it with the concat latent it belongs to, and keeps the camera."""
    n = variant.latents
    p, a = polar.repeat(variant.frames), azimuth.repeat(variant.frames)
    sigma = timestep_embedding(torch.full((n,), COND_SIGMA, dtype=torch.float32), SIGMA_DIM)
    camera = torch.cat([timestep_embedding(p, ANGLE_DIM), timestep_embedding(a, ANGLE_DIM)], dim=-1)
    return torch.cat([sigma, camera], dim=-1), torch.cat([torch.zeros_like(sigma), camera], dim=-1)


@dataclass(frozen=True)
class Pass:
    """One conditioning of a window: ``frames`` are the input frames of its ``T`` rows (in row order),
    ``view_frame`` the frame whose rendered views are the reference views (``cond_view``), zeroed when
    ``zero_view`` (SV4D 2.0's first window, which has none)."""

    frames: tuple[int, ...]
    view_frame: int
    zero_view: bool = False


@dataclass(frozen=True)
class Window:
    """The frames a window renders (in output order) and its pass(es): one for SV4D 2.0 and the anchor pass;
    for SV4D's dense windows ``(forward, backward)``, alternated step by step (see :func:`pass_for_step`)."""

    frames: tuple[int, ...]
    passes: tuple[Pass, ...]


def sv4d_num_frames(variant: SV4DVariant) -> int:
    """SV4D's video length: ``T`` anchors ``T−1`` frames apart, after frame 0 (21 for ``T = 5``)."""
    return (variant.frames - 1) * variant.frames + 1


def plan_windows(variant: SV4DVariant, num_frames: int) -> list[Window]:
    """The windows in the order they are sampled.

    SV4D: the anchor pass over frames ``T−1, 2(T−1), …`` (reference views at frame 0), then dense windows
    from ``t0 = 0`` in steps of ``T−1``. SV4D 2.0: windows from 0 in steps of ``stride``; one that would run
    past the end is moved back to end at the last frame (the 4-view model's ``{0, 9}`` for 21 frames)."""
    T = variant.frames
    if variant.uses_sv3d:
        if num_frames != sv4d_num_frames(variant):
            raise ValueError(f"{variant.name} renders {sv4d_num_frames(variant)} frames (T={T} anchors {T - 1} "
                             f"apart), got num_frames={num_frames}")
        anchors = tuple(range(T - 1, num_frames, T - 1))
        windows = [Window(anchors, (Pass(anchors, 0),))]
        for t0 in range(0, num_frames - 1, T - 1):
            frames = tuple(range(t0, t0 + T))
            windows.append(Window(frames, (Pass(frames, t0), Pass(frames[::-1], frames[-1]))))
        return windows
    if num_frames < T:
        raise ValueError(f"{variant.name} renders windows of {T} frames: the video needs at least {T} frames, "
                         f"got num_frames={num_frames}")
    last = num_frames - T if variant.stride < T else num_frames - 1
    starts = [min(t0, num_frames - T) for t0 in range(0, last + 1, variant.stride)]
    if starts[-1] + T < num_frames:
        raise ValueError(f"{variant.name}'s windows of {T} frames sharing one frame cover 1 + k·{variant.stride} "
                         f"frames; num_frames={num_frames} would leave the last frames unrendered")
    windows = []
    for t0 in starts:
        frames = tuple(range(t0, t0 + T))
        windows.append(Window(frames, (Pass(frames, t0, zero_view=t0 == 0),)))
    return windows


def pass_for_step(window: Window, step: int) -> Pass:
    """The pass a window's step ``step`` uses: its only one, or SV4D's dense alternation, which starts with the
    backward pass (even steps backward, odd steps forward: ``sv4d_helpers``' ``do_sample_per_step`` loop)."""
    if len(window.passes) == 1:
        return window.passes[0]
    forward, backward = window.passes
    return backward if step % 2 == 0 else forward


def rows(p: Pass, views: int) -> list[int]:
    """For each row ``t·V + v`` of a window's latents, the row of the frame-major ``(T, V)`` window in output
    order it holds: pass ``p``'s frames permute the time axis (reversed for SV4D's backward pass)."""
    order = sorted(p.frames)
    return [order.index(f) * views + v for f in p.frames for v in range(views)]


def pad_frames(count: int, num_frames: int) -> list[int]:
    """The input frame index of each of ``num_frames`` frames, as the scripts read a video: its first
    ``num_frames``; a shorter one is followed by itself reversed, once (``sv4d_helpers.read_video``)."""
    index = list(range(min(count, num_frames)))
    if len(index) < num_frames:
        index = index + index[::-1]
    if len(index) < num_frames:
        raise ValueError(f"the input video has {count} frame(s): it needs at least {(num_frames + 1) // 2} "
                         f"(played forwards then backwards to make {num_frames})")
    return index[:num_frames]


def check_window_inputs(variant: SV4DVariant, frames: Sequence[int]) -> None:
    """A pass conditions on ``T`` frames."""
    if len(frames) != variant.frames:
        raise ValueError(f"{variant.name}: a pass takes {variant.frames} frames, got {len(frames)}")
