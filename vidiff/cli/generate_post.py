"""``vidiff generate --deflicker``: filters applied to the generated frames before they are written.

Kept out of ``generate.py``: the options (:func:`add_postprocess_arguments`), their check before the model
loads (:func:`postprocess_config`) and the filter with what the sidecar records of it
(:func:`apply_postprocess`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from vidiff.cli.main import CLIError
from vidiff.postprocess.deflicker import (
    DeflickerConfig,
    DeflickerPlan,
    apply_deflicker,
    deflicker_video,
    plan_deflicker,
)


def add_deflicker_options(p: argparse.ArgumentParser | argparse._ArgumentGroup, prefix: str = "") -> None:
    """The filter's settings as options (``prefix`` names them for ``vidiff generate --deflicker``)."""
    d = DeflickerConfig()
    p.add_argument(f"--{prefix}strength", dest="deflicker_strength", type=float, default=d.strength, metavar="S",
                   help=f"how much of the correction to apply, in [0, 1] (default {d.strength})")
    p.add_argument(f"--{prefix}sigma", dest="deflicker_sigma", type=float, default=d.sigma, metavar="FRAMES",
                   help=f"temporal smoothing (Gaussian sigma, frames) of the target statistics (default {d.sigma})")
    p.add_argument(f"--{prefix}cut-threshold", dest="deflicker_cut_threshold", type=float, default=d.cut_threshold,
                   metavar="D",
                   help="normalised thumbnail difference that marks a scene cut; smoothing never crosses a "
                   f"cut (default {d.cut_threshold})")
    p.add_argument(f"--{prefix}flow", dest="deflicker_flow", action="store_true",
                   help="measure exposure changes on pixels matched by optical flow, so moving objects are not "
                   "taken for flicker (slower)")


def deflicker_config(args: argparse.Namespace) -> DeflickerConfig:
    """The options as a checked :class:`DeflickerConfig` (``CLIError`` naming the bad value)."""
    try:
        return DeflickerConfig(strength=args.deflicker_strength, sigma=args.deflicker_sigma,
                               cut_threshold=args.deflicker_cut_threshold, flow=args.deflicker_flow)
    except ValueError as e:
        raise CLIError(str(e)) from None


def add_postprocess_arguments(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("post-processing")
    group.add_argument("--deflicker", action="store_true",
                       help="remove frame-to-frame brightness/colour flicker from the result (see `vidiff deflicker`)")
    add_deflicker_options(group, prefix="deflicker-")


def postprocess_config(args: argparse.Namespace) -> DeflickerConfig | None:
    """The checked deflicker settings when ``--deflicker`` is given, else None (``CLIError`` on a bad value,
    also for ``--deflicker-*`` values given without ``--deflicker``)."""
    config = deflicker_config(args)
    return config if args.deflicker else None


def apply_postprocess(frames: torch.Tensor, config: DeflickerConfig | None) -> tuple[torch.Tensor, dict[str, Any]]:
    """``frames (T, C, H, W)`` in [0, 1] after the filters, and the sidecar entries that record them."""
    if config is None:
        return frames, {}
    out, plan = deflicker_video(frames.float().cpu(), config)
    return out, {"deflicker": plan.to_dict()}


def deflicker_file(src: Path, out: Path, fps: float, config: DeflickerConfig) -> DeflickerPlan:
    """Deflicker the video at ``src`` into ``out`` (atomically), streamed: a first pass over the decoded frames
    measures, a second corrects and encodes, so memory does not grow with the clip's length."""
    from vidiff.io.video_stream import iter_video, write_video_stream

    plan = plan_deflicker(iter_video(src), config)
    write_video_stream(apply_deflicker(iter_video(src), plan), out, fps, plan.num_frames)
    return plan
