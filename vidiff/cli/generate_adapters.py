"""The adapter options of ``vidiff generate`` (``--lora PATH[:SCALE]``, ``--lora-partial``) and of
``vidiff convert`` for LoRA files (``--to lora-vidiff|lora-peft|lora-kohya``).

Everything that can be checked without the model (the ``--lora`` spec, that each file is a readable
LoRA) is checked before the model loads; a LoRA that does not fit the model fails before anything is
written. The sidecar records every LoRA: its path, file hash, scale, format and base-model hash.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Any

from vidiff.adapters import LORA_FORMATS, detect_lora_format, layer_names, read_lora, write_lora
from vidiff.cli.main import CLIError
from vidiff.io.weights import CheckpointError, load_safetensors, read_safetensors_metadata

__all__ = [
    "LORA_TARGETS",
    "adapter_record",
    "add_adapter_arguments",
    "add_lora_convert_arguments",
    "apply_adapters",
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
    return loras


def apply_adapters(pipe: Any, loras: list[tuple[Path, float]], partial: bool) -> None:
    """Load each LoRA into ``pipe`` (names made unique by their order)."""
    for i, (path, scale) in enumerate(loras):
        try:
            pipe.load_lora(path, scale, name=f"{i}:{path.stem}", partial=partial)
        except (CheckpointError, ValueError) as e:
            raise CLIError(f"--lora {path}: {e}") from None


def adapter_record(pipe: Any) -> dict[str, Any]:
    """The sidecar's ``loras`` entry (empty when none was loaded)."""
    records = pipe.lora_records() if hasattr(pipe, "lora_records") else []
    return {"loras": records} if records else {}


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
