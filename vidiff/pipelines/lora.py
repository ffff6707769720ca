"""Adapter loading for the pipelines, as mixins the image-to-video pipeline inherits: LoRA (``pipe.load_lora(path,
scale)``, ``set_lora_scales``, ``unload_lora``, ``fuse_lora`` / ``unfuse_lora``) and camera control
(``load_camera_adapter``, ``set_camera``, ``unload_camera_adapter``).

Each LoRA runs beside the UNet's layers (``vidiff.adapters.lora``) until fused; fusing adds ``scale · ΔW``
into the weights and unfusing puts the saved weights back bit for bit. Loading is strict: a tensor naming
no layer of this UNet is an error that lists it (``partial=True`` loads the rest and warns naming them),
and a layer whose shape differs (a LoRA for another architecture) is an error naming it.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vidiff.adapters import (
    LoRAAdapter,
    attach_lora,
    detach_lora,
    fuse_loras,
    layer_names,
    read_lora,
    state_sha256,
    sync_hooks,
    targetable_modules,
    unfuse_loras,
)
from vidiff.adapters.camera import CameraAdapter, attach_camera, detach_camera, path_record, read_camera_adapter

__all__ = ["CameraMixin", "LoRAMixin", "LoadedCamera", "LoadedLoRA", "file_sha256"]


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class LoadedLoRA:
    """One loaded LoRA: where it came from, its file hash, format and the base model it was made for."""

    name: str
    path: str
    sha256: str
    format: str
    adapter: LoRAAdapter
    base_model_sha256: str | None

    def record(self) -> dict[str, Any]:
        """What a sidecar keeps of it."""
        return {"name": self.name, "path": self.path, "sha256": self.sha256, "scale": self.adapter.scale,
                "format": self.format, "base_model_sha256": self.base_model_sha256}


class LoRAMixin:
    """LoRA methods for a pipeline with a ``unet`` and a ``set_fast_path(fast_path)`` (fused attention
    projections are snapshots of the weights: they are taken again after every change)."""

    unet: nn.Module
    fast_path: Any

    @property
    def loras(self) -> dict[str, LoadedLoRA]:
        """The loaded LoRAs by name, in load order."""
        if not hasattr(self, "_loras"):
            self._loras: dict[str, LoadedLoRA] = {}
            self._lora_fused = False
        return self._loras

    def base_model_sha256(self) -> str:
        """The UNet's hash without any LoRA (``vidiff.adapters.state_sha256``), computed once."""
        if getattr(self, "_base_sha256", None) is None:
            if getattr(self, "_lora_fused", False):
                raise RuntimeError("unfuse the LoRAs before hashing the base model")
            self._base_sha256 = state_sha256(self.unet.state_dict())
        return self._base_sha256

    def load_lora(self, path: str | os.PathLike, scale: float = 1.0, *, name: str | None = None,
                  partial: bool = False) -> str:
        """Load a LoRA file (vidiff, peft/diffusers or kohya/ComfyUI format) at ``scale``; returns its name."""
        path = Path(path)
        name = name or path.stem
        if name in self.loras:
            raise ValueError(f"a LoRA named {name!r} is already loaded (unload it or pass another name)")
        lora, unmatched = read_lora(path, layer_names(self.unet), partial=partial)
        if unmatched:
            warnings.warn(f"{path}: {len(unmatched)} LoRA keys match no layer of the model and were not "
                          f"loaded: {', '.join(unmatched)}", stacklevel=2)
        unknown = [t for t in lora.layers if t not in targetable_modules(self.unet)]
        if unknown and not partial:
            raise ValueError(f"{path}: {len(unknown)} LoRA layers match no layer of the model: "
                             f"{', '.join(unknown[:8])} (--lora-partial loads the rest)")
        if unknown:
            warnings.warn(f"{path}: LoRA layers not in the model, not loaded: {', '.join(unknown)}", stacklevel=2)
            lora.tensors = {k: v for k, v in lora.tensors.items() if k.rsplit(".", 2)[0] not in unknown
                            and k.rsplit(".", 1)[0] not in unknown}
        adapter = LoRAAdapter.from_tensors(self.unet, lora.tensors, str(path))
        adapter.set_scale(scale)
        base = lora.metadata.get("base_model_sha256")
        fused = bool(self.loras) and self._lora_fused
        if base and next(self.unet.parameters()).dtype.is_floating_point and base != self.base_model_sha256():
            warnings.warn(f"{path}: made for a base model with hash {base[:12]}…, this one is "
                          f"{self.base_model_sha256()[:12]}… (a fine-tune or another model?)", stacklevel=2)
        attach_lora(self.unet, adapter, name)
        self.loras[name] = LoadedLoRA(name, str(path), file_sha256(path), lora.format, adapter, base)
        if fused:
            fuse_loras(self.unet)
        self._refresh()
        return name

    def set_lora_scales(self, scales: float | Mapping[str, float]) -> None:
        """One scale for every LoRA, or ``{name: scale}``; fused LoRAs are fused again at the new scales."""
        named = {n: float(scales) for n in self.loras} if isinstance(scales, (int, float)) else dict(scales)
        unknown = sorted(set(named) - set(self.loras))
        if unknown:
            raise ValueError(f"no LoRA named {unknown} is loaded (loaded: {sorted(self.loras)})")
        refuse = self._lora_fused
        if refuse:
            unfuse_loras(self.unet)
        for n, s in named.items():
            self.loras[n].adapter.set_scale(s)
        if refuse:
            fuse_loras(self.unet)
        self._refresh()

    def unload_lora(self, name: str | None = None) -> None:
        """Remove one LoRA (``name``) or all; the UNet's weights are exactly the base model's again."""
        names = list(self.loras) if name is None else [name]
        missing = [n for n in names if n not in self.loras]
        if missing:
            raise ValueError(f"no LoRA named {missing[0]!r} is loaded (loaded: {sorted(self.loras)})")
        refuse = self._lora_fused
        unfuse_loras(self.unet)
        for n in names:
            detach_lora(self.unet, n)
            del self.loras[n]
        self._lora_fused = False
        if refuse and self.loras:
            self.fuse_lora()
        self._refresh()

    def fuse_lora(self) -> None:
        """Add the loaded LoRAs into the UNet's weights (faster sampling; ``unfuse_lora`` undoes it exactly)."""
        if self.loras:
            self.base_model_sha256()  # before the weights change
            fuse_loras(self.unet)
            self._lora_fused = True
            self._refresh()

    def unfuse_lora(self) -> None:
        """Restore the UNet's weights saved by :meth:`fuse_lora`, bit for bit; the LoRAs run beside it again."""
        unfuse_loras(self.unet)
        self._lora_fused = False
        self._refresh()

    def lora_records(self) -> list[dict[str, Any]]:
        """Each loaded LoRA's path, file hash, scale, format and base-model hash, for a sidecar."""
        return [lo.record() for lo in self.loras.values()]

    def _refresh(self) -> None:
        sync_hooks(self.unet)  # a hook only where a LoRA runs unfused at a non-zero scale
        # fused q/k/v snapshots of the weights: taken again (or dropped where a LoRA hook runs)
        self.set_fast_path(self.fast_path)  # type: ignore[attr-defined]


@dataclass
class LoadedCamera:
    """The loaded camera adapter: where it came from, its file hash and the base model it was made for."""

    path: str
    sha256: str
    adapter: CameraAdapter
    base_model_sha256: str | None
    motion_bucket_scale: float | None = None  # of the training data: a path's motion bucket (vidiff.training.data)


class CameraMixin:
    """Camera control for a pipeline with a ``unet`` (``vidiff.adapters.camera``, MotionCtrl-style):
    ``pipe.load_camera_adapter(path)``, ``pipe.set_camera("zoom-in" | "path.json" | (T, 4) tensor | None)``,
    then generate as usual; ``unload_camera_adapter()`` restores the plain network."""

    unet: nn.Module
    camera_adapter: LoadedCamera | None = None

    def load_camera_adapter(self, path: str | os.PathLike) -> None:
        """Load a camera adapter file (strict: one made for another architecture is a ``ValueError`` naming the
        block that differs); replaces one loaded before. Its camera starts unset (the base model's output)."""
        path = Path(path)
        adapter, meta = read_camera_adapter(path)
        base = meta.get("base_model_sha256")
        if self.camera_adapter is not None:
            self.unload_camera_adapter()
        attach_camera(self.unet, adapter.to(next(self.unet.parameters()).device))
        hashed = getattr(self, "base_model_sha256", None)  # LoRAMixin's, computed once
        own = hashed() if hashed is not None else state_sha256(self.unet.state_dict())
        if base and base != own:
            warnings.warn(f"{path}: made for a base model with hash {base[:12]}…, this one is {own[:12]}… "
                          "(a fine-tune or another model?)", stacklevel=2)
        self.camera_adapter = LoadedCamera(str(path), file_sha256(path), adapter, base,
                                           meta.get("motion_bucket_scale"))

    def set_camera(self, camera: str | torch.Tensor | None) -> None:
        """The camera path the next generations follow: a preset name (``CAMERA_PRESETS``), a ``.json`` path file,
        a ``(num_frames, 4)`` tensor, or None for none. Needs :meth:`load_camera_adapter` first."""
        if self.camera_adapter is None:
            raise ValueError("no camera adapter is loaded: load_camera_adapter(path) first")
        self.camera_adapter.adapter.set_camera(camera)

    def unload_camera_adapter(self) -> None:
        """Remove the camera adapter: the UNet runs as the plain network again."""
        detach_camera(self.unet)
        self.camera_adapter = None

    def camera_record(self) -> dict[str, Any] | None:
        """The sidecar's ``camera`` entry: the request, the path of every frame, and the adapter's file and hash."""
        c = self.camera_adapter
        if c is None or c.adapter.camera is None:
            return None
        spec = c.adapter.camera
        return {**path_record(c.adapter.last_path, spec if isinstance(spec, str) else None),
                "adapter": c.path, "sha256": c.sha256, "base_model_sha256": c.base_model_sha256}
