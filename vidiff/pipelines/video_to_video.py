"""Video-to-video with an image-to-video model: SDEdit (Meng et al. 2022) with the first frame held clean.

SDEdit restyles or re-animates an existing clip by noising it part of the way and denoising it back: the input
video's latents ``z`` become ``x = z + σ_s·ε`` at the level ``σ_s`` that ``strength`` names, and the model's
sampler walks from ``σ_s`` to 0 on a Karras ramp (Karras et al. 2022, eq. 5). ``strength`` is a position on
the log-σ axis, ``σ_s = σ_min·(σ_max/σ_min)^strength``, so equal steps of strength are equal steps of
signal-to-noise ratio in dB: 1 starts at σ_max (a new video from the conditioning image), 0 leaves the input
unchanged, 0.5 is the geometric mean (0.28 for the bundled model, 1.2 for SVD), where motion survives.
(A position on the Karras ramp instead, as diffusers' img2img strength, puts 0.5 at σ = 1.4 and 16: most
of its range destroys the input.) The number of steps is the same fraction of ``num_inference_steps``.

The conditioning image is the input's first frame, or another image (``image``, e.g. a restyled first frame).
That frame is *held clean* through the per-frame noise contract (``vidiff.diffusion.samplers``): its row of
the schedule matrix ``S[frame, step]`` is 0, so its latent is never noised and conditions the other frames as
a known frame, and the result starts exactly where the conditioning image is (frame 0 of the output *is* that
image). ``hold_first=False`` noises every frame: plain SDEdit.

Frame count and fps follow the input. A clip longer than the model's window (``num_frames``) is generated as a
long video (``long_video=True``, the default): windows of the model's length overlapping by ``overlap``
frames, each window's overlap held clean at the previous window's result (the ``chain`` recipe of
:mod:`vidiff.pipelines.long_video`, with the input's latents instead of noise), the conditioning image the
anchor of every window. With ``long_video=False`` it is resampled to one window, uniformly in time, with the
fps lowered so the duration stays the same; the model's fps conditioning is set to that rate unless given.
Latents of the input: the VAE's encoding of each frame, or for a VAE that decodes by warping the conditioning
image (``reference_conditioned``) each frame's flow to the first one, from the ``flow_to_first`` the caller
passes (``vidiff.metrics.flow.flow_to_first``, chained from consecutive flows, which stay small where a
frame's direct flow to frame 0 is too large to estimate; pipelines do not import metrics).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from vidiff.diffusion import CFGDenoiser, Denoiser, frame_scales, karras_sigmas, per_frame, sampler_by_name
from vidiff.pipelines.image_to_video import ImageToVideoPipeline, image_at_size, image_list
from vidiff.pipelines.long_video_pipeline import DEFAULT_OVERLAP
from vidiff.pipelines.offload import on_device
from vidiff.pipelines.settings import GenerationSettings
from vidiff.utils import randn

__all__ = ["MIN_FRAMES", "FlowToFirst", "VideoToVideoOutput", "check_strength", "check_video_size", "describe",
           "start_sigma", "video_to_video"]

MIN_FRAMES = 2
MIN_SIZE_RATIO = 4  # an input smaller than 1/4 of the output size in either dimension is refused


@dataclass
class VideoToVideoOutput:
    """``frames (T, 3, H, W)`` in [0, 1] at ``fps``; ``latents (1, T, C, h, w)`` the sampler's result (None at
    strength 0: nothing is sampled); ``record``: strength, start level, steps, the input frames used."""

    frames: torch.Tensor
    latents: torch.Tensor | None
    fps: float
    settings: GenerationSettings
    run: dict[str, Any]
    record: dict[str, Any]
    seconds: float


def check_strength(strength: float) -> float:
    """``strength`` as a float in [0, 1] (a ValueError naming it otherwise)."""
    value = float(strength)
    if not 0.0 <= value <= 1.0:  # also refuses NaN
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    return value


def check_video_size(width: int, height: int, out_width: int, out_height: int) -> None:
    """Refuse an input too small for the output (less than 1/4 of its size in either dimension)."""
    if width * MIN_SIZE_RATIO < out_width or height * MIN_SIZE_RATIO < out_height:
        raise ValueError(f"video is {width}x{height}, too small for the model's {out_width}x{out_height} output "
                         f"(at least {math.ceil(out_width / MIN_SIZE_RATIO)}x"
                         f"{math.ceil(out_height / MIN_SIZE_RATIO)} needed)")


def start_sigma(strength: float, sigma_min: float, sigma_max: float) -> float:
    """The level ``strength`` names: ``σ_min·(σ_max/σ_min)^strength`` (log-linear; σ_max at 1)."""
    return sigma_min * (sigma_max / sigma_min) ** strength


def window_starts(total: int, window: int, overlap: int) -> list[int]:
    """First frames of the windows that cover ``total`` frames, each overlapping the previous by at least
    ``overlap`` (the last one ends on the last frame)."""
    if not 0 < overlap < window:
        raise ValueError(f"overlap {overlap} must be between 1 and {window - 1} (the window is {window} frames)")
    starts = [0]
    while starts[-1] + window < total:
        starts.append(min(starts[-1] + window - overlap, total - window))
    return starts


def _frame_indices(total: int, window: int) -> list[int]:
    """``window`` frames of ``total``, evenly spaced from the first to the last (all of them if it fits)."""
    if total <= window:
        return list(range(total))
    return [round(i * (total - 1) / (window - 1)) for i in range(window)]


def _denoiser(pipe: ImageToVideoPipeline, uncond: Any, s: GenerationSettings) -> Any:
    """The UNet under the model's scaling, guided with its per-frame ramp as the pipeline guides it."""
    denoiser = Denoiser(pipe.unet, pipe.scaling)
    if s.max_guidance_scale <= 1:
        return denoiser
    ramp = frame_scales(pipe.family.guidance_ramp, s.min_guidance_scale, s.max_guidance_scale, s.num_frames)
    return CFGDenoiser(denoiser, uncond, per_frame(ramp).to(pipe.device))


FlowToFirst = Callable[[torch.Tensor], torch.Tensor]  # video (T, 3, H, W) -> flow of each frame to frame 0


def _input_latents(pipe: ImageToVideoPipeline, frames: torch.Tensor, reference: torch.Tensor,
                   flow_to_first: FlowToFirst | None) -> torch.Tensor:
    """Latents ``(1, T, C, h, w)`` of ``frames (T, 3, H, W)`` in [0, 1] with frame 0 that of ``reference``
    (``(1, 3, H, W)`` in [-1, 1]): the VAE's, or for a warping VAE each frame's flow to frame 0 (the motion
    of the input; the conditioning image's own flow is zero)."""
    vae = pipe.vae
    if getattr(vae, "reference_conditioned", False):
        if flow_to_first is None:
            raise ValueError("this model's VAE encodes motion as flow: pass flow_to_first "
                             "(vidiff.metrics.flow.flow_to_first)")
        flows = flow_to_first(frames)[1:]  # frame_t(q) ≈ frame_0(q + f_t(q))
        z = vae.encode_flow(flows) * vae.scaling_factor
        return torch.cat([torch.zeros_like(z[:1]), z])[None].to(pipe.device)
    first = pipe._image_latents(reference)  # (1, C, h, w), scaled
    with on_device(vae, pipe.device, pipe._offload):
        rest = [vae.encode_latents((chunk * 2 - 1).to(pipe.device, vae.dtype)).float()
                for chunk in frames[1:].split(8)]
    return torch.cat([first, *rest])[None]


@torch.no_grad()
def video_to_video(
    pipe: ImageToVideoPipeline, video: torch.Tensor, strength: float, *, fps: float,
    image: Any = None, hold_first: bool = True, settings: GenerationSettings | None = None,
    generator: torch.Generator | None = None, progress: bool = True, offload: str | None = None,
    max_memory: str | int | None = None, vae_tiling: bool = False, attention_chunk: int | None = None,
    flow_to_first: FlowToFirst | None = None, long_video: bool = True, overlap: int | None = None,
) -> VideoToVideoOutput:
    """Re-generate ``video (T, 3, H, W)`` in [0, 1] (at ``fps``) with ``pipe``'s model at ``strength``.

    ``image``: the conditioning image (default: the video's first frame); ``settings``: as ``pipe(...)``'s
    (``num_frames``: the window the input is resampled to, default the model's; ``fps``: default the
    resampled input's); ``flow_to_first``: needed for a flow-warping VAE (``video[t](p) ≈ video[0](p + f_t(p))``);
    ``long_video``/``overlap``: a longer input as overlapping windows (see the module docstring; default overlap
    ``DEFAULT_OVERLAP``, at most the window less one).
    Bad input (strength, too few frames, too small) is a ValueError before any work.
    """
    start_time = time.perf_counter()
    strength = check_strength(strength)
    if video.ndim != 4 or video.shape[1] != 3 or not video.is_floating_point():
        raise ValueError(f"video must be a float (T, 3, H, W) tensor in [0, 1], got {video.dtype} "
                         f"{tuple(video.shape)}")
    if video.shape[0] < MIN_FRAMES:
        raise ValueError(f"video has {video.shape[0]} frame(s): video-to-video needs at least {MIN_FRAMES}")
    settings = settings or GenerationSettings()
    window = settings.num_frames or pipe.default_settings(settings.behaviour or "diffusers").num_frames
    indices = list(range(video.shape[0])) if long_video else _frame_indices(video.shape[0], window)
    overlap = min(DEFAULT_OVERLAP, window - 1) if overlap is None else overlap
    starts = window_starts(len(indices), window, overlap) if len(indices) > window else [0]
    out_fps = fps * (len(indices) - 1) / (video.shape[0] - 1)  # the same duration, first to last frame
    given = GenerationSettings(num_frames=min(len(indices), window), fps=settings.fps or max(1, round(out_fps)))
    cond_image = image_list(image if image is not None else video[indices[0]])[0]
    in_size = (video.shape[-1], video.shape[-2])
    s = pipe._resolve(settings.merged(given), in_size)
    check_video_size(*in_size, s.width, s.height)
    plan = pipe._choose_plan(s, offload=offload, max_memory=max_memory, vae_tiling=vae_tiling,
                             attention_chunk=attention_chunk)
    if plan.offload != pipe._offload:
        pipe._place(plan.offload)
    generator = generator or torch.Generator("cpu").manual_seed(s.seed)

    frames = F.interpolate(video[indices].float().cpu(), size=(s.height, s.width), mode="bilinear",
                           antialias=True, align_corners=False).clamp(0, 1)
    # the conditioning image at the output size, (1, 3, H, W) in [-1, 1]: the input's own first frame, or
    # ``image`` resized as the image-to-video pipeline resizes its image
    reference = frames[:1] * 2 - 1 if image is None else image_at_size(cond_image, s.height, s.width)
    sigma_s = start_sigma(strength, pipe.sigma_min, pipe.sigma_max)
    steps = max(1, math.ceil(strength * s.num_inference_steps)) if strength > 0 else 0
    record = {"strength": strength, "sigma_start": sigma_s if steps else 0.0, "steps": steps,
              "source_frames": indices, "source_fps": fps, "held_frames": [0] if hold_first else [],
              "conditioning": "image" if image is not None else "first frame",
              **({"windows": [[a, a + s.num_frames - 1] for a in starts], "overlap": overlap} if len(starts) > 1
                 else {})}
    z = _input_latents(pipe, frames, reference, flow_to_first) if steps else None
    if hold_first and image is not None:
        frames[0] = reference[0] / 2 + 0.5  # the conditioning image replaces the input's first frame
    if z is None:  # strength 0: the input, unchanged
        return VideoToVideoOutput(frames, None, out_fps, s, pipe.run_record(plan), record,
                                  time.perf_counter() - start_time)
    base = z[:, :1] if pipe.residual else torch.zeros_like(z[:, :1])  # a residual model: video minus image

    cond, uncond = pipe._condition([cond_image], reference, s, generator)
    sigmas = karras_sigmas(steps, pipe.sigma_min, sigma_s, pipe.family.rho)
    denoiser, sample = _denoiser(pipe, uncond, s), sampler_by_name(s.sampler)
    final = z.clone()  # frames [0, done) hold their final latents
    done = 1 if hold_first else 0
    bar = tqdm(total=steps * len(starts), disable=not progress, leave=False, desc="video-to-video")
    with on_device(pipe.unet, pipe.device, pipe._offload), pipe.unet_chunking(plan.attention_chunk):
        for a in starts:
            held = max(0, done - a)  # the window's first frames: already final (the overlap, or frame 0)
            schedule = sigmas[None].repeat(s.num_frames, 1)  # S[frame, step]
            schedule[:held] = 0.0  # held clean: never noised, they condition the others as known frames
            noise = randn((1, s.num_frames, *z.shape[2:]), generator, device=pipe.device, dtype=torch.float32)
            # SDEdit, x = z + σ_s·ε; the held frames enter as they are
            x = final[:, a:a + s.num_frames] - base + schedule[:, 0].to(pipe.device).reshape(1, -1, 1, 1, 1) * noise
            x = sample(denoiser, x, schedule.to(pipe.device), cond=cond, generator=generator,
                       callback=lambda info: bar.update(1))
            final[:, a + held:a + s.num_frames] = x[:, held:] + base
            done = a + s.num_frames
    bar.close()
    warp_reference = reference if getattr(pipe.vae, "reference_conditioned", False) else None
    out = pipe._decode(final, s, plan, progress, warp_reference)[0]
    out = (out.float().cpu() / 2 + 0.5).clamp(0, 1)
    if hold_first:
        out[0] = frames[0]  # held clean: the conditioning image itself, not its VAE round trip
    return VideoToVideoOutput(out, final - base, out_fps, s, pipe.run_record(plan), record,
                              time.perf_counter() - start_time)


def describe(output: VideoToVideoOutput) -> str:
    """One line for the CLI: what was done to how many frames."""
    r = output.record
    return (f"strength {r['strength']:g} ({r['steps']} steps from sigma {r['sigma_start']:.3g}) on "
            f"{len(r['source_frames'])} frames at {output.fps:.3g} fps")

