"""Build vidiff modules from a checkpoint read by ``vidiff.io`` (any layout), strictly.

``vidiff.io`` returns every component in diffusers vocabulary (config dict + state dict); this module
turns those into vidiff's own networks and loads the tensors with a strict check that lists missing,
unexpected and mis-shaped tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vidiff.autoencoders import (
    AutoencoderKL,
    AutoencoderKLTemporal,
    FlowWarpAutoencoder,
    FlowWarpConfig,
    ImageVAEConfig,
    PatchAutoencoder,
    PatchConfig,
    VAEConfig,
)
from vidiff.diffusion import Scaling, VScalingEDMcNoise, scaling_from_config
from vidiff.io import load_safetensors
from vidiff.io.checkpoints import read_checkpoint
from vidiff.io.components import Checkpoint
from vidiff.io.weights import CheckpointError, load_state_dict_strict, read_json
from vidiff.networks import UNetConfig, UNetSpatioTemporal
from vidiff.networks.dit_video import CLASS_NAME as DIT_CLASS_NAME
from vidiff.networks.dit_video import VideoDiT, VideoDiTConfig

# VAE classes by the ``_class_name`` of their config (diffusers' name for SVD's VAE is the default).
AUTOENCODERS: dict[str, tuple[Any, type[nn.Module]]] = {
    "AutoencoderKLTemporalDecoder": (VAEConfig, AutoencoderKLTemporal),
    "PatchAutoencoder": (PatchConfig, PatchAutoencoder),
    "FlowWarpAutoencoder": (FlowWarpConfig, FlowWarpAutoencoder),  # flow latents, frames = warped image
    "AutoencoderKL": (ImageVAEConfig, AutoencoderKL),  # SD's per-frame decoder, as SV3D ships
}


@dataclass
class LoadedModel:
    """The modules of an image-to-video model, with the configs they came from.

    ``extra``: ``notes`` of the read, plus the model-level settings a vidiff folder stores in ``vidiff.json``
    (``generation_defaults``: the model's own default settings; ``residual``: the UNet denoises the video
    minus the conditioning image's latents, which the pipeline adds back).
    """

    unet: UNetSpatioTemporal
    vae: AutoencoderKLTemporal | PatchAutoencoder  # or a subclass (FlowWarpAutoencoder)
    image_encoder: nn.Module | None
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    scheduler_config: dict[str, Any]
    model_type: str
    layout: str
    extra: dict[str, Any]


def _build(ckpt: Checkpoint, name: str, config_cls: Any, module_cls: type[nn.Module]) -> Any:
    """Build ``module_cls(config_cls.from_diffusers(config))`` without initialising, then load strictly."""
    comp = ckpt[name]
    try:
        config = config_cls.from_diffusers(comp.config)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{name}: config not understood: {e}") from None
    with torch.device("meta"):  # no random init of weights that are about to be replaced
        module = module_cls(config)
    module = module.to_empty(device="cpu")
    load_state_dict_strict(module, comp.state_dict or {}, name)
    return module


def _build_image_encoder(ckpt: Checkpoint) -> nn.Module:
    """transformers' ``CLIPVisionModelWithProjection`` (imported lazily: only SVD-class models need it)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    comp = ckpt["image_encoder"]
    config = {k: v for k, v in comp.config.items() if not k.startswith("_")}
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(**config))
    state = dict(comp.state_dict or {})
    # transformers may keep derived buffers (position ids) that checkpoints omit or include
    expected = model.state_dict()
    for key in [k for k in expected if k.endswith("position_ids")]:
        state.setdefault(key, expected[key])
    load_state_dict_strict(model, state, "image_encoder")
    return model.eval()


def is_trained_dit(path: str | Path) -> bool:
    """Whether ``path`` is a DiT image-to-video model ``vidiff train`` exported (``model.backbone: dit``):
    a folder whose ``transformer/config.json`` names :data:`~vidiff.networks.dit_video.CLASS_NAME`."""
    config = Path(path) / "transformer" / "config.json"
    if not config.is_file():
        return False
    try:
        return read_json(config).get("_class_name") == DIT_CLASS_NAME
    except (ValueError, OSError):
        return False


def load_trained_dit(path: str | Path, *, num_frames: int | None = None) -> LoadedModel:
    """Read an exported DiT (``transformer/``, the parameter-free ``vae/config.json``, ``scheduler/``) as a
    :class:`LoadedModel` the image-to-video pipeline runs, strictly (names and shapes)."""
    path = Path(path)
    config = VideoDiTConfig.from_dict(read_json(path / "transformer" / "config.json"))
    if num_frames is not None:
        config = config.replace(num_frames=num_frames)
    net = VideoDiT(config)
    load_state_dict_strict(net, load_safetensors(path / "transformer" / "model.safetensors"), "transformer")
    vae_cfg = read_json(path / "vae" / "config.json")
    if vae_cfg.get("_class_name") not in AUTOENCODERS:
        raise CheckpointError(f"{path / 'vae' / 'config.json'}: unknown _class_name {vae_cfg.get('_class_name')!r} "
                              f"(known: {', '.join(AUTOENCODERS)})")
    config_cls, vae_cls = AUTOENCODERS[vae_cfg["_class_name"]]
    vae = vae_cls(config_cls.from_diffusers(vae_cfg))
    sched = read_json(path / "scheduler" / "scheduler_config.json")
    extra = {"generation_defaults": sched.pop("generation_defaults"), "residual": sched.pop("residual")}
    return LoadedModel(unet=net.eval(), vae=vae.eval(), image_encoder=None,  # type: ignore[arg-type]
                       image_mean=(0.0, 0.0, 0.0), image_std=(1.0, 1.0, 1.0), scheduler_config=sched,
                       model_type="vidiff-dit", layout="vidiff", extra=extra)


def load_model(path: str | Path, *, num_frames: int | None = None) -> LoadedModel:
    """Read and build every component of the checkpoint at ``path`` (diffusers, single-file or vidiff, or a
    DiT ``vidiff train`` exported)."""
    if is_trained_dit(path):
        return load_trained_dit(path, num_frames=num_frames)
    ckpt = read_checkpoint(path, num_frames=num_frames)
    unet = _build(ckpt, "unet", UNetConfig, UNetSpatioTemporal).eval()
    vae_class = ckpt["vae"].config.get("_class_name", "AutoencoderKLTemporalDecoder")
    if vae_class not in AUTOENCODERS:
        raise CheckpointError(f"vae: unknown _class_name {vae_class!r} (known: {', '.join(AUTOENCODERS)})")
    vae = _build(ckpt, "vae", *AUTOENCODERS[vae_class]).eval()
    image_encoder = _build_image_encoder(ckpt) if "image_encoder" in ckpt.components else None
    fe = ckpt.components.get("feature_extractor")
    fe_config = fe.config if fe is not None else {}
    mean = tuple(fe_config.get("image_mean", (0.48145466, 0.4578275, 0.40821073)))
    std = tuple(fe_config.get("image_std", (0.26862954, 0.26130258, 0.27577711)))
    sched = ckpt.components.get("scheduler")
    return LoadedModel(
        unet=unet, vae=vae, image_encoder=image_encoder, image_mean=mean, image_std=std,  # type: ignore[arg-type]
        scheduler_config=dict(sched.config) if sched is not None else {}, model_type=ckpt.model_type,
        layout=ckpt.layout, extra={**ckpt.extra, "notes": list(ckpt.notes)},
    )


def scaling_for_scheduler(scheduler: dict[str, Any]) -> Scaling:
    """The parametrisation the UNet was trained with: vidiff's ``scaling`` key when the scheduler config has
    one (models vidiff trained), else SVD's v-prediction with EDM c_noise (every SVD-class checkpoint)."""
    if "scaling" in scheduler:
        return scaling_from_config(scheduler)  # a discrete-time one (DDPM-trained) carries its betas
    kind = scheduler.get("prediction_type", "v_prediction")
    if kind != "v_prediction":
        raise ValueError(f"scheduler prediction_type {kind!r} is not supported for SVD-class models "
                         "(they are v-prediction); add a vidiff 'scaling' key to the scheduler config")
    return VScalingEDMcNoise()
