"""LoRA and camera adapters for training: registered on the network (so optimizers, EMA and checkpoints see them)
and exported as small files recording the base model's hash.

The trainable adapter sits at ``<net>.lora`` (parameter names ``lora.layers.<layer>.down`` / ``.up``, dots of
the layer name as ``__``); everything else of the network is left as it was loaded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from vidiff.adapters.camera import CameraAdapter, attach_camera, camera_preset, write_camera_adapter
from vidiff.adapters.formats import LoRAFile, write_lora
from vidiff.adapters.lora import LoRAAdapter, attach_lora, state_sha256

__all__ = ["CAMERA_NAME", "TRAINED_NAME", "attach_trainable_camera", "attach_trainable_lora", "export_trained_camera",
           "export_trained_lora", "set_batch_camera"]

TRAINED_NAME = "lora"  # the attribute (and adapter name) of the adapter being trained


def attach_trainable_lora(net: nn.Module, *, rank: int, alpha: float | None, targets: Sequence[str],
                          dropout: float = 0.0) -> LoRAAdapter:
    """Create a fresh LoRA on ``net``'s layers matching ``targets`` and register it as ``net.lora``."""
    adapter = LoRAAdapter.create(net, rank=rank, alpha=alpha, targets=targets, dropout=dropout)
    attach_lora(net, adapter, TRAINED_NAME)
    net.add_module(TRAINED_NAME, adapter.to(next(net.parameters()).device))
    return adapter


def export_trained_lora(net: nn.Module, weights: Mapping[str, torch.Tensor], path: str | os.PathLike, *,
                        prefix: str = "", targets: Sequence[str] = ()) -> LoRAFile:
    """Write the trained adapter of ``net`` with the values in ``weights`` (e.g. EMA; names as in
    ``net.state_dict()`` under ``prefix``) to ``path`` in vidiff's format, with the hash of ``net``'s base
    weights (everything but the adapter) and the UNet config. Returns what was written."""
    adapter: LoRAAdapter = getattr(net, TRAINED_NAME)
    with torch.no_grad():
        for name, p in adapter.named_parameters():
            p.copy_(weights[f"{prefix}{TRAINED_NAME}.{name}"])
    base = {k: v for k, v in net.state_dict().items() if not k.startswith(TRAINED_NAME + ".")}
    layer = next(layer for _, layer in adapter.items())
    config = net.config.to_dict() if hasattr(net, "config") and hasattr(net.config, "to_dict") else None
    meta = {"rank": layer.rank, "alpha": layer.alpha, "targets": list(targets),
            "base_model_sha256": state_sha256(base), "unet_config": config}
    lora = LoRAFile(adapter.to_tensors(), meta)
    write_lora(lora, path, "vidiff")
    return lora


# -- camera adapter (vidiff.adapters.camera) ---------------------------------------------------------------------
CAMERA_NAME = "camera"  # the attribute of the camera adapter being trained (parameters ``camera.*``)


def attach_trainable_camera(net: nn.Module, *, hidden: int) -> CameraAdapter:
    """Create a fresh (zero-initialised) camera adapter on ``net``'s temporal blocks, registered as ``net.camera``."""
    adapter = CameraAdapter.create(net, hidden).to(next(net.parameters()).device)
    attach_camera(net, adapter)
    net.add_module(CAMERA_NAME, adapter)
    return adapter


def set_batch_camera(net: nn.Module, items: Sequence[Mapping[str, object]]) -> None:
    """Give the trained camera adapter of ``net`` each clip's camera path (``item["camera"] (T, 4)``, as
    ``CameraMoveDataset`` makes; a clip without one gets the static path)."""
    adapter: CameraAdapter = getattr(net, CAMERA_NAME)
    t = next(int(torch.as_tensor(it["video"]).shape[0]) for it in items)
    static = camera_preset("static", t)
    adapter.set_camera(torch.stack([torch.as_tensor(it.get("camera", static), dtype=torch.float32) for it in items]))


def export_trained_camera(net: nn.Module, weights: Mapping[str, torch.Tensor], path: str | os.PathLike, *,
                          prefix: str = "", motion_bucket_scale: float | None = None) -> CameraAdapter:
    """Write the trained camera adapter of ``net`` with the values in ``weights`` (names as in ``net.state_dict()``
    under ``prefix``) to ``path``, with the hash of ``net``'s base weights and the UNet config."""
    adapter: CameraAdapter = getattr(net, CAMERA_NAME)
    with torch.no_grad():
        for name, p in adapter.named_parameters():
            p.copy_(weights[f"{prefix}{CAMERA_NAME}.{name}"])
    base = {k: v for k, v in net.state_dict().items() if not k.startswith(CAMERA_NAME + ".")}
    config = net.config.to_dict() if hasattr(net, "config") and hasattr(net.config, "to_dict") else None
    write_camera_adapter(adapter, path, base_model_sha256=state_sha256(base), unet_config=config,
                         motion_bucket_scale=motion_bucket_scale)
    return adapter
