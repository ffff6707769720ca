"""The adapter options of ``vidiff generate`` (``--lora PATH[:SCALE]``, ``--lora-partial``, ``--camera NAME|PATH.json``,
``--camera-adapter``) and of ``vidiff convert`` for LoRA files (``--to lora-vidiff|lora-peft|lora-kohya``).

Everything that can be checked without the model (the ``--lora`` spec, that each file is a readable
LoRA) is checked before the model loads; a LoRA that does not fit the model fails before anything is
written. The sidecar records every LoRA (its path, file hash, scale, format and base-model hash) and the camera path
of every frame with the camera adapter's file and hash.
"""

from __future__ import annotations

import argparse
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

from vidiff.adapters import LORA_FORMATS, detect_lora_format, layer_names, read_lora, write_lora
from vidiff.adapters.camera import CAMERA_PRESETS, camera_motion, read_camera_path, resolve_camera
from vidiff.cli.main import CLIError
from vidiff.io.weights import CheckpointError, load_safetensors, read_safetensors_metadata

__all__ = [
    "LORA_TARGETS",
    "adapter_record",
    "add_adapter_arguments",
    "add_lora_convert_arguments",
    "apply_adapters",
    "apply_camera",
    "check_adapter_args",
    "convert_lora",
    "parse_lora_spec",
]

LORA_TARGETS = tuple(f"lora-{f}" for f in LORA_FORMATS)  # `vidiff convert --to` values for LoRA files


def add_adapter_arguments(p: argparse.ArgumentParser) -> None:
    """Register ``--lora`` (repeatable) and ``--lora-partial`` on ``vidiff generate``."""
    g = p.add_argument_group("adapters")
    g.add_argument("--lora", action="append", default=[], metavar="PATH[:SCALE]",
                   help="a LoRA file (vidiff, peft/diffusers or kohya/ComfyUI format) at SCALE (default 1); "
                   "repeat for several")
    g.add_argument("--lora-partial", action="store_true",
                   help="load a LoRA even if some of its keys match no layer of the model (warns naming them; "
                   "default: an error listing them)")
    g.add_argument("--camera", default=None, metavar="NAME|PATH.json",
                   help=f"camera move to follow: {', '.join(CAMERA_PRESETS)}, or a JSON list of per-frame "
                   "[pan_x, pan_y, zoom, roll] (one per frame; needs a camera adapter)")
    g.add_argument("--camera-adapter", default=None, metavar="PATH",
                   help="camera adapter file (default: the one shipped with the model, camera_adapter.safetensors)")


def add_lora_convert_arguments(p: argparse.ArgumentParser) -> None:
    """``vidiff convert`` options for LoRA files (``--to lora-*``)."""
    p.add_argument("--model", default=None,
                   help="with --to lora-*: the model a LoRA is for (its layout names kohya keys; default: the "
                   "unet_config the file records)")
    p.add_argument("--lora-partial", action="store_true",
                   help="with --to lora-*: leave out keys that match no layer (default: an error listing them)")


def parse_lora_spec(spec: str) -> tuple[Path, float]:
    """``PATH[:SCALE]`` -> ``(path, scale)``; a trailing ``:number`` is the scale."""
    path, scale = spec, 1.0
    head, sep, tail = spec.rpartition(":")
    if sep and head:
        try:
            path, scale = head, float(tail)
        except ValueError:
            path = spec
    return Path(path), scale


def check_adapter_args(args: argparse.Namespace) -> list[tuple[Path, float]]:
    """The ``--lora`` files and scales, each checked to be a readable LoRA file (before the model loads)."""
    loras = []
    for spec in args.lora:
        path, scale = parse_lora_spec(spec)
        if not path.is_file():
            raise CLIError(f"--lora {spec}: {path} is not a file")
        try:
            detect_lora_format(list(load_safetensors(path, device="meta")), read_safetensors_metadata(path))
            load_safetensors(path)  # the data too: a truncated file fails here
        except (CheckpointError, ValueError) as e:
            raise CLIError(f"--lora {spec}: {e}") from None
        loras.append((path, scale))
    camera = getattr(args, "camera", None)
    if camera is not None:
        try:
            path = resolve_camera(camera, 2) if not camera.lower().endswith(".json") else read_camera_path(camera)
        except ValueError as e:
            raise CLIError(f"--camera: {e}") from None
        frames = getattr(args, "num_frames", None)
        if camera.lower().endswith(".json") and frames is not None and path.shape[0] != frames:
            raise CLIError(f"--camera {camera} has {path.shape[0]} frames, but --num-frames is {frames}")
    if getattr(args, "camera_adapter", None) is not None and not Path(args.camera_adapter).is_file():
        raise CLIError(f"--camera-adapter {args.camera_adapter} is not a file")
    return loras


def apply_adapters(pipe: Any, loras: list[tuple[Path, float]], partial: bool) -> None:
    """Load each LoRA into ``pipe`` (names made unique by their order)."""
    for i, (path, scale) in enumerate(loras):
        try:
            pipe.load_lora(path, scale, name=f"{i}:{path.stem}", partial=partial)
        except (CheckpointError, ValueError) as e:
            raise CLIError(f"--lora {path}: {e}") from None


def apply_camera(pipe: Any, args: argparse.Namespace, model: str | Path, settings: Any) -> Any:
    """Load the camera adapter (``--camera-adapter``, else ``camera_adapter.safetensors`` in the model's folder) and
    set ``--camera`` on ``pipe``, checked against the frame count the run will have. Unless given, the motion bucket
    becomes the path's own (its mean motion, as the training data defines it). Returns the settings to run with."""
    if getattr(args, "camera", None) is None:
        return settings
    adapter = Path(args.camera_adapter) if args.camera_adapter else Path(model) / "camera_adapter.safetensors"
    if not adapter.is_file():
        raise CLIError(f"--camera {args.camera}: no camera adapter for this model ({adapter} does not exist; "
                       "give --camera-adapter)")
    s = pipe.default_settings(settings.behaviour or "diffusers").merged(settings)
    try:
        path = resolve_camera(args.camera, s.num_frames)
    except ValueError as e:
        raise CLIError(f"--camera: {e}") from None
    try:
        pipe.load_camera_adapter(adapter)
    except (CheckpointError, ValueError) as e:
        raise CLIError(f"--camera-adapter {adapter}: {e}") from None
    pipe.set_camera(args.camera)  # a name or .json file (checked above): the sidecar records it as given
    scale = pipe.camera_adapter.motion_bucket_scale
    if settings.motion_bucket_id is None and scale is not None:
        from vidiff.training.data import REFERENCE_WIDTH, motion_bucket_from_magnitude

        motion = camera_motion(path, s.height, s.width) * REFERENCE_WIDTH / s.width
        settings = replace(settings, motion_bucket_id=motion_bucket_from_magnitude(motion, scale=scale))
    return settings


def adapter_record(pipe: Any) -> dict[str, Any]:
    """The sidecar's ``loras`` and ``camera`` entries (absent when none was loaded)."""
    records = pipe.lora_records() if hasattr(pipe, "lora_records") else []
    camera = pipe.camera_record() if hasattr(pipe, "camera_record") else None
    return {**({"loras": records} if records else {}), **({"camera": camera} if camera else {})}


def convert_lora(args: argparse.Namespace) -> str:
    """``vidiff convert LORA OUT --to lora-FORMAT [--model M]``: rewrite a LoRA file in another format, every
    tensor unchanged. kohya names need the UNet's layout: from ``--model`` or the file's ``unet_config``."""
    src, dst, fmt = Path(args.src), Path(args.dst), args.to.removeprefix("lora-")
    names = None
    if getattr(args, "model", None):
        from vidiff.pipelines.loading import load_model

        names = layer_names(load_model(args.model).unet)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lora, unmatched = read_lora(src, names, partial=getattr(args, "lora_partial", False))
    for w in caught:
        print(f"warning: {w.message}")
    if unmatched:
        print(f"warning: {len(unmatched)} keys match no layer and were left out: {', '.join(unmatched)}")
    write_lora(lora, dst, fmt, names)
    return f"{src} (LoRA, {lora.format}) -> {dst} (LoRA, {fmt}): {len(lora.tensors)} tensors"
