"""ONNX export of the full SVD-XT configuration with random weights: sizes, times and peak memory.

Builds SVD-XT's three networks at their published sizes — the UNet (``UNET_PRESETS["svd_xt"]``, 1.5 B
parameters), the temporal VAE (``VAEConfig()``, SVD's) and the CLIP ViT-H/14 image encoder with projection
(632 M) — with random weights (each module's own initialisation, no download), and exports them one at a time with
``vidiff.export.export_onnx`` (external data: one ``.onnx.data`` file per graph). Each network is built and
freed in turn, so peak memory stays near one network plus the exporter's working set. Reports each graph's
file sizes and export time, the process's peak RSS, and checks that ``onnx.checker`` accepts every graph
(by path, so the weights are not loaded) and that onnxruntime can open the VAE decoder and image encoder.

    python benchmarks/onnx_export.py [--dtype float16] [--out DIR] [--targets unet,vae_decoder,image_encoder]
        [--json FILE]

The UNet in float32 is ~6.1 GB of weights; float16 halves that. Run it in the background on a shared machine.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from vidiff.autoencoders import AutoencoderKLTemporal, VAEConfig
from vidiff.export.onnx import export_onnx
from vidiff.networks import UNET_PRESETS, UNetSpatioTemporal
from vidiff.networks.fast import FastPath

CLIP_VIT_H = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                  patch_size=14, image_size=224, projection_dim=1024, hidden_act="gelu")  # SVD's image_encoder


def _random(build, dtype: torch.dtype) -> nn.Module:
    """``build()`` with its own random initialisation, created directly in ``dtype`` (no float32 copy)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        torch.manual_seed(0)
        return build().eval()
    finally:
        torch.set_default_dtype(before)


class _Networks(SimpleNamespace):
    """What ``export_onnx`` reads of a pipeline: ``unet``, ``vae``, ``clip`` and the fast-path switch."""

    fast_path = FastPath(fuse_projections=False)

    def set_fast_path(self, fast: FastPath) -> None:
        self.fast_path = fast


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _export(name: str, networks: _Networks, out: Path, dtype: torch.dtype) -> dict:
    start = time.perf_counter()
    manifest = export_onnx(networks, out / name, (name,), external_data=True, model="random SVD-XT",
                           latent_size=(8, 8), num_frames=2)
    graph = manifest["graphs"][name]
    row = {"graph": name, "dtype": str(dtype).removeprefix("torch."), "bytes": graph["bytes"],
           "external_data": graph["external_data"], "export_seconds": graph["export_seconds"],
           "total_seconds": round(time.perf_counter() - start, 1), "peak_rss_gib": round(_peak_gib(), 2)}
    import onnx

    onnx.checker.check_model(str(out / name / graph["file"]))  # by path: graphs over 2 GiB are checked too
    row["onnx_checker"] = "ok"
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    ap.add_argument("--out", default=None, help="keep the graphs here (default: a temporary folder)")
    ap.add_argument("--targets", default="unet,vae_decoder,image_encoder")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        for name in args.targets.split(","):
            params = 0
            if name == "unet":
                unet = _random(lambda: UNetSpatioTemporal(UNET_PRESETS["svd_xt"]), dtype)
                params = sum(p.numel() for p in unet.parameters())
                networks = _Networks(unet=unet, vae=None, clip=None)
            elif name == "vae_decoder":
                vae = _random(lambda: AutoencoderKLTemporal(VAEConfig()), torch.float32)  # the VAE stays float32
                params = sum(p.numel() for n, p in vae.named_parameters() if n.startswith("decoder"))
                networks = _Networks(unet=None, vae=vae, clip=None)
            else:
                from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

                enc = _random(lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**CLIP_VIT_H)), dtype)
                params = sum(p.numel() for p in enc.parameters())
                networks = _Networks(unet=None, vae=None, clip=SimpleNamespace(encoder=enc, image_size=224))
            row = {"parameters": params, **_export(name, networks, out, dtype)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            del networks
            gc.collect()
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
