"""``vidiff generate --video IN --model SV4D`` : novel-view videos of a video (SV4D / SV4D 2.0).

SV4D (Xie et al. 2024) and SV4D 2.0 (Yao et al. 2025) turn a video of an object into ``V`` videos of it seen
from other cameras. ``generate.py`` hands a run over here when ``--model`` is an SV4D single file
(:func:`sv4d_requested`). The output is a grid video (input view, then the novel views, side by side) at
``--output``, one video per novel view beside it (``OUT_view1.mp4`` …) and the usual JSON sidecar.

``--elevation`` (one value or one per camera, in [-90, 90]) and ``--azimuths`` (one per camera) take SV4D's
21 cameras of the SV3D orbit of frame 0, or SV4D 2.0's input camera plus one per novel view; ``--orbit`` asks
for the script's default azimuths. SV4D needs the SV3D_u model that renders its reference views
(``--sv3d-model``). Everything checkable without loading the model (an image instead of a video, the camera
lists' lengths and ranges, the video's frame count, the output path) fails first, one line, exit 2.
``--max-memory`` chooses the VAE's encode and decode chunks (:mod:`vidiff.pipelines.memory_sv4d`) before any
sampling; the plan and its predicted peak go in the sidecar, and a budget below the most frugal plan is one
line, exit 2.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from vidiff.cli.generate_sv3d import AZIMUTHS_FLAG, ELEVATION_FLAG, _numbers
from vidiff.cli.main import CLIError
from vidiff.pipelines.settings import GenerationSettings

DEFAULT_FPS = 10  # sv4d_helpers.save_video's fps


def add_sv4d_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("SV4D novel-view videos (--video with an SV4D / SV4D 2.0 --model)")
    g.add_argument("--sv3d-model", default=None,
                   help="SV3D_u single file that renders SV4D's reference views of frame 0 (SV4D only)")


def sv4d_requested(args: argparse.Namespace) -> str | None:
    """The SV4D model type of ``--model`` (from its header), or None."""
    from vidiff.pipelines.sv4d import sv4d_model_type

    return sv4d_model_type(args.model) if getattr(args, "model", None) else None


def view_path(output: Path, k: int) -> Path:
    """Where view ``k``'s video goes: ``clip.mp4`` -> ``clip_view1.mp4``."""
    return output.with_name(f"{output.stem}_view{k}{output.suffix}")


def _cameras(args: argparse.Namespace, kind: str) -> Any:
    """The cameras of the run, checked against the model's count (one-line errors naming the flag)."""
    from vidiff.pipelines.sv4d_schedule import VARIANTS, sv4d_cameras

    if args.orbit and args.azimuths is not None:
        raise CLIError(f"--orbit and {AZIMUTHS_FLAG} both set the azimuths: give one of them")
    elev = None if args.elevation is None else _numbers(args.elevation, ELEVATION_FLAG)
    azim = None if args.azimuths is None else _numbers(args.azimuths, AZIMUTHS_FLAG)
    variant = VARIANTS[kind]
    try:
        orbit = sv4d_cameras(variant, elev, azim, names=(ELEVATION_FLAG, AZIMUTHS_FLAG))
    except ValueError as e:
        raise CLIError(str(e)) from None
    return elev, azim, orbit


def _check_cheap(args: argparse.Namespace, kind: str) -> tuple[Path, Path, Any]:
    """Every check before the model loads: ``(video, output, settings)``."""
    from vidiff.cli.generate import _check_output, _settings
    from vidiff.io.video import VideoError, probe_video, video_format_for
    from vidiff.pipelines.sv4d_schedule import SV4D_FRAMES, VARIANTS, pad_frames, plan_windows, sv4d_num_frames

    if args.video is None:
        given = f"--image {args.image}: " if args.image else ""
        raise CLIError(f"{given}{args.model} is an {kind} model, which renders novel views of a video: give --video, "
                       "not an image")
    for flag in ("--image", "--strength", "--prompt", "--batch", "--offload", "--attention-chunk",
                 "--parallel", "--camera", "--lora", "--vae-tiling"):
        if getattr(args, flag[2:].replace("-", "_"), None) not in (None, False, []):
            raise CLIError(f"{flag}: not for SV4D runs ({args.model} is {kind}); give --video and --output only")
    if args.output is None:
        raise CLIError("--output is required")
    if kind == "sv4d" and not args.sv3d_model:
        raise CLIError(f"{args.model} is SV4D, which conditions on the SV3D orbit of frame 0: give --sv3d-model "
                       "(an SV3D_u single file)")
    _cameras(args, kind)
    if args.max_memory is not None:
        from vidiff.pipelines.memory import parse_memory

        try:
            parse_memory(args.max_memory)
        except ValueError as e:
            raise CLIError(f"--max-memory: {e}") from None
    settings = _settings(args)
    variant = VARIANTS[kind]
    n = settings.num_frames or (sv4d_num_frames(variant) if variant.uses_sv3d else SV4D_FRAMES)
    video = Path(args.video)
    try:
        info = probe_video(video)
        plan_windows(variant, n)
        pad_frames(info.num_frames, n)
    except VideoError as e:
        raise CLIError(f"--video {e}") from None
    except ValueError as e:
        raise CLIError(f"--video {video}: {e}") from None
    output = Path(args.output)
    try:
        video_format_for(output)
    except ValueError as e:
        raise CLIError(str(e)) from None
    _check_output(output, {"video": video})
    return video, output, settings


def run_sv4d(args: argparse.Namespace, kind: str) -> int:
    """Render the novel-view videos of ``--video`` (see the module docstring)."""
    video_path, output, settings = _check_cheap(args, kind)
    elev, azim, _ = _cameras(args, kind)
    from vidiff.cli.generate import _sha256, resolve_device, sidecar_path, write_sidecar

    device = resolve_device(args.device)

    import torch
    import torch.nn.functional as F

    from vidiff import __version__
    from vidiff.io.video import VideoError, read_video, write_video
    from vidiff.pipelines.sv4d import SV4DPipeline

    dtype = getattr(torch, args.dtype or ("float16" if device.startswith("cuda") else "float32"))
    try:
        sv3d = None
        if kind == "sv4d":
            from vidiff.pipelines.sv3d import SV3DPipeline

            sv3d = SV3DPipeline.from_pretrained(args.sv3d_model, dtype=dtype, device=device, vae_dtype=torch.float32)
            sv3d.set_progress_bar_config(disable=True)
        pipe = SV4DPipeline.from_single_file(args.model, model_type=kind, sv3d=sv3d, device=device, dtype=dtype)
    except (ValueError, OSError) as e:
        raise CLIError(str(e)) from None
    size = (settings.height or 576, settings.width or 576)
    try:
        frames, fps = read_video(video_path)
    except VideoError as e:
        raise CLIError(f"--video {e}") from None
    frames = F.interpolate(frames, size=size, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    start = time.perf_counter()
    try:
        result = pipe(frames, elevations=elev, azimuths=azim, num_frames=settings.num_frames,
                      num_inference_steps=settings.num_inference_steps,
                      min_guidance_scale=settings.min_guidance_scale, max_guidance_scale=settings.max_guidance_scale,
                      seed=23 if settings.seed is None else settings.seed,
                      decode_chunk_size=settings.decode_chunk_size or 4, max_memory=args.max_memory)
    except ValueError as e:
        raise CLIError(str(e)) from None
    seconds = time.perf_counter() - start
    out_fps = settings.fps or DEFAULT_FPS
    known = {f.name for f in fields(GenerationSettings)}
    views = [view_path(output, k) for k in range(1, result.frames.shape[1])]
    try:
        write_video(result.grid(), output, fps=out_fps)
        for k, path in enumerate(views, start=1):
            write_video(result.view(k), path, fps=out_fps)
    except (ValueError, OSError) as e:
        raise CLIError(f"cannot write {output}: {e}") from None
    sidecar = {
        "vidiff_version": __version__, "model": str(args.model), "video": str(video_path),
        "video_sha256": _sha256(video_path), "output": str(output), "views": [str(p) for p in views],
        **({"sv3d_model": str(args.sv3d_model)} if kind == "sv4d" else {}), **result.run,
        "input_fps": fps, "generation_seconds": round(seconds, 3),
        # generation settings (replayable with --settings), and the SV4D specifics (model type, cameras, ...)
        "settings": {**{k: v for k, v in result.settings.items() if k in known}, "fps": out_fps,
                     "decode_chunk_size": result.run["decode_chunk_size"]},
        "sv4d": {k: v for k, v in result.settings.items() if k not in known},
    }
    write_sidecar(sidecar, output)
    if not args.quiet:
        print(f"wrote {output} ({result.frames.shape[0]} frames, {result.frames.shape[1]} views) and "
              f"{len(views)} view videos in {seconds:.1f} s; settings in {sidecar_path(output)}")
    return 0
