"""Weights of the metric networks (I3D, FID Inception): converted once to safetensors, loaded strictly.

The networks used by FVD and FID are distributed as ``torch.save`` pickles (``rgb_imagenet.pt`` and
``i3d_pretrained_400.pt`` for I3D, ``pt_inception-2015-12-05-6726825d.pth`` for pytorch-fid's Inception).
:func:`convert_network_weights` reads such a pickle once with ``torch.load(weights_only=True)`` (tensors and
plain containers only: a pickle that carries code is refused), checks every name and shape against the
network vidiff defines, and writes a safetensors file whose metadata names the network. The loaders then
read only safetensors and refuse a file of another network, naming the file and what does not match.

Nothing is downloaded: the user points at the files.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from vidiff.io.checkpoints import load_torch_bin
from vidiff.io.weights import (
    CheckpointError,
    check_state_dict,
    load_safetensors,
    read_safetensors_metadata,
    save_safetensors_atomic,
)

__all__ = ["METADATA_KEY", "convert_network_weights", "expected_shapes", "load_network_weights"]

METADATA_KEY = "vidiff_network"  # the safetensors metadata entry naming the network a file holds
# Wrappers that training scripts put around a model and whose prefix the distributed files sometimes keep.
_PREFIXES = ("module.", "model.")


def expected_shapes(model: nn.Module) -> dict[str, torch.Size]:
    """Names and shapes a weights file must hold for ``model`` (BatchNorm's step counters are optional:
    eval-mode networks never read them, and files saved by old PyTorch versions lack them)."""
    return {k: v.shape for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def _strip(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    for prefix in _PREFIXES:
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix):]: v for k, v in out.items()}
    return out


def _load_into(model: nn.Module, state: Mapping[str, torch.Tensor], path: Path, network: str) -> None:
    check_state_dict(expected_shapes(model), state, f"{path} (as {network} weights)")
    model.load_state_dict(dict(state), strict=False)  # only num_batches_tracked may be absent (checked above)


def load_network_weights(model: nn.Module, path: str | os.PathLike, network: str) -> nn.Module:
    """Load the safetensors file ``path`` into ``model`` (names and shapes checked), in eval mode.

    Raises :class:`~vidiff.io.weights.CheckpointError` (a ``ValueError``) naming ``path`` when the file is
    missing, not safetensors (e.g. the original pickle: convert it first), or holds another network.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {network} weights file not found")
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: {network} weights must be safetensors; convert the file once with "
                              f"`vidiff convert-weights {network.lower()} {path} OUT.safetensors`")
    meta = read_safetensors_metadata(path)
    if meta.get(METADATA_KEY, network) != network:
        raise CheckpointError(f"{path}: holds {meta[METADATA_KEY]} weights, not {network}")
    _load_into(model, _strip(load_safetensors(path)), path, network)
    return model.eval().requires_grad_(False)


def convert_network_weights(build: Callable[[], nn.Module], network: str, src: str | os.PathLike,
                            dst: str | os.PathLike, *, overwrite: bool = False,
                            metadata: Mapping[str, str] | None = None) -> Path:
    """Convert the weights ``src`` (a ``torch.save`` pickle, read with ``weights_only=True``, or safetensors)
    of ``network`` to the safetensors file ``dst``, after checking them against ``build()``.

    Returns ``dst``. A file of another architecture, a pickle with code or an existing ``dst`` without
    ``overwrite`` raise ``CheckpointError`` before anything is written; ``dst`` is written atomically, with
    ``metadata`` (strings) beside the network's name.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise CheckpointError(f"{src}: file not found")
    if (dst.exists() or dst.is_symlink()) and not overwrite:
        raise CheckpointError(f"{dst}: already exists (pass --overwrite to replace it)")
    if dst.resolve() == src.resolve():
        raise CheckpointError(f"{dst}: is the source itself; write to another path")
    if dst.suffix != ".safetensors":
        raise CheckpointError(f"{dst}: the output must be a .safetensors file")
    state = load_safetensors(src) if src.suffix == ".safetensors" else load_torch_bin(src)
    state = _strip(state)
    model = build()
    _load_into(model, state, src, network)
    tensors = {k: v.to(torch.float32) if v.is_floating_point() else v for k, v in state.items()}
    save_safetensors_atomic(tensors, dst, metadata={**(metadata or {}), METADATA_KEY: network})
    return dst
