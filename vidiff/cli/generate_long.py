"""``vidiff generate`` beyond the model's clip length, and first-and-last-frame clips (``--end-image``).

``generate.py`` adds these flags with :func:`add_long_arguments`, checks them cheaply with
:func:`check_long_arguments` before loading anything, and hands the run over with :func:`run_long` when
:func:`long_requested` says the run is long (more frames than the model's window, or an end image).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from vidiff.cli.generate_parallel import is_writer, parallel_record
from vidiff.cli.main import CLIError
from vidiff.pipelines.long_video import LONG_MODES
from vidiff.pipelines.long_video_pipeline import DEFAULT_LONG_MODE, DEFAULT_OVERLAP


def add_long_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("long videos (--num-frames beyond the model's clip length) and end images")
    g.add_argument("--long-mode", default=None, choices=LONG_MODES,
                   help=f"how windows of the model's length make a longer video: chain (overlapping windows "
                   f"continue each other's latents), keyframes (keyframes over the whole video, then filled), "
                   f"fifo (diagonal denoising) (default {DEFAULT_LONG_MODE})")
    g.add_argument("--overlap", type=int, default=None,
                   help=f"chain: frames each window shares with the previous one (default {DEFAULT_OVERLAP})")
    g.add_argument("--end-image", default=None,
                   help="image the video ends on (same size as --image); the clip goes from one to the other")


def check_long_arguments(args: argparse.Namespace, image_path: Path) -> None:
    """The long-video flags that can be checked before loading a model (one-line ``CLIError``)."""
    from vidiff.io.video import ImageError, read_image

    start = read_image(image_path)
    image_size = (start.shape[-1], start.shape[-2])
    _replay_long_options(args)
    if args.overlap is not None and args.overlap < 1:
        raise CLIError(f"--overlap must be >= 1, got {args.overlap}")
    if args.end_image is not None:
        try:
            end = read_image(args.end_image)
        except ImageError as e:
            raise CLIError(f"--end-image {e}") from None
        if (end.shape[-1], end.shape[-2]) != image_size:
            raise CLIError(f"--end-image {args.end_image} is {end.shape[-1]}x{end.shape[-2]}, but --image is "
                           f"{image_size[0]}x{image_size[1]}: give an end image of the same size")


def _replay_long_options(args: argparse.Namespace) -> None:
    """A ``--settings`` sidecar of a long run gives its mode and overlap to the options not given (the
    settings file itself was already read and checked by ``generate``)."""
    from vidiff.pipelines.settings import read_sidecar

    if not args.settings:
        return
    recorded = read_sidecar(args.settings).get("long_video") or {}
    if args.long_mode is None and recorded.get("long_mode") in LONG_MODES:
        args.long_mode = recorded["long_mode"]
    if args.overlap is None and isinstance(recorded.get("overlap"), int):
        args.overlap = recorded["overlap"]


def long_requested(args: argparse.Namespace, pipe: Any, settings: Any) -> bool:
    from vidiff.pipelines.long_video_pipeline import is_long

    return is_long(pipe, settings, args.long_mode, args.end_image is not None)


def end_latent(pipe: Any, start: Any, end: Any, height: int, width: int) -> Any:
    """The end image's latent for a VAE that decodes by warping the start image: its flow to the start
    image (``vidiff.metrics.flow``), encoded; None for other VAEs (the pipeline encodes the image)."""
    if not getattr(pipe.vae, "reference_conditioned", False):
        return None
    import torch.nn.functional as F

    from vidiff.metrics.flow import estimate_flow

    a, b = (F.interpolate(t[None], size=(height, width), mode="bilinear", antialias=True, align_corners=False)
            for t in (end, start))
    return pipe.vae.encode_flow(estimate_flow(a.clamp(0, 1), b.clamp(0, 1)))


def run_long(args: argparse.Namespace, pipe: Any, image: Any, image_path: Path, output: Path,
             settings: Any, model: Any, post: Any = None, layout: Any = None) -> int:
    """Generate, stream the frames to the video file and write its sidecar (settings with the full
    ``num_frames``, plus ``long_video``: mode, window, overlap and the segment or keyframe indices). With
    ``post`` (``--deflicker``) the frames stream to lossless png frames in a temporary folder beside the
    output, which the streamed deflicker then reads twice. Under ``--parallel`` (``layout``) every rank
    samples and decodes its share of each window; rank 0 alone writes."""
    if not is_writer(layout):
        _generate(args, pipe, image, _plan(args, pipe, settings), lambda frames: None)
        return 0
    import tempfile

    from vidiff import __version__
    from vidiff.cli.generate import _sha256, sidecar_path, write_sidecar
    from vidiff.cli.generate_post import deflicker_file
    from vidiff.io.video_stream import VideoStreamWriter

    run = _plan(args, pipe, settings)
    num_frames, window, mode = run.num_frames, run.window, run.mode
    resolved = pipe._resolve(run.settings)
    start = time.perf_counter()
    post_record: dict[str, Any] = {}
    made = _missing_folders(output.parent)  # made now: the frames stream into a folder beside the output
    try:
        for folder in made:
            folder.mkdir()
        with tempfile.TemporaryDirectory(dir=output.parent, prefix=".vidiff-frames-") as tmp:
            # frames go to the encoder as each window makes them final: memory is one window's, not the video's
            target = output if post is None else Path(tmp) / "frames"
            with VideoStreamWriter(target, resolved.fps, num_frames, format=None if post is None else "png") as w:
                result = _generate(args, pipe, image, run, w.push)
            if post is not None:
                post_record = {"deflicker": deflicker_file(target, output, resolved.fps, post).to_dict()}
    except BaseException as e:
        for folder in reversed(made):  # a failed run leaves nothing behind, not even the folders it made
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        if isinstance(e, ValueError):
            raise CLIError(str(e)) from None
        if isinstance(e, OSError):
            raise CLIError(f"cannot write {output}: {e}") from None
        raise
    seconds = time.perf_counter() - start
    record = dict(result.record)
    if args.end_image:
        record["end_image"] = str(args.end_image)
        record["end_image_sha256"] = _sha256(Path(args.end_image))
    sidecar = {
        "vidiff_version": __version__, "model": str(model), "image": str(image_path),
        "image_sha256": _sha256(image_path), "output": str(output), **result.run,
        **parallel_record(layout, pipe), "generation_seconds": round(seconds, 3),
        "settings": {**result.settings.to_dict(), "num_frames": num_frames},
        "long_video": record, **post_record,
    }
    write_sidecar(sidecar, output)
    if not args.quiet:
        print(f"wrote {output} ({num_frames} frames, {mode} over windows of {window}) in {seconds:.1f} s; "
              f"settings in {sidecar_path(output)}")
    return 0


def _plan(args: argparse.Namespace, pipe: Any, settings: Any) -> Any:
    """The run's layout (``plan_long_run``), a bad option as a one-line ``CLIError``."""
    from vidiff.pipelines.long_video_pipeline import plan_long_run

    try:
        return plan_long_run(pipe, settings, mode=args.long_mode, overlap=args.overlap,
                             end_image=args.end_image is not None)
    except ValueError as e:
        raise CLIError(str(e)) from None


def _generate(args: argparse.Namespace, pipe: Any, image: Any, run: Any, sink: Any) -> Any:
    """Run the long generation ``run`` with the command's options, its frames to ``sink`` as they are final."""
    from vidiff.io.video import read_image
    from vidiff.pipelines.long_video_pipeline import generate_long_video

    end = read_image(args.end_image) if args.end_image else None
    resolved = pipe._resolve(run.settings)
    latent = None if end is None else end_latent(pipe, image, end, resolved.height, resolved.width)
    try:
        return generate_long_video(
            pipe, image, run.num_frames, sink, mode=run.mode, overlap=run.overlap, end_image=end, end_latent=latent,
            settings=run.settings, progress=not args.quiet, offload=args.offload, max_memory=args.max_memory,
            vae_tiling=args.vae_tiling, attention_chunk=args.attention_chunk)
    except ValueError as e:
        raise CLIError(str(e)) from None


def _missing_folders(folder: Path) -> list[Path]:
    """The folders of ``folder``'s path that do not exist yet, outermost first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing[::-1]
