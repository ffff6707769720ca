"""Sampling with onnxruntime through the same pipeline: the exported graphs stand in for the PyTorch networks.

:func:`onnx_pipeline` loads the model the export came from (for its configs, scheduler, conditioning and
VAE encoder, which stay in PyTorch) and puts onnxruntime sessions where the UNet, the VAE decoder and the
image encoder were. Everything else — the EDM preconditioning, guidance, the sampler, chunked decoding,
settings and outputs — is the pipeline's own code, so the two paths differ only by the graphs' arithmetic.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vidiff.export.onnx import MANIFEST

__all__ = ["OrtGraph", "OrtImageEncoder", "OrtUNet", "onnx_pipeline", "read_manifest"]

DEFAULT_PROVIDERS = ("CPUExecutionProvider",)


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """``onnx.json`` of an export folder (``ValueError`` naming the folder when it is not one)."""
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{folder}: not an ONNX export of vidiff (cannot read {MANIFEST}: {e})") from None
    if manifest.get("format") != "vidiff-onnx" or not isinstance(manifest.get("graphs"), dict):
        raise ValueError(f"{path}: not a vidiff ONNX manifest")
    return manifest


class OrtGraph:
    """One onnxruntime session: ``graph(*tensors)`` runs it on CPU numpy copies and returns torch tensors."""

    def __init__(self, path: str | os.PathLike, providers: Sequence[str] = DEFAULT_PROVIDERS) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        self.session = ort.InferenceSession(str(path), options, providers=list(providers))
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        if len(inputs) != len(self.input_names):
            raise ValueError(f"the graph takes {self.input_names}, got {len(inputs)} inputs")
        feeds = {name: np.ascontiguousarray(t.detach().cpu().numpy()) for name, t in zip(self.input_names, inputs)}
        return torch.from_numpy(self.session.run(None, feeds)[0])


class _OrtModule(nn.Module):
    """A module with no weights of its own: one empty float32 parameter tells callers the dtype it takes."""

    def __init__(self, graph: OrtGraph, dtype: torch.dtype) -> None:
        super().__init__()
        self.graph = graph
        self.dtype_anchor = nn.Parameter(torch.empty(0, dtype=dtype), requires_grad=False)


class OrtUNet(_OrtModule):
    """The UNet's ``forward(x, c_noise, cond)`` contract served by ``unet.onnx`` (see :mod:`vidiff.export.onnx`)."""

    def __init__(self, graph: OrtGraph, config: Any, dtype: torch.dtype) -> None:
        super().__init__(graph, dtype)
        self.config = config

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: Any, *,
                image_only_indicator: torch.Tensor | None = None) -> torch.Tensor:
        if image_only_indicator is not None and bool(image_only_indicator.any()):
            raise ValueError("the exported UNet treats every frame as video (image_only_indicator must be zeros)")
        b, t = x.shape[:2]
        c_noise = torch.as_tensor(c_noise, dtype=torch.float32)
        if c_noise.ndim < 2:  # one level per video (or for all): the graph takes one per frame
            c_noise = c_noise.reshape(-1, 1)
        c_noise = c_noise.expand(b, t)
        concat = cond.concat
        if concat.ndim == 4:  # one latent per video
            concat = concat[:, None].expand(-1, t, -1, -1, -1)
        vector = cond.vector
        if vector.ndim == 3:
            if not bool((vector == vector[:, :1]).all()):
                raise ValueError("the exported UNet takes one conditioning vector per video, not per frame")
            vector = vector[:, 0]
        dtype = self.dtype_anchor.dtype
        out = self.graph(x.to(dtype), c_noise.float(), cond.crossattn.to(dtype), vector.to(dtype), concat.to(dtype))
        return out.to(x.device)


class OrtImageEncoder(_OrtModule):
    """CLIP's ``encoder(pixel_values=...)`` served by ``image_encoder.onnx``; returns the embeddings."""

    def __init__(self, graph: OrtGraph, config: Any, dtype: torch.dtype) -> None:
        super().__init__(graph, dtype)
        self.config = config

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.graph(pixel_values.to(self.dtype_anchor.dtype)).to(pixel_values.device)


def _decoder(graph: OrtGraph, vae: nn.Module) -> None:
    """Route the VAE's decoding through ``vae_decoder.onnx`` (chunking and blending stay in the pipeline)."""
    if hasattr(vae, "_decode_frames"):  # KL video VAE: the graph decodes one clip
        vae._decode_frames = lambda z: graph(z.to(vae.dtype)).to(z.device)
        return

    def decode(z: torch.Tensor, chunk_size: int | None = None, overlap: int = 0, *, tiled: bool = False,
               progress: bool = False, reference: torch.Tensor | None = None) -> torch.Tensor:
        inputs = (z.float(),) if reference is None else (z.float(), reference.float())
        return graph(*inputs).to(z.device)

    vae.decode = decode


def onnx_pipeline(folder: str | os.PathLike, *, model: str | os.PathLike | None = None,
                  providers: Sequence[str] = DEFAULT_PROVIDERS) -> Any:
    """An :class:`~vidiff.pipelines.image_to_video.ImageToVideoPipeline` whose UNet, VAE decoder and image
    encoder run in onnxruntime (those the folder holds). ``model``: where the rest of the pipeline is read
    from (default: the model the export records)."""
    from vidiff.pipelines.image_to_video import ImageToVideoPipeline

    manifest = read_manifest(folder)
    source = model or manifest.get("model")
    if source is None:
        raise ValueError(f"{folder}: the export records no model; pass model=")
    dtype = getattr(torch, manifest.get("dtype", "float32"))
    pipe = ImageToVideoPipeline.from_pretrained(source, dtype=dtype, vae_dtype=torch.float32)
    graphs = manifest["graphs"]
    path = Path(folder)
    if "unet" in graphs:
        pipe.unet = OrtUNet(OrtGraph(path / graphs["unet"]["file"], providers), pipe.unet.config, dtype)
    if "vae_decoder" in graphs:
        _decoder(OrtGraph(path / graphs["vae_decoder"]["file"], providers), pipe.vae)
    if "image_encoder" in graphs and pipe.clip is not None:
        encoder = pipe.clip.encoder
        pipe.clip.encoder = OrtImageEncoder(OrtGraph(path / graphs["image_encoder"]["file"], providers),
                                            getattr(encoder, "config", None), dtype)
    return pipe
