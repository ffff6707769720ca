"""``vidiff generate --parallel cfg|frames|cfg,frames`` under ``torchrun --nproc-per-node N``.

Every rank loads the model and runs the same generation; ``vidiff.parallel`` splits each UNet call between
them (CFG: the two guidance halves on two ranks; frames: the frames over the ranks of a guidance branch), so
every rank ends with the same latents. The VAE decode is then split over every rank (``vidiff.parallel.decode``:
each decodes a block of the frames and ends with the whole video; an autoencoder that cannot be split is
decoded by rank 0 alone while the other ranks stop after sampling). Rank 0 writes the video and its settings file, which
records the mode, the world size and the ranks the decode was split over. Without a distributed launch, or
with a split the run cannot make, the command fails with one line saying why, before any work.
"""

from __future__ import annotations

import argparse
import atexit
import os
from typing import Any

from vidiff.cli.main import CLIError
from vidiff.parallel import MODES

__all__ = ["add_parallel_arguments", "check_parallel", "decodes", "is_writer", "parallel_record", "start_parallel"]


def add_parallel_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--parallel", default=None, metavar="MODE",
                   help=f"split each denoising step over the processes of torchrun --nproc-per-node N: "
                   f"{', '.join(MODES)} (cfg: the guidance halves on 2 processes; frames: frames over N; "
                   "cfg,frames: both, N even). Exact: the frames of one process; rank 0 writes the output")


def check_parallel(args: argparse.Namespace, device: str) -> str:
    """Validate ``--parallel`` against the launch and join the process group; returns this rank's device
    (``cuda`` becomes ``cuda:LOCAL_RANK``). A no-op without ``--parallel``."""
    if getattr(args, "parallel", None) is None:
        return device
    from vidiff.parallel import parse_mode

    try:
        parse_mode(args.parallel)
    except ValueError as e:
        raise CLIError(str(e)) from None
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world < 2:
        raise CLIError(f"--parallel {args.parallel} needs a distributed launch: run under "
                       "torchrun --nproc-per-node N (N >= 2)")
    if args.batch is not None:
        raise CLIError("--parallel splits one generation over the ranks; --batch shards jobs over them: use one")
    if device == "cuda":
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    import torch.distributed as dist

    from vidiff.parallel import init_from_env

    init_from_env(device)
    atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
    return device


def start_parallel(args: argparse.Namespace, pipe: Any, settings: Any, image: Any, *, long: bool) -> Any:
    """Split ``pipe``'s UNet over the ranks as ``--parallel`` asks (None without it); CLIError when the
    run cannot be split so (a process count or frame count that does not divide)."""
    if getattr(args, "parallel", None) is None:
        return None
    from vidiff.parallel import ParallelLayout, parallelize, parse_mode
    from vidiff.parallel.decode import can_split_decode, parallelize_decode

    cfg, frames = parse_mode(args.parallel)
    try:
        layout = ParallelLayout.build(cfg, frames)
    except ValueError as e:
        raise CLIError(str(e)) from None
    resolved = pipe._resolve(settings, (image.shape[-1], image.shape[-2]))
    if cfg and resolved.max_guidance_scale <= 1:
        raise CLIError(f"--parallel {args.parallel}: guidance is off (max_guidance_scale "
                       f"{resolved.max_guidance_scale:g} <= 1), so there is no unconditional half to split off; "
                       "use --parallel frames or raise --max-guidance-scale")
    per_call = resolved.num_frames
    if long:  # network calls of windows of the model's clip length (shorter in-between windows run whole)
        per_call = min(per_call, pipe.default_settings(settings.behaviour or "diffusers").num_frames)
    if layout.frames > per_call:
        raise CLIError(f"--parallel {args.parallel}: {per_call} frames cannot be split over "
                       f"{layout.frames} frame ranks (each needs at least one frame)")
    try:
        parallelize(pipe.unet, layout)
    except ValueError as e:
        raise CLIError(str(e)) from None
    if can_split_decode(pipe.vae):  # over every rank: each holds the guided latents
        parallelize_decode(pipe, layout)
    return layout


def is_writer(layout: Any) -> bool:
    """Whether this process writes the outputs (always without ``--parallel``; rank 0 with it)."""
    return layout is None or layout.is_writer


def decodes(layout: Any, pipe: Any) -> bool:
    """Whether this process decodes the latents: the writer, and every rank when the decode is split."""
    return is_writer(layout) or getattr(pipe, "decode_split", None) is not None


def parallel_record(layout: Any, pipe: Any) -> dict[str, Any]:
    """The settings file's record of the split (``parallel: null`` for one process); ``decode_ranks``: the
    ranks each VAE decode is split over (1: rank 0 decodes alone)."""
    if layout is None:
        return {"parallel": None}
    split = getattr(pipe, "decode_split", None) is not None
    return {"parallel": {**layout.describe(), "decode_ranks": layout.world_size if split else 1}}
