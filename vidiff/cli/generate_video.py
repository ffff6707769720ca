"""``vidiff generate --video IN --strength S``: re-generate an existing clip (SDEdit, first frame held clean).

``generate.py`` adds these flags with :func:`add_video_arguments` and hands the run over with
:func:`run_video` when :func:`video_requested`. Everything that can be checked before the model loads
(the strength, the video's readability, frame count and size, the output path) is checked first, so bad
input exits 2 with one line and nothing written. The video and its sidecar are written as ``vidiff
generate`` writes them (atomic output, settings JSON beside it, with a ``video_to_video`` record).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vidiff.cli.generate_post import apply_postprocess, postprocess_config
from vidiff.cli.main import CLIError

DEFAULT_STRENGTH = 0.5


def add_video_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("video-to-video (--video instead of, or with, --image)")
    g.add_argument("--video", default=None,
                   help="input video to re-generate (mp4, webm, gif, a folder of frames); --image, if given, "
                   "replaces its first frame as the conditioning image")
    g.add_argument("--strength", type=float, default=None,
                   help=f"how much of the input to re-generate: 0 keeps it, 1 makes a new video from the first "
                   f"frame (default {DEFAULT_STRENGTH}); the first frame is always kept")
    g.add_argument("--resample", action="store_true",
                   help="fit a video longer than the model's window into one window (evenly spaced frames, a "
                   "lower fps) instead of re-generating every frame as a long video (windows overlapping by "
                   "--overlap frames)")


def video_requested(args: argparse.Namespace) -> bool:
    return getattr(args, "video", None) is not None or getattr(args, "strength", None) is not None


def _check_cheap(args: argparse.Namespace) -> tuple[Path, Path, Path | None, Any, Any]:
    """Every check before the model loads: ``(video, output, image, video_info, settings)``."""
    from vidiff.cli.generate import _check_output, _settings
    from vidiff.io.video import ImageError, VideoError, probe_video, read_image
    from vidiff.pipelines.video_to_video import MIN_FRAMES, check_strength

    if args.video is None:
        raise CLIError("--strength needs --video (the clip to re-generate)")
    if args.output is None:
        raise CLIError("--output is required")
    strength = DEFAULT_STRENGTH if args.strength is None else args.strength
    try:
        args.strength = check_strength(strength)
    except ValueError:
        raise CLIError(f"--strength must be between 0 and 1, got {strength}") from None
    video = Path(args.video)
    try:
        info = probe_video(video)
    except VideoError as e:
        raise CLIError(f"--video {e}") from None
    if info.num_frames < MIN_FRAMES:
        raise CLIError(f"--video {video} has {info.num_frames} frame(s): video-to-video needs at least {MIN_FRAMES}")
    image = None if args.image is None else Path(args.image)
    try:
        if image is not None:
            read_image(image)
    except ImageError as e:
        raise CLIError(f"--image {e}") from None
    output = Path(args.output)
    _check_output(output, {"video": video, "image": image})
    return video, output, image, info, _settings(args)


def run_video(args: argparse.Namespace) -> int:
    video_path, output, image_path, info, settings = _check_cheap(args)
    post = postprocess_config(args)
    from vidiff.cli.generate import _sha256, load_image_pipeline, resolve_device, sidecar_path

    device = resolve_device(args.device)

    import torch
    import torch.nn.functional as F

    from vidiff import __version__
    from vidiff.io.atomic import write_json_atomic
    from vidiff.io.video import VideoError, read_image, read_video, write_video
    from vidiff.io.video_stream import iter_video
    from vidiff.metrics.flow import flow_to_first
    from vidiff.pipelines.video_to_video import check_video_size, describe, video_to_video

    pipe, model = load_image_pipeline(args, device)
    try:
        resolved = pipe._resolve(settings, (info.width, info.height))
    except ValueError as e:
        raise CLIError(str(e)) from None
    try:
        check_video_size(info.width, info.height, resolved.width, resolved.height)
    except ValueError as e:
        raise CLIError(f"--video {video_path}: {e}") from None
    long_video = info.num_frames > resolved.num_frames and not args.resample
    try:
        if long_video:  # every frame, resized as it is decoded (the output size, not the input's, in memory)
            size = (resolved.height, resolved.width)
            frames = torch.cat([F.interpolate(f[None], size=size, mode="bilinear", antialias=True,
                                              align_corners=False) for f in iter_video(video_path)])
            fps = info.fps
        else:  # the frames the model's window takes, evenly spaced over the clip: only those are decoded
            stride = max(1, (info.num_frames - 1) // max(1, resolved.num_frames - 1))
            frames, fps = read_video(video_path, stride=stride, max_frames=resolved.num_frames)
    except VideoError as e:
        raise CLIError(f"--video {e}") from None
    try:
        result = video_to_video(
            pipe, frames, args.strength, fps=fps, image=read_image(image_path) if image_path else None,
            settings=settings, progress=not args.quiet, offload=args.offload, max_memory=args.max_memory,
            vae_tiling=args.vae_tiling, attention_chunk=args.attention_chunk, flow_to_first=flow_to_first,
            long_video=long_video, overlap=args.overlap)
    except ValueError as e:
        raise CLIError(f"--video {video_path}: {e}") from None
    frames, post_record = apply_postprocess(result.frames, post)
    try:
        write_video(frames, output, fps=result.fps)
    except (ValueError, OSError) as e:
        raise CLIError(f"cannot write {output}: {e}") from None
    sidecar = {
        "vidiff_version": __version__, "model": str(model), "video": str(video_path),
        "video_sha256": _sha256(video_path), "output": str(output),
        **({"image": str(image_path), "image_sha256": _sha256(image_path)} if image_path else {}),
        **result.run, "generation_seconds": round(result.seconds, 3), "settings": result.settings.to_dict(),
        "video_to_video": {**result.record, "fps": result.fps}, **post_record,
    }
    try:
        write_json_atomic(sidecar, sidecar_path(output))
    except OSError as e:
        raise CLIError(f"wrote {output}, but not its settings file {sidecar_path(output)}: {e.strerror or e}") from None
    if not args.quiet:
        print(f"wrote {output}: {describe(result)} in {result.seconds:.1f} s; settings in {sidecar_path(output)}")
    return 0
