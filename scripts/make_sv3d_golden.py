"""Golden files for SV3D_p parity: Stability's own ``sgm`` modules run on tiny random weights.

SV3D (Voleti et al. 2024, Sec. 3) is SVD's video UNet conditioned per frame on the camera: the vector input
is [cond_aug (256) | polar (512) | azimuth (512)] sinusoids, one row per frame, and sampling uses EDM's
Euler sampler with a triangle-shaped classifier-free guidance scale over the orbit (Sec. 3, "triangular CFG scaling").

This script is NOT part of vidiff and is not run by the tests. It imports ``sgm`` from a checkout of
Stability-AI/generative-models (not on PyPI; its code must not be copied into vidiff), builds

- a tiny SV3D_p ``VideoUNet`` (2 levels of 32 channels, head width 32, context 32, ``adm_in_channels`` 1280) and a tiny
  SD ``Decoder`` (the per-frame first stage SV3D ships) with seeded random weights;
- sgm's ``GeneralConditioner`` with SV3D_p's three ``ConcatTimestepEmbedderND`` embedders
  (``cond_aug`` 256, ``polars_rad`` 512, ``azimuths_rad`` 512) fed as ``simple_video_sample.py`` feeds them;
- sgm's ``EulerEDMSampler`` (EDM discretization, σ_max 700) with ``TrianglePredictionGuider`` and the
  ``Denoiser`` with ``VScalingWithEDMcNoise``, on fixed noise, then the first-stage decode and the script's
  replacement of the last frame by the input image;

and writes, under ``tests/data/sv3d/``:

- ``tiny_sv3d_p.safetensors``: the weights under sgm's single-file names (``model.diffusion_model.*``,
  ``first_stage_model.decoder.*``), float16 (the random weights are float16-exact, so nothing is lost);
- ``golden.safetensors``: inputs and sgm's outputs (network forward, conditioning vectors, sampled latents
  and pixels).

Run (sgm's light dependencies: omegaconf, einops, scipy, fsspec, kornia, pytorch-lightning; torch 2.13)::

    python scripts/make_sv3d_golden.py --sgm /tmp/gm --out tests/data/sv3d

With ``--open-clip DIR`` (the unpacked ``open_clip`` package of open_clip_torch 2.20, the version sgm requires)
it also writes ``released_keys.json.gz``: every tensor name and shape of the released SV3D_u and SV3D_p
single files, from the reference's module tree built at full size on the meta device (no weights):
``model.diffusion_model`` = ``VideoUNet`` of ``sv3d_{u,p}.yaml``, ``conditioner.embedders.0.open_clip.model``
= OpenCLIP ViT-H-14 minus its deleted text ``transformer`` (``FrozenOpenCLIPImageEmbedder``),
``conditioner.embedders.1.encoder`` = ``AutoencoderKLModeOnly``, ``first_stage_model`` = the yaml's
``AutoencodingEngine`` (Identity encoder, SD ``Decoder``). ``open_clip.utils`` imports torchvision's
``FrozenBatchNorm2d`` (only used to freeze ResNet towers, never for a ViT): ``torch.nn.BatchNorm2d`` is
registered under that name so the package's own ``model`` and ``transformer`` modules import.

``open_clip`` is imported at the top of ``sgm.modules.encoders.modules`` but only used by the CLIP embedders,
which this script never builds; it needs torchvision, which has no CPU build matching this torch, so an
empty ``open_clip`` module is registered before the import. Everything that runs is sgm's own code, in
float32 on the CPU (the reference script's ``torch.autocast`` is left out: the parity tests are float32).
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

T = 5  # frames of the tiny orbit (the released model: 21)
LATENT = 8  # latent side (the one-level tiny decoder keeps pixels at 8x8)
CONTEXT = 32  # CLIP token width of the tiny UNet (released: 1024)
SEED = 0
STEPS = 4
MAX_SCALE = 2.5  # sv3d_p.yaml: TrianglePredictionGuider max_scale
COND_AUG = 1e-5  # simple_video_sample.py, sv3d_p
SCALE_FACTOR = 0.18215  # sv3d_p.yaml: scale_factor
DEFAULT_ELEVATION = 10.0  # simple_video_sample.py: elevations_deg default

UNET = {
    "in_channels": 8, "model_channels": 32, "out_channels": 4, "num_res_blocks": 1,
    "attention_resolutions": [1], "channel_mult": [1, 1], "num_head_channels": 32, "transformer_depth": 1,
    "context_dim": CONTEXT, "num_classes": "sequential", "adm_in_channels": 1280,
    "use_linear_in_transformer": True, "extra_ff_mix_layer": True, "use_spatial_context": True,
    "merge_strategy": "learned_with_images", "video_kernel_size": [3, 1, 1],
    "spatial_transformer_attn_type": "softmax",
}
DECODER = {
    "double_z": True, "z_channels": 4, "resolution": 8, "in_channels": 3, "out_ch": 3, "ch": 32,
    "ch_mult": [1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0, "attn_type": "vanilla",
}
CUSTOM_ELEVATIONS = [5.0, -20.0, 30.0, 89.0, 0.0]
CUSTOM_AZIMUTHS = [300.0, 45.0, 200.0, 90.0, 10.0]


def import_sgm(root: Path) -> types.SimpleNamespace:
    """sgm's modules from the checkout at ``root`` (see the module docstring about ``open_clip``)."""
    sys.path.insert(0, str(root))
    sys.modules.setdefault("open_clip", types.ModuleType("open_clip"))
    from sgm.modules.diffusionmodules.denoiser import Denoiser
    from sgm.modules.diffusionmodules.model import Decoder
    from sgm.modules.diffusionmodules.sampling import EulerEDMSampler
    from sgm.modules.diffusionmodules.video_model import VideoUNet
    from sgm.modules.diffusionmodules.wrappers import OpenAIWrapper
    from sgm.modules.encoders.modules import GeneralConditioner

    return types.SimpleNamespace(Denoiser=Denoiser, Decoder=Decoder, EulerEDMSampler=EulerEDMSampler,
                                 VideoUNet=VideoUNet, OpenAIWrapper=OpenAIWrapper,
                                 GeneralConditioner=GeneralConditioner)


def randomize(module: torch.nn.Module, seed: int, scale: float = 0.2) -> None:
    """Seeded random weights everywhere (sgm zero-initialises output layers, which would hide errors);
    matrices get ``scale · N(0, 1) / sqrt(fan_in)``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(scale * noise / max(1.0, p[0].numel() ** 0.5) if p.ndim > 1 else 0.1 * noise)
            p.copy_(p.half().float())  # float16-exact, so the weights file stores them losslessly in half


def script_cameras(elevations_deg: float | list[float], azimuths_deg: list[float] | None,
                   num_frames: int) -> tuple[list[float], list[float]]:
    """``polars_rad`` and ``azimuths_rad`` exactly as ``simple_video_sample.py`` (sv3d_p) computes them."""
    if isinstance(elevations_deg, (float, int)):
        elevations_deg = [elevations_deg] * num_frames
    polars_rad = [np.deg2rad(90 - e) for e in elevations_deg]
    if azimuths_deg is None:
        azimuths_deg = np.linspace(0, 360, num_frames + 1)[1:] % 360
    azimuths_rad = [np.deg2rad((a - azimuths_deg[-1]) % 360) for a in azimuths_deg]
    azimuths_rad[:-1].sort()  # the script's own line: sorts a copy, a no-op
    return polars_rad, azimuths_rad


def conditioner_vector(sgm: types.SimpleNamespace, elevations: float | list[float],
                       azimuths: list[float] | None, num_frames: int) -> torch.Tensor:
    """sgm's GeneralConditioner ``vector`` for one SV3D_p orbit, batch as the script's ``get_batch``."""
    embedder = "sgm.modules.encoders.modules.ConcatTimestepEmbedderND"
    conditioner = sgm.GeneralConditioner([
        {"input_key": key, "is_trainable": False, "target": embedder, "params": {"outdim": dim}}
        for key, dim in (("cond_aug", 256), ("polars_rad", 512), ("azimuths_rad", 512))])
    polars, azims = script_cameras(elevations, azimuths, num_frames)
    batch = {  # get_batch(keys, value_dict, N=[1, T], T)
        "cond_aug": torch.tensor([COND_AUG]).repeat(num_frames),
        "polars_rad": torch.tensor(polars).repeat(1),
        "azimuths_rad": torch.tensor(azims).repeat(1),
    }
    return conditioner(batch)["vector"]


SV3D_DDCONFIG = {  # sv3d_{u,p}.yaml: the VAE of the conditioner's encoder and of the first stage
    "attn_type": "vanilla", "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3,
    "out_ch": 3, "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0,
}
SV3D_UNET = {  # sv3d_{u,p}.yaml network_config (adm_in_channels: 256 for _u, 1280 for _p)
    **UNET, "model_channels": 320, "attention_resolutions": [4, 2, 1], "channel_mult": [1, 2, 4, 4],
    "num_res_blocks": 2, "num_head_channels": 64, "context_dim": 1024,
}


def import_open_clip(root: Path) -> types.ModuleType:
    """OpenCLIP's ``model`` module from the unpacked package at ``root`` (see the module docstring)."""
    misc = types.ModuleType("torchvision.ops.misc")
    misc.FrozenBatchNorm2d = torch.nn.BatchNorm2d
    for name, module in (("torchvision", types.ModuleType("torchvision")),
                         ("torchvision.ops", types.ModuleType("torchvision.ops")), ("torchvision.ops.misc", misc)):
        sys.modules[name] = module
    package = types.ModuleType("open_clip")
    package.__path__ = [str(root)]  # the package's modules, without its __init__ (factory, transforms)
    sys.modules["open_clip"] = package
    import importlib

    return importlib.import_module("open_clip.model")


def released_keys(sgm: types.SimpleNamespace, open_clip_root: Path) -> dict[str, dict[str, list[int]]]:
    """``{"sv3d_u": {name: shape}, "sv3d_p": {...}}`` of the released single files (see the docstring)."""
    import json

    from sgm.models.autoencoder import AutoencoderKLModeOnly

    oc = import_open_clip(open_clip_root)
    cfg = json.loads((open_clip_root / "model_configs" / "ViT-H-14.json").read_text())
    parts: dict[str, torch.nn.Module] = {}
    with torch.device("meta"):
        clip = oc.CLIP(**cfg)
        del clip.transformer  # FrozenOpenCLIPImageEmbedder: ``del model.transformer``
        parts["conditioner.embedders.0.open_clip.model."] = clip
        parts["conditioner.embedders.1.encoder."] = AutoencoderKLModeOnly(
            embed_dim=4, ddconfig=SV3D_DDCONFIG, lossconfig={"target": "torch.nn.Identity"})
        parts["first_stage_model.decoder."] = sgm.Decoder(**SV3D_DDCONFIG)
        out = {}
        for kind, adm in (("sv3d_u", 256), ("sv3d_p", 1280)):
            unet = sgm.VideoUNet(**{**SV3D_UNET, "adm_in_channels": adm})
            keys = {f"model.diffusion_model.{k}": list(v.shape) for k, v in unet.state_dict().items()}
            for prefix, module in parts.items():
                keys.update({prefix + k: list(v.shape) for k, v in module.state_dict().items()})
            out[kind] = keys
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sgm", type=Path, required=True, help="checkout of Stability-AI/generative-models")
    parser.add_argument("--out", type=Path, default=Path("tests/data/sv3d"))
    parser.add_argument("--open-clip", type=Path, default=None,
                        help="unpacked open_clip package (2.20): also write released_keys.json.gz")
    args = parser.parse_args()
    sgm = import_sgm(args.sgm)
    if args.open_clip is not None:
        import gzip
        import json

        args.out.mkdir(parents=True, exist_ok=True)
        keys = released_keys(sgm, args.open_clip)
        with gzip.open(args.out / "released_keys.json.gz", "wt") as f:
            json.dump(keys, f, sort_keys=True)
        print({kind: len(k) for kind, k in keys.items()})
    torch.manual_seed(SEED)

    unet = sgm.VideoUNet(**UNET).eval()
    decoder = sgm.Decoder(**DECODER).eval()
    randomize(unet, SEED)
    randomize(decoder, SEED + 1)

    out: dict[str, torch.Tensor] = {}
    # (b) conditioning vectors: the default orbit at 21 frames and a custom one at T frames
    out["vector_orbit21"] = conditioner_vector(sgm, DEFAULT_ELEVATION, None, 21)
    out["vector_custom"] = conditioner_vector(sgm, CUSTOM_ELEVATIONS, CUSTOM_AZIMUTHS, T)
    out["custom_elevations"] = torch.tensor(CUSTOM_ELEVATIONS, dtype=torch.float64)
    out["custom_azimuths"] = torch.tensor(CUSTOM_AZIMUTHS, dtype=torch.float64)

    g = torch.Generator().manual_seed(SEED + 2)
    crossattn = torch.randn(1, 1, CONTEXT, generator=g)  # stands in for the CLIP token
    concat = torch.randn(1, 4, LATENT, LATENT, generator=g)  # the unscaled latent of the input view
    image = torch.rand(1, 3, LATENT, LATENT, generator=g) * 2 - 1
    vector = out["vector_custom"]
    # the script repeats crossattn / concat over frames, "b ... -> (b t) ..."
    c = {"crossattn": crossattn.repeat(T, 1, 1), "concat": concat.repeat(T, 1, 1, 1), "vector": vector}
    uc = {"crossattn": torch.zeros_like(c["crossattn"]), "concat": torch.zeros_like(c["concat"]),
          "vector": vector.clone()}
    out.update(crossattn=crossattn, concat=concat, image=image)

    with torch.no_grad():
        # (a) one network forward on the script's (b t) layout
        x = torch.randn(T, 4, LATENT, LATENT, generator=g)
        c_noise = torch.tensor([0.25 * np.log(3.0)] * T, dtype=torch.float32)
        net_in = torch.cat([x, c["concat"]], dim=1)
        out["forward_x"], out["forward_c_noise"] = x, c_noise
        out["forward_out"] = unet(net_in, c_noise, context=c["crossattn"], y=vector, num_video_frames=T,
                                  image_only_indicator=torch.zeros(1, T))

        # (c) the sampling loop of simple_video_sample.py on fixed noise, then the first-stage decode
        sampler = sgm.EulerEDMSampler(
            num_steps=STEPS, verbose=False, device="cpu",
            discretization_config={"target": "sgm.modules.diffusionmodules.discretizer.EDMDiscretization",
                                   "params": {"sigma_max": 700.0}},
            guider_config={"target": "sgm.modules.diffusionmodules.guiders.TrianglePredictionGuider",
                           "params": {"max_scale": MAX_SCALE, "num_frames": T}})
        denoiser_module = sgm.Denoiser(
            {"target": "sgm.modules.diffusionmodules.denoiser_scaling.VScalingWithEDMcNoise"})
        model = sgm.OpenAIWrapper(unet)
        extra = {"image_only_indicator": torch.zeros(2, T), "num_video_frames": T}

        def denoiser(inp: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
            return denoiser_module(model, inp, sigma, cond, **extra)

        noise = torch.randn(T, 4, LATENT, LATENT, generator=g)
        samples_z = sampler(denoiser, noise.clone(), cond=c, uc=uc)
        samples_x = decoder(samples_z / SCALE_FACTOR)  # decode_first_stage (AutoencodingEngine: no post_quant)
        samples_x[-1:] = image  # the script: the last frame is the input view
        out["noise"], out["samples_z"] = noise, samples_z
        out["samples"] = torch.clamp((samples_x + 1.0) / 2.0, min=0.0, max=1.0)

    weights = {f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()}
    weights.update({f"first_stage_model.decoder.{k}": v for k, v in decoder.state_dict().items()})
    args.out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.half().contiguous() for k, v in weights.items()}, str(args.out / "tiny_sv3d_p.safetensors"))
    save_file({k: v.contiguous() for k, v in out.items()}, str(args.out / "golden.safetensors"))
    sizes = {p.name: p.stat().st_size for p in args.out.glob("*.safetensors")}
    print(f"wrote {sizes}; forward |out| mean {out['forward_out'].abs().mean():.4g}, "
          f"samples_z |z| mean {samples_z.abs().mean():.4g}")


if __name__ == "__main__":
    main()
