"""Checkpoint layouts: detect, read and write diffusers folders, original single files and vidiff folders.

- ``diffusers``: ``model_index.json`` + ``unet/``, ``vae/`` (``config.json`` +
  ``diffusion_pytorch_model.safetensors``, or a sharded ``*.safetensors.index.json``, or the ``fp16``
  variant when it is the only one), ``image_encoder/`` (``config.json`` + ``model.safetensors``),
  ``feature_extractor/preprocessor_config.json``, ``scheduler/scheduler_config.json``.
- ``single-file``: the original sgm safetensors (see :mod:`vidiff.io.single_file`).
- ``vidiff``: ``vidiff.json`` + ``<component>/config.json`` (+ ``<component>/model.safetensors``). Only this
  layout holds models without a CLIP image encoder / feature extractor or with a parameter-free
  ``PatchAutoencoder`` VAE, and model-level settings (``Checkpoint.extra``, kept in ``vidiff.json``).

Reads are strict: every weighted component is checked against the tensor shapes its config implies.
Writes are atomic: the whole output is built next to the destination and renamed into place, so an
existing destination survives any failure untouched.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from vidiff import __version__
from vidiff.io.clip_keymap import drop_derived_clip_keys
from vidiff.io.components import (
    COMPONENTS,
    REQUIRED_COMPONENTS,
    RESNET_EPS_POLICY,
    WEIGHTED_COMPONENTS,
    Checkpoint,
    Component,
    check_plain_name,
    check_scheduler_config,
    copy_config,
    guess_model_type,
    is_parameter_free,
    validate_checkpoint,
)
from vidiff.io.single_file import read_single_file, write_single_file
from vidiff.io.weights import (
    CheckpointError,
    atomic_output,
    load_safetensors,
    read_json,
    save_safetensors_atomic,
    write_json_atomic,
)

__all__ = ["LAYOUTS", "detect_layout", "read_checkpoint", "write_checkpoint"]

LAYOUTS = ("diffusers", "single-file", "vidiff")
VIDIFF_FORMAT = "vidiff-checkpoint"
VIDIFF_FORMAT_VERSION = 1
_MANIFEST_KEYS = ("format", "format_version", "model_type", "components", "vidiff_version")

# component -> (config file, weights file stem, diffusers library, default class)
_DIFFUSERS_FILES: dict[str, tuple[str, str | None, str, str]] = {
    "unet": ("config.json", "diffusion_pytorch_model", "diffusers", "UNetSpatioTemporalConditionModel"),
    "vae": ("config.json", "diffusion_pytorch_model", "diffusers", "AutoencoderKLTemporalDecoder"),
    "image_encoder": ("config.json", "model", "transformers", "CLIPVisionModelWithProjection"),
    "feature_extractor": ("preprocessor_config.json", None, "transformers", "CLIPImageProcessor"),
    "scheduler": ("scheduler_config.json", None, "diffusers", "EulerDiscreteScheduler"),
}


def detect_layout(path: str | os.PathLike) -> str:
    """``diffusers`` (folder with model_index.json), ``vidiff`` (folder with vidiff.json) or
    ``single-file`` (a file); anything else is a :class:`CheckpointError`."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    if path.is_dir():
        if (path / "vidiff.json").is_file():
            return "vidiff"
        if (path / "model_index.json").is_file():
            return "diffusers"
        raise CheckpointError(f"{path}: not a checkpoint folder (no model_index.json or vidiff.json)")
    return "single-file"


def read_checkpoint(
    path: str | os.PathLike, *, num_frames: int | None = None, validate: bool = True, device: str = "cpu"
) -> Checkpoint:
    """Read any supported layout into diffusers vocabulary, checked strictly against the configs.

    ``num_frames`` overrides the UNet config's default frame count (single files cannot tell SVD from
    SVD-XT). ``device="meta"`` reads shapes and dtypes only (for ``vidiff info``).
    """
    layout = detect_layout(path)
    if layout == "diffusers":
        ckpt = _read_diffusers(Path(path), device)
    elif layout == "vidiff":
        ckpt = _read_vidiff(Path(path), device)
    else:
        ckpt = read_single_file(path, num_frames=num_frames, device=device)
    if num_frames is not None:
        ckpt["unet"].config["num_frames"] = int(num_frames)
    if "scheduler" in ckpt.components:
        where = {"diffusers": Path(path, "scheduler", "scheduler_config.json"),
                 "vidiff": Path(path, "scheduler", "config.json")}.get(layout, f"{path} (its scheduler config)")
        check_scheduler_config(ckpt["scheduler"].config, where)
    if validate:
        validate_checkpoint(ckpt)
    return ckpt


def write_checkpoint(
    ckpt: Checkpoint, path: str | os.PathLike, layout: str, *, overwrite: bool = False
) -> None:
    """Write ``ckpt`` in ``layout`` (one of :data:`LAYOUTS`) atomically; validates it first."""
    if layout not in LAYOUTS:
        raise CheckpointError(f"unknown layout {layout!r} (choose from {', '.join(LAYOUTS)})")
    required = REQUIRED_COMPONENTS if layout == "vidiff" else COMPONENTS
    missing = [c for c in required if c not in ckpt.components]
    if missing:
        hint = " (only the vidiff layout holds models without them)" if layout != "vidiff" else ""
        raise CheckpointError(f"checkpoint lacks components: {', '.join(missing)}{hint}")
    if layout != "vidiff" and is_parameter_free("vae", ckpt["vae"].config):
        raise CheckpointError(f"a {ckpt['vae'].config['_class_name']} VAE can only be written in the vidiff "
                              f"layout, not {layout}")
    validate_checkpoint(ckpt)
    for name in WEIGHTED_COMPONENTS:
        if name not in ckpt.components:
            continue
        sd = ckpt[name].state_dict or {}
        if any(t.device.type == "meta" for t in sd.values()):
            raise CheckpointError(f"{name}: tensors were read as shapes only (device='meta'); cannot write")
    if layout == "single-file":
        write_single_file(ckpt, path, overwrite=overwrite)
        return
    with atomic_output(path, overwrite=overwrite) as tmp:
        if layout == "diffusers":
            _write_diffusers(ckpt, tmp)
        else:
            _write_vidiff(ckpt, tmp)


# ------------------------------------------------------------------------------------------------
# diffusers folders


def _load_weights(folder: Path, stem: str, device: str) -> tuple[dict[str, torch.Tensor], str | None]:
    """Load ``stem`` weights in ``folder``: full precision first, then sharded, then the fp16 variant."""
    candidates = [
        (f"{stem}.safetensors", None),
        (f"{stem}.safetensors.index.json", None),
        (f"{stem}.fp16.safetensors", "fp16 variant"),
        (f"{stem}.safetensors.index.fp16.json", "fp16 variant"),
        (f"{stem}.fp16.safetensors.index.json", "fp16 variant"),
    ]
    for name, note in candidates:
        f = folder / name
        if not f.is_file():
            continue
        if not name.endswith(".json"):
            return load_safetensors(f, device=device), note and f"{folder.name}: read the {note}"
        index = read_json(f)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{f}: sharded index has no weight_map")
        out: dict[str, torch.Tensor] = {}
        for shard in sorted({check_plain_name(v, f, "shard") for v in weight_map.values()}):
            part = load_safetensors(folder / shard, device=device)
            wanted = {k for k, s in weight_map.items() if s == shard}
            absent = sorted(wanted - set(part))
            if absent:
                shown = ", ".join(absent[:5])
                raise CheckpointError(f"{folder / shard}: lacks {len(absent)} indexed tensors: {shown}")
            out.update({k: part[k] for k in wanted})
        return out, note and f"{folder.name}: read the {note}"
    # diffusers' safe_serialization=False (transformers names its file pytorch_model.bin)
    for name in (f"{stem}.bin", f"pytorch_{stem}.bin"):
        if (folder / name).is_file():
            return load_torch_bin(folder / name, device), f"{folder.name}: read the pickled {name} (weights only)"
    raise CheckpointError(f"{folder}: no {stem}.safetensors (or sharded / fp16 variant, or {stem}.bin)")


def load_torch_bin(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """A state dict pickled by ``torch.save`` (diffusers' ``safe_serialization=False``), read with
    ``torch.load(weights_only=True)``: only tensors and plain containers are rebuilt, no code runs."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # the unpickler raises many types for corrupt or unsafe files
        raise CheckpointError(f"{path}: cannot read pickled weights ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise CheckpointError(f"{path}: not a state dict (expected a mapping of names to tensors)")
    return state


def _read_diffusers(path: Path, device: str) -> Checkpoint:
    index = read_json(path / "model_index.json")
    components: dict[str, Component] = {}
    notes: list[str] = []
    ignored: list[str] = []
    for name, (config_file, stem, _, _) in _DIFFUSERS_FILES.items():
        folder = path / name
        if not folder.is_dir():
            listed = "listed in model_index.json but " if name in index else ""
            raise CheckpointError(f"{path}: component {name!r} is {listed}missing (no {name}/ folder)")
        config = read_json(folder / config_file)
        state_dict = None
        if stem is not None:
            state_dict, note = _load_weights(folder, stem, device)
            if note:
                notes.append(note)
            if name == "image_encoder":
                kept = drop_derived_clip_keys(state_dict)
                ignored.extend(f"{name}/{k}" for k in state_dict if k not in kept)
                state_dict = kept
        if name == "unet":
            config.setdefault(RESNET_EPS_POLICY, "diffusers")
        components[name] = Component(config, state_dict)
    return Checkpoint("diffusers", components, ignored=ignored, notes=notes)


def _class_of(name: str, config: dict[str, Any]) -> str:
    default = _DIFFUSERS_FILES[name][3]
    if name == "image_encoder":
        return (config.get("architectures") or [default])[0]
    if name == "feature_extractor":
        return config.get("image_processor_type", default)
    return config.get("_class_name", default)


def _write_diffusers(ckpt: Checkpoint, folder: Path) -> None:
    unet_cfg = ckpt["unet"].config
    index: dict[str, Any] = {
        "_class_name": "StableVideoDiffusionPipeline",
        "_diffusers_version": unet_cfg.get("_diffusers_version", "0.24.0"),
    }
    for name, (config_file, stem, library, default_class) in _DIFFUSERS_FILES.items():
        comp = ckpt[name]
        config = copy_config(comp.config)
        if name == "unet" and config.get(RESNET_EPS_POLICY) == "diffusers":
            del config[RESNET_EPS_POLICY]  # the default: keep diffusers folders as diffusers writes them
        if name in ("unet", "vae", "scheduler"):
            config.setdefault("_class_name", default_class)
        if name == "image_encoder":
            config.setdefault("architectures", [default_class])
            config.setdefault("model_type", "clip_vision_model")
        index[name] = [library, _class_of(name, config)]
        write_json_atomic(config, folder / name / config_file)
        if stem is not None:
            weights = folder / name / f"{stem}.safetensors"
            save_safetensors_atomic(comp.state_dict or {}, weights, {"format": "pt"})
    write_json_atomic(index, folder / "model_index.json")


# ------------------------------------------------------------------------------------------------
# vidiff folders


def _read_vidiff(path: Path, device: str) -> Checkpoint:
    manifest = read_json(path / "vidiff.json")
    if manifest.get("format") != VIDIFF_FORMAT:
        found = manifest.get("format")
        raise CheckpointError(f"{path / 'vidiff.json'}: format is {found!r}, not {VIDIFF_FORMAT!r}")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > VIDIFF_FORMAT_VERSION:
        raise CheckpointError(
            f"{path / 'vidiff.json'}: format_version {version!r} is newer than this vidiff reads "
            f"({VIDIFF_FORMAT_VERSION}); upgrade vidiff"
        )
    names = manifest.get("components")
    if not isinstance(names, list):
        raise CheckpointError(f"{path / 'vidiff.json'}: 'components' must be a list")
    for name in names:
        check_plain_name(name, path / "vidiff.json", "component", nested=False)
    if not isinstance(manifest.get("generation_defaults", {}), dict):
        raise CheckpointError(f"{path / 'vidiff.json'}: generation_defaults must be an object, found "
                              f"{manifest['generation_defaults']!r}")
    missing = [c for c in REQUIRED_COMPONENTS if c not in names]
    if missing:
        raise CheckpointError(f"{path}: vidiff.json lists no {', '.join(missing)} component")
    components: dict[str, Component] = {}
    for name in names:
        folder = path / name
        if not folder.is_dir():
            raise CheckpointError(f"{path}: component {name!r} is missing (no {name}/ folder)")
        config = read_json(folder / "config.json")
        weights = folder / "model.safetensors"
        if name in WEIGHTED_COMPONENTS and not weights.is_file() and not is_parameter_free(name, config):
            raise CheckpointError(f"{folder}: no model.safetensors")
        sd = load_safetensors(weights, device=device) if weights.is_file() else None
        components[name] = Component(config, sd)
    extra = {k: v for k, v in manifest.items() if k not in _MANIFEST_KEYS}
    return Checkpoint("vidiff", components, extra=extra)


def _write_vidiff(ckpt: Checkpoint, folder: Path) -> None:
    for name, comp in ckpt.components.items():
        check_plain_name(name, folder, "component", nested=False)
        write_json_atomic(copy_config(comp.config), folder / name / "config.json")
        if comp.state_dict is not None:
            save_safetensors_atomic(comp.state_dict, folder / name / "model.safetensors", {"format": "pt"})
    manifest = {
        "format": VIDIFF_FORMAT,
        "format_version": VIDIFF_FORMAT_VERSION,
        "model_type": guess_model_type(ckpt),
        "components": list(ckpt.components),
        "vidiff_version": __version__,
    }
    clash = sorted(set(ckpt.extra) & set(manifest))
    if clash:
        raise CheckpointError(f"Checkpoint.extra may not set {clash} (vidiff.json's own keys)")
    manifest.update(copy_config(ckpt.extra))
    write_json_atomic(manifest, folder / "vidiff.json")
