"""Long videos with an :class:`~vidiff.pipelines.image_to_video.ImageToVideoPipeline` (any SVD-class model).

The modes of :mod:`vidiff.pipelines.long_video` run on the pipeline's own parts: its conditioning of the
image (the anchor of every window), its denoiser and guidance ramp, its VAE. Frames are decoded as soon as
a run of them is final and handed to ``on_frames`` (8-bit), so the float tensors alive at any time are
those of one window: peak memory does not grow with the length of the video.

First-and-last-frame video: ``end_image`` (or its latent, ``end_latent``) is held as the last frame, and
windows that end on it are denoised in both directions (forward conditioned on the start image, reversed
on the end image: :class:`~vidiff.pipelines.long_video.BidirectionalDenoiser`). A model whose VAE decodes by
warping the start image (``reference_conditioned``) cannot be conditioned on another image, so there the end
frame is held (its latent is its flow to the start image, which the caller provides), the windows holding both
ends start on the line between them (``bridge_sigma``), and the frames are decoded from both images
(``FlowWarpAutoencoder.decode_between``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import PIL.Image
import torch
from tqdm.auto import tqdm

from vidiff.conditioning import Cond
from vidiff.diffusion import CFGDenoiser, Denoiser, frame_scales, karras_sigmas, per_frame
from vidiff.pipelines.image_to_video import ImageInput, ImageToVideoPipeline, image_at_size, image_list
from vidiff.pipelines.long_video import LONG_MODES, WindowModel, check_overlap, generate_latents, plan_indices
from vidiff.pipelines.offload import on_device
from vidiff.pipelines.settings import GenerationSettings

logger = logging.getLogger(__name__)

FrameSink = Callable[[torch.Tensor], None]

DEFAULT_LONG_MODE = "fifo"  # lowest seam ratio on the bundled model in every run (README, "Long videos")
DEFAULT_OVERLAP = 4
# A warped-reference model cannot be conditioned on an end image, only hold its latent: from pure noise its
# frames ignored the held end and jumped onto it at the last step (largest step 3.6-5.1x the median, 5-6 of 13
# steps along a 12-px pan). Its windows holding both ends start on the line between them at this level instead
# (long_video.WindowModel.bridge_sigma): at 0.3 every step goes the pan's way and the largest is 1.3-2.0x the
# median (astronaut, coins, chelsea, motorcycle_left; seeds 0, 1); 1.0 let the jump back (up to 3.7x).
END_BRIDGE_SIGMA = 0.3


@dataclass(frozen=True)
class LongRun:
    """How a long run is laid out: ``num_frames`` in all, windows of ``window`` frames (the model's clip
    length), ``mode``, ``overlap``, and ``settings`` for one window."""

    num_frames: int
    window: int
    mode: str
    overlap: int
    settings: GenerationSettings


def plan_long_run(pipe: ImageToVideoPipeline, settings: GenerationSettings, *, mode: str | None = None,
                  overlap: int | None = None, end_image: bool = False) -> LongRun:
    """The one place the defaults of a long run are chosen (the CLI, the service and the Python API call it):
    windows of the model's clip length, ``DEFAULT_LONG_MODE`` (keyframes when the video ends on a given image:
    its first pass spans the whole video with both ends), ``DEFAULT_OVERLAP``. ``ValueError`` names a bad
    overlap; a video no longer than one window is one keyframes window (a first-and-last-frame clip)."""
    window = pipe.default_settings(settings.behaviour or "diffusers").num_frames
    num_frames = settings.num_frames or window
    mode = mode or ("keyframes" if end_image else DEFAULT_LONG_MODE)
    overlap = overlap if overlap is not None else min(DEFAULT_OVERLAP, window - 1)
    if not 0 < overlap < window:  # refused in every mode: only chain uses it, but a bad value is a mistake
        raise ValueError(f"--overlap {overlap} must be smaller than the segment length {window} (the model's "
                         "clip length)")
    if num_frames <= window:
        window, mode = num_frames, "keyframes"
    check_long_options(num_frames, window, mode, overlap)
    return LongRun(num_frames, window, mode, overlap, settings.merged(GenerationSettings(num_frames=window)))


def is_long(pipe: ImageToVideoPipeline, settings: GenerationSettings, mode: str | None = None,
            end_image: bool = False) -> bool:
    """Whether a run needs the long-video path: more frames than the model's window, a mode, or an end image."""
    window = pipe.default_settings(settings.behaviour or "diffusers").num_frames
    return end_image or mode is not None or (settings.num_frames is not None and settings.num_frames > window)


@dataclass
class LongVideoResult:
    """What a long run made: ``num_frames`` frames written to the sink, the ``settings`` of one window
    (``num_frames`` = the window), the mode, and the frame indices a sidecar records."""

    num_frames: int
    settings: GenerationSettings
    mode: str
    record: dict[str, Any]
    run: dict[str, Any]
    seconds: float


def check_long_options(num_frames: int, window: int, mode: str, overlap: int) -> None:
    """Refuse bad long-video options before any work (``ValueError`` naming the value)."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if mode not in LONG_MODES:
        raise ValueError(f"unknown long-video mode {mode!r}; valid: {', '.join(LONG_MODES)}")
    if mode == "chain":
        check_overlap(window, overlap)


class _Conditioning:
    """Each window's ``Cond``: the start image's, with the fps of the window's frame spacing (keyframes far
    apart are a low-fps clip); the end image's for reversed windows that start on the last frame."""

    def __init__(self, pipe: ImageToVideoPipeline, s: GenerationSettings, cond: Cond,
                 end_cond: Cond | None, last: int) -> None:
        self.pipe, self.s, self.cond, self.end_cond, self.last = pipe, s, cond, end_cond, last
        self.cache: dict[float, Cond] = {}

    def _at_fps(self, cond: Cond, frames: list[int]) -> Cond:
        spacing = abs(frames[-1] - frames[0]) / max(1, len(frames) - 1)
        fps = max(1, round(self.s.fps / max(spacing, 1.0)))
        if fps == self.s.fps or cond.vector is None:
            return cond
        vector = self.pipe.conditioner.vector(
            cond.batch_size, dtype=self.pipe.dtype, device=cond.vector.device, fps=fps,
            motion_bucket_id=self.s.motion_bucket_id, noise_aug_strength=self.s.noise_aug_strength)
        return replace(cond, vector=vector.to(cond.vector.dtype))

    def forward(self, frames: list[int]) -> Cond:
        return self._at_fps(self.cond, list(frames))

    def reverse(self, frames: list[int]) -> Cond | None:
        if self.end_cond is None or frames[0] != self.last:
            return None
        return self._at_fps(self.end_cond, list(frames))


def _denoiser(pipe: ImageToVideoPipeline, s: GenerationSettings) -> Callable[..., torch.Tensor]:
    """The pipeline's denoiser with its guidance ramp laid over each window's frames."""
    base = Denoiser(pipe.unet, pipe.scaling)
    if s.max_guidance_scale <= 1:
        return base

    def guided(x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        ramp = frame_scales(pipe.family.guidance_ramp, s.min_guidance_scale, s.max_guidance_scale, x.shape[1])
        return CFGDenoiser(base, cond.zeros_like(), per_frame(ramp).to(x.device))(x, sigma, cond)

    return guided


def generate_long_video(
    pipe: ImageToVideoPipeline, image: ImageInput, num_frames: int, on_frames: FrameSink, *,
    mode: str = "chain", overlap: int = 4, end_image: PIL.Image.Image | torch.Tensor | None = None,
    end_latent: torch.Tensor | None = None, settings: GenerationSettings | None = None,
    generator: torch.Generator | None = None, progress: bool = True, offload: str | None = None,
    max_memory: str | int | None = None, vae_tiling: bool = False, attention_chunk: int | None = None,
    partitions: int = 1, match_stats: bool = True, bridge_sigma: float | None = END_BRIDGE_SIGMA,
) -> LongVideoResult:
    """Generate ``num_frames`` frames from one image, window by window; frames ``(n, 3, H, W)`` uint8 go to
    ``on_frames`` in order as they are final. ``settings`` are those of one window (the model's clip length
    unless ``settings.num_frames`` says otherwise); ``mode`` one of ``chain``, ``keyframes``, ``fifo``.
    ``bridge_sigma``: with a held end frame on a warped-reference model, the level at which windows holding both
    ends start on the line between them (None: from pure noise; see ``END_BRIDGE_SIGMA``)."""
    start_time = time.perf_counter()
    images = image_list(image)
    if len(images) != 1:
        raise ValueError(f"a long video starts from one image, got {len(images)}")
    first = images[0]
    size = first.size if isinstance(first, PIL.Image.Image) else (first.shape[-1], first.shape[-2])
    s = pipe._resolve(settings or GenerationSettings(), size)
    window = s.num_frames
    check_long_options(num_frames, window, mode, overlap)
    plan = pipe._choose_plan(s, offload=offload, max_memory=max_memory, vae_tiling=vae_tiling,
                             attention_chunk=attention_chunk)
    if plan.offload != pipe._offload:
        pipe._place(plan.offload)
    generator = generator or torch.Generator("cpu").manual_seed(s.seed)
    resized = image_at_size(first, s.height, s.width)
    cond, _ = pipe._condition(images, resized, s, generator)
    reference = getattr(pipe.vae, "reference_conditioned", False)
    known: dict[int, torch.Tensor] = {}
    f = pipe.vae.config.downsample_factor
    shape = (1, pipe.unet.config.out_channels, s.height // f, s.width // f)
    if getattr(pipe.vae, "zero_first_latent", False):
        known[0] = torch.zeros(shape, device=pipe.device)
    end_cond = end = None
    if end_image is not None:
        end = image_at_size(image_list(end_image)[0], s.height, s.width)
        if not reference:
            end_cond, _ = pipe._condition(image_list(end_image), end, s, generator)
            end_latent = pipe._image_latents(end) if end_latent is None else end_latent
    if end_latent is not None:
        known[num_frames - 1] = end_latent.to(pipe.device).float().reshape(shape)
    held_end = reference and end_latent is not None  # a warped-reference model holding its end frame
    conds = _Conditioning(pipe, s, cond, end_cond, num_frames - 1)
    steps = tqdm(disable=not progress, leave=False, desc="steps", unit="step")
    model = WindowModel(
        denoiser=_denoiser(pipe, s), cond=conds.forward, reverse_cond=conds.reverse,
        sigmas=karras_sigmas(s.num_inference_steps, pipe.sigma_min, pipe.sigma_max, pipe.family.rho),
        shape=shape, window=window, sampler=s.sampler, generator=generator, known=known,
        callback=lambda info: steps.update(1), device=pipe.device,
        bridge_sigma=bridge_sigma if held_end else None)
    bar = tqdm(total=num_frames, disable=not progress, desc=f"{mode} frames", unit="frame")
    # a warped-reference VAE draws the frames of a clip with a held end image from both images (decode_between)
    ends = (end, known[num_frames - 1], num_frames) if held_end and end is not None else None
    decode = _Decoder(pipe, s, plan, resized if reference else None, on_frames, window, end=ends)
    with on_device(pipe.unet, pipe.device, pipe._offload), pipe.unet_chunking(plan.attention_chunk):
        for first_index, latents in generate_latents(model, num_frames, mode, overlap=overlap,
                                                     match_stats=match_stats, partitions=partitions):
            decode.add(first_index, latents)
            bar.update(latents.shape[1])
    decode.flush()
    bar.close()
    steps.close()
    record = {"long_mode": mode, "num_frames": num_frames, "window": window,
              **({"overlap": overlap} if mode == "chain" else {}),
              **({"partitions": partitions} if mode == "fifo" else {}),
              **plan_indices(mode, num_frames, window, overlap), "end_frame_held": end_latent is not None,
              **({"bridge_sigma": model.bridge_sigma} if model.bridge_sigma is not None else {})}
    return LongVideoResult(num_frames, s, mode, record, pipe.run_record(plan), time.perf_counter() - start_time)


class _Decoder:
    """Decodes finished latents in runs of about one window, with ``context`` earlier latents in front for a
    temporal decoder (their frames are dropped), and passes the 8-bit frames on."""

    def __init__(self, pipe: ImageToVideoPipeline, s: GenerationSettings, plan: Any,
                 reference: torch.Tensor | None, sink: FrameSink, window: int, context: int = 2,
                 end: tuple[torch.Tensor, torch.Tensor, int] | None = None) -> None:
        self.pipe, self.s, self.plan, self.reference, self.sink = pipe, s, plan, reference, sink
        self.window, self.context = window, context
        self.end = end  # (end image, its held latent, frames in the video): decode from both ends
        self.pending: list[torch.Tensor] = []
        self.previous: torch.Tensor | None = None
        self.count = 0

    def add(self, first_index: int, latents: torch.Tensor) -> None:
        if first_index != self.count + sum(p.shape[1] for p in self.pending):
            raise RuntimeError(f"frames arrived out of order: {first_index}")
        self.pending.append(latents)
        if sum(p.shape[1] for p in self.pending) >= self.window:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        z = torch.cat(self.pending, 1)
        ctx = self.previous[:, -self.context:] if self.previous is not None else z[:, :0]
        run = torch.cat([ctx, z], 1)  # absolute frames [count − len(ctx), count + len(z))
        if self.end is None:
            video = self.pipe._decode(run, self.s, self.plan, False, self.reference)
        else:  # frame i leans toward the end image by i / (N − 1)
            image, latent, n = self.end
            first = self.count - ctx.shape[1]
            weights = torch.arange(first, first + run.shape[1], dtype=torch.float64) / max(n - 1, 1)
            device = self.pipe.device
            with on_device(self.pipe.vae, device, self.pipe._offload):
                split = self.pipe.decode_split  # --parallel: each rank draws its frames
                between = split.between if split is not None else self.pipe.vae.decode_latents_between
                video = between(run.float(), self.reference.to(device), image.to(device), latent.float(), weights)
        frames = ((video[0, ctx.shape[1]:].float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).cpu()
        self.sink(frames)
        self.count += z.shape[1]
        self.previous, self.pending = z, []
