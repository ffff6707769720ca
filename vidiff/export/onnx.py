"""ONNX export of an image-to-video model's three networks: the UNet step, the VAE decoder, the image encoder.

Each network is traced (``torch.onnx.export``, TorchScript exporter, opset 17) through a thin wrapper whose
inputs are plain tensors:

* ``unet.onnx`` — ``F(x, c_noise, cond)``, the network inside the denoiser ``D = c_skip·x + c_out·F(c_in·x, …)``
  (EDM eq. 7; the preconditioning stays in PyTorch): ``x (B, T, C, h, w)``, ``c_noise (B, T)``,
  ``crossattn (B, S, D)``, ``vector (B, D_adm)``, ``concat (B, T, C_cat, h, w)`` → ``(B, T, C_out, h, w)``.
  Batch, frames, height and width are dynamic axes. ``c_noise`` is traced per frame (the UNet's per-frame
  path, exact for equal levels too), so one graph serves plain and per-frame (clean first frame) sampling.
* ``vae_decoder.onnx`` — one clip's latents ``(T, C, h, w)`` → frames ``(T, 3, H, W)`` (the temporal decoder
  of KL VAEs; the pipeline's chunking stays in PyTorch), or for patch / flow-warp autoencoders the whole
  ``decode`` (``z (B, T, C, h, w)`` [+ ``reference (B, 3, H, W)``]); frames and size are dynamic.
* ``image_encoder.onnx`` — CLIP ``pixel_values (N, 3, S, S)`` → ``image_embeds (N, D)`` (dynamic N).

Graphs whose weights pass ``external_data_threshold`` bytes (or all, with ``external_data=True``) keep their
weights in one ``<name>.onnx.data`` file beside the graph (ONNX's protobuf limit is 2 GiB). ``onnx.json``
lists what was written; :mod:`vidiff.export.runner` reads it.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vidiff import __version__
from vidiff.conditioning.cond import Cond
from vidiff.networks.fast import FastPath

__all__ = ["MANIFEST", "ONNX_TARGETS", "OPSET", "ExportedGraph", "export_onnx", "onnx_modules"]

ONNX_TARGETS = ("unet", "vae_decoder", "image_encoder")
OPSET = 17
MANIFEST = "onnx.json"
EXTERNAL_DATA_THRESHOLD = 512 * 2**20  # bytes of weights above which a graph keeps them in a .data file


def _cond(crossattn: torch.Tensor, vector: torch.Tensor, concat: torch.Tensor) -> Cond:
    """A :class:`Cond` built without its batch-size check: under tracing the sizes are tensors, which the
    check (a set of sizes) cannot compare; the graph's inputs share the batch axis by construction."""
    cond = object.__new__(Cond)
    for f, value in zip(fields(Cond), (crossattn, vector, concat)):
        object.__setattr__(cond, f.name, value)
    return cond


class UNetStep(nn.Module):
    """``F(x, c_noise, Cond(crossattn, vector, concat))`` with tensor inputs only (what the graph holds)."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, crossattn: torch.Tensor, vector: torch.Tensor,
                concat: torch.Tensor) -> torch.Tensor:
        return self.unet(x, c_noise, _cond(crossattn, vector, concat))


class ClipDecoder(nn.Module):
    """A KL video VAE's decoder on one clip, ``(T, C, h, w)`` → ``(T, 3, H, W)``."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae._decode_frames(z)


class WholeDecoder(nn.Module):
    """A patch / flow-warp autoencoder's ``decode`` (``reference`` for those conditioned on it)."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, z: torch.Tensor, *reference: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z, reference=reference[0]) if reference else self.vae.decode(z)


class ImageEmbeds(nn.Module):
    """CLIP vision tower with projection: ``pixel_values`` → ``image_embeds``."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.encoder(pixel_values=pixel_values)
        return out.image_embeds if hasattr(out, "image_embeds") else out


@dataclass(frozen=True)
class ExportedGraph:
    """One graph to export: the module, example inputs, names and dynamic axes (ONNX's vocabulary)."""

    name: str
    module: nn.Module
    inputs: tuple[torch.Tensor, ...]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]


def _unet_graph(unet: nn.Module, num_frames: int, h: int, w: int) -> ExportedGraph:
    cfg = unet.config
    dtype = next(unet.parameters()).dtype
    c_cat = cfg.in_channels - cfg.out_channels
    g = torch.Generator().manual_seed(0)
    # distinct per-frame levels: the trace takes the UNet's per-frame path (see the module docstring)
    c_noise = torch.linspace(-1.0, 1.0, num_frames).view(1, num_frames)
    inputs = (torch.randn(1, num_frames, cfg.out_channels, h, w, generator=g).to(dtype), c_noise,
              torch.randn(1, 1, cfg.cross_attention_dim, generator=g).to(dtype),
              torch.randn(1, cfg.projection_class_embeddings_input_dim, generator=g).to(dtype),
              torch.randn(1, num_frames, c_cat, h, w, generator=g).to(dtype))
    video = {0: "batch", 1: "frames", 3: "height", 4: "width"}
    axes = {"x": video, "c_noise": {0: "batch", 1: "frames"}, "crossattn": {0: "batch"}, "vector": {0: "batch"},
            "concat": video, "F_x": video}
    return ExportedGraph("unet", UNetStep(unet), inputs, ("x", "c_noise", "crossattn", "vector", "concat"),
                         ("F_x",), axes)


def _vae_graph(vae: nn.Module, num_frames: int, h: int, w: int) -> ExportedGraph:
    g = torch.Generator().manual_seed(0)
    c, f = vae.config.latent_channels, vae.config.downsample_factor
    frames = {0: "frames", 2: "height", 3: "width"}
    if hasattr(vae, "_decode_frames"):
        z = torch.randn(num_frames, c, h, w, generator=g).to(vae.dtype)
        return ExportedGraph("vae_decoder", ClipDecoder(vae), (z,), ("z",), ("frames",),
                             {"z": frames, "frames": frames})
    video = {0: "batch", 1: "frames", 3: "height", 4: "width"}
    z = torch.randn(1, num_frames, c, h, w, generator=g)
    if getattr(vae, "reference_conditioned", False):
        ref = torch.rand(1, vae.config.in_channels, h * f, w * f, generator=g)
        return ExportedGraph("vae_decoder", WholeDecoder(vae), (z, ref), ("z", "reference"), ("frames",),
                             {"z": video, "reference": {0: "batch", 2: "full_height", 3: "full_width"},
                              "frames": video})
    return ExportedGraph("vae_decoder", WholeDecoder(vae), (z,), ("z",), ("frames",), {"z": video, "frames": video})


def _encoder_graph(encoder: nn.Module, image_size: int) -> ExportedGraph:
    dtype = next(encoder.parameters()).dtype
    pixels = torch.randn(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)).to(dtype)
    return ExportedGraph("image_encoder", ImageEmbeds(encoder), (pixels,), ("pixel_values",), ("image_embeds",),
                         {"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}})


def onnx_modules(pipe: Any, targets: tuple[str, ...] = ONNX_TARGETS, *, num_frames: int = 2,
                 latent_size: tuple[int, int] = (8, 8)) -> list[ExportedGraph]:
    """The graphs of ``pipe`` (an :class:`~vidiff.pipelines.image_to_video.ImageToVideoPipeline`) to export,
    traced at ``num_frames`` and ``latent_size`` (the axes stay dynamic). A model without an image encoder
    (the bundled one) skips ``image_encoder``."""
    unknown = set(targets) - set(ONNX_TARGETS)
    if unknown:
        raise ValueError(f"unknown export targets {sorted(unknown)}; choose from {list(ONNX_TARGETS)}")
    h, w = latent_size
    graphs = []
    if "unet" in targets:
        graphs.append(_unet_graph(pipe.unet, num_frames, h, w))
    if "vae_decoder" in targets:
        graphs.append(_vae_graph(pipe.vae, num_frames, h, w))
    if "image_encoder" in targets and pipe.clip is not None:
        graphs.append(_encoder_graph(pipe.clip.encoder, pipe.clip.image_size))
    return graphs


def _dtype_name(pipe: Any) -> str:
    """The dtype the UNet and image encoder were exported in (the VAE decoder is float32 regardless)."""
    nets = [pipe.unet, pipe.clip.encoder if pipe.clip is not None else None]
    dtype = next((p.dtype for n in nets if n is not None for p in n.parameters()), torch.float32)
    return str(dtype).removeprefix("torch.")


def _weight_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def _export_one(graph: ExportedGraph, folder: Path, external: bool) -> dict[str, Any]:
    path = folder / f"{graph.name}.onnx"
    start = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's warnings about Python values taken as constants
        torch.onnx.export(graph.module.eval(), graph.inputs, str(path), input_names=list(graph.input_names),
                          output_names=list(graph.output_names), dynamic_axes=graph.dynamic_axes,
                          opset_version=OPSET, do_constant_folding=True, dynamo=False)
    data = _external_data(path, graph.name) if external else None
    files = [path.name] + ([data] if data else [])
    return {"file": path.name, "external_data": data, "inputs": list(graph.input_names),
            "outputs": list(graph.output_names), "dynamic_axes": {k: {str(a): n for a, n in v.items()}
                                                                  for k, v in graph.dynamic_axes.items()},
            "bytes": sum(os.path.getsize(folder / f) for f in files),
            "export_seconds": round(time.perf_counter() - start, 2)}


def _external_data(path: Path, name: str) -> str | None:
    """Move the weights of ``path`` into one ``<name>.onnx.data`` beside it and return that file's name.

    A graph over 2 GiB comes out of the exporter with one file per tensor; those are concatenated (copied
    in blocks, so memory stays flat whatever the model's size) and the graph is re-pointed at the offsets.
    A smaller graph still holds its weights and is converted by ``onnx``'s own helper."""
    import onnx
    from onnx.external_data_helper import convert_model_to_external_data

    data = f"{name}.onnx.data"
    model = onnx.load(str(path), load_external_data=False)
    external = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if not external:
        onnx.load_external_data_for_model(model, str(path.parent))
        convert_model_to_external_data(model, all_tensors_to_one_file=True, location=data, size_threshold=1024)
        onnx.save_model(model, str(path))
        return data if (path.parent / data).is_file() else None  # a graph without weights has none to move
    sources = []
    with open(path.parent / data, "wb") as out:
        for tensor in external:
            info = {e.key: e.value for e in tensor.external_data}
            src = path.parent / info["location"]
            offset, length = int(info.get("offset", 0)), info.get("length")
            out.seek((out.tell() + 4095) // 4096 * 4096)  # page-aligned, as onnx's helper aligns for mmap
            start = out.tell()
            with open(src, "rb") as f:
                f.seek(offset)
                remaining = int(length) if length is not None else os.path.getsize(src) - offset
                while remaining > 0:
                    block = f.read(min(remaining, 64 << 20))
                    if not block:
                        raise OSError(f"{src}: shorter than the graph says")
                    out.write(block)
                    remaining -= len(block)
            del tensor.external_data[:]
            for key, value in (("location", data), ("offset", str(start)), ("length", str(out.tell() - start))):
                tensor.external_data.add(key=key, value=value)
            sources.append(src)
    onnx.save_model(model, str(path))
    for src in set(sources):
        if src.name != data:
            src.unlink(missing_ok=True)
    return data


def export_onnx(pipe: Any, folder: str | os.PathLike, targets: tuple[str, ...] = ONNX_TARGETS, *,
                external_data: bool | None = None, model: str | None = None, num_frames: int = 2,
                latent_size: tuple[int, int] = (8, 8)) -> dict[str, Any]:
    """Export ``pipe``'s networks to ``folder`` (created) and write ``onnx.json`` there; returns its content.

    ``external_data``: True puts every graph's weights in a ``.data`` file, False none, None (default)
    those above 512 MiB. ``model`` is recorded as the source the runner reloads the rest of the pipeline from.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    graphs = {}
    fast = pipe.fast_path
    pipe.set_fast_path(FastPath(fuse_projections=False))  # fused q/k/v are copies: traced, they double the weights
    try:
        for graph in onnx_modules(pipe, targets, num_frames=num_frames, latent_size=latent_size):
            big = _weight_bytes(graph.module) > EXTERNAL_DATA_THRESHOLD
            graphs[graph.name] = _export_one(graph, folder, big if external_data is None else external_data)
    finally:
        pipe.set_fast_path(fast)
    manifest = {"format": "vidiff-onnx", "vidiff_version": __version__, "torch_version": torch.__version__,
                "opset": OPSET, "model": model, "dtype": _dtype_name(pipe),
                "graphs": graphs}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
