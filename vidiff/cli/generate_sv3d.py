"""The SV3D options of ``vidiff generate``: ``--elevation``, ``--azimuths`` and ``--orbit``.

SV3D (Voleti et al. 2024) renders an orbit of views around the object of one image; SV3D_p takes the camera of
every frame (Sec. 3, "camera pose conditioning"). ``--elevation`` is one value or one per frame (degrees in
[-90, 90], default 10); ``--azimuths`` one per frame; ``--orbit`` asks for Stability's default orbit (azimuths
evenly spaced over 360°, ending at the input view, at the default or given elevation). An SV3D model loaded
without these options renders that default orbit too. What can be checked without the model (numbers, range,
a video given to an SV3D model, camera options with ``--video``) is checked before it loads; the frame count
is checked once the model's is known, before anything runs or is written.
"""

from __future__ import annotations

import argparse
from typing import Any

from vidiff.cli.main import CLIError
from vidiff.pipelines.settings import GenerationSettings

ELEVATION_FLAG, AZIMUTHS_FLAG = "--elevation", "--azimuths"


def add_sv3d_arguments(p: argparse.ArgumentParser) -> None:
    """Register the camera options of SV3D_p models on ``vidiff generate``."""
    g = p.add_argument_group("SV3D orbits (sv3d_p models; SV3D_u takes no camera)")
    g.add_argument(ELEVATION_FLAG, default=None, metavar="DEG[,DEG...]",
                   help="camera elevation in degrees, in [-90, 90]: one value for every frame, or one per frame "
                   "(default 10; a list that starts below zero needs the = form: --elevation=-10,0,...)")
    g.add_argument(AZIMUTHS_FLAG, default=None, metavar="DEG,DEG,...",
                   help="camera azimuth of every frame in degrees, relative to the last frame's (the input view) "
                   "(default: --orbit's; --azimuths=-30,... for a list that starts below zero)")
    g.add_argument("--orbit", action="store_true",
                   help="Stability's default orbit: azimuths evenly spaced over 360 degrees, the last frame at "
                   "the input view")


def _numbers(text: str, flag: str) -> list[float]:
    """A comma-separated list of degrees; a bad entry is a one-line error naming it."""
    out = []
    for item in text.split(","):
        try:
            out.append(float(item))
        except ValueError:
            raise CLIError(f"{flag}: {item.strip()!r} is not a number of degrees (give DEG or DEG,DEG,...)") from None
    return out


def camera_requested(args: argparse.Namespace) -> bool:
    return any(getattr(args, name, None) not in (None, False) for name in ("elevation", "azimuths", "orbit"))


def _camera(args: argparse.Namespace) -> tuple[list[float] | None, list[float] | None]:
    """``(elevations, azimuths)`` from the options (None: the default), checked without a model."""
    from vidiff.pipelines.sv3d import sv3d_orbit

    if args.orbit and args.azimuths is not None:
        raise CLIError(f"--orbit and {AZIMUTHS_FLAG} both set the azimuths: give one of them")
    elev = None if args.elevation is None else _numbers(args.elevation, ELEVATION_FLAG)
    azim = None if args.azimuths is None else _numbers(args.azimuths, AZIMUTHS_FLAG)
    try:  # range and finiteness, whatever the frame count turns out to be
        sv3d_orbit(len(elev) if elev else 1, elev, None, names=(ELEVATION_FLAG, AZIMUTHS_FLAG))
        if azim is not None:
            sv3d_orbit(len(azim), None, azim, names=(ELEVATION_FLAG, AZIMUTHS_FLAG))
    except ValueError as e:
        raise CLIError(str(e)) from None
    return elev, azim


def _model_type(model: str | None) -> str | None:
    """The model type of a checkpoint read from its header alone (None when it cannot be read here: the
    command that loads it reports why)."""
    if not model:
        return None
    from vidiff.io.checkpoints import read_checkpoint

    try:
        return read_checkpoint(model, device="meta").model_type
    except Exception:  # any unreadable model is reported by the loader, with its own message
        return None


def check_sv3d_arguments(args: argparse.Namespace) -> None:
    """Before any model loads: the camera options parse and lie in range, and no video goes to SV3D."""
    if getattr(args, "video", None) is not None:
        if camera_requested(args):
            raise CLIError("--elevation, --azimuths and --orbit are for SV3D orbits from one --image, not --video")
        kind = _model_type(args.model)
        if kind is not None and kind.startswith("sv3d"):
            raise CLIError(f"--video {args.video}: {args.model} is an SV3D model ({kind}), which renders an orbit "
                           "from one image: give --image, not a video")
    if camera_requested(args):
        _camera(args)


def sv3d_pipeline(pipe: Any, args: argparse.Namespace, settings: GenerationSettings) -> tuple[Any, dict[str, Any]]:
    """``(pipeline, call arguments)``: an SV3D model's pipeline as :class:`SV3DPipeline` with its camera
    arguments, checked against the frame count; any other model's unchanged (camera options refused)."""
    from vidiff.pipelines.sv3d import SV3DPipeline, sv3d_orbit

    name = pipe.family.name
    if not name.startswith("sv3d"):
        if camera_requested(args):
            raise CLIError(f"--elevation, --azimuths and --orbit need an SV3D_p model; {args.model} is {name}")
        return pipe, {}
    sv3d = SV3DPipeline.from_pipeline(pipe)
    if not camera_requested(args):
        return sv3d, {}
    if not sv3d.has_camera:
        raise CLIError(f"{args.model} is {name}, which has no camera conditioning: --elevation, --azimuths and "
                       "--orbit need an sv3d_p model")
    elev, azim = _camera(args)
    resolved = sv3d.default_settings(settings.behaviour or "diffusers").merged(settings)
    try:
        sv3d_orbit(resolved.num_frames, elev, azim, names=(ELEVATION_FLAG, AZIMUTHS_FLAG))
    except ValueError as e:
        raise CLIError(f"{e} (--num-frames {resolved.num_frames})") from None
    return sv3d, {"elevations": elev, "azimuths": azim}
