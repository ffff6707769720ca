"""LoRA for training: adapters registered on the network (so optimizers, EMA and checkpoints see them) and
their export as a small LoRA file recording the base model's hash.

The trainable adapter sits at ``<net>.lora`` (parameter names ``lora.layers.<layer>.down`` / ``.up``, dots of
the layer name as ``__``); everything else of the network is left as it was loaded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from vidiff.adapters.formats import LoRAFile, write_lora
from vidiff.adapters.lora import LoRAAdapter, attach_lora, state_sha256

__all__ = ["TRAINED_NAME", "attach_trainable_lora", "export_trained_lora"]

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
