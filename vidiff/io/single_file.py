"""The original (sgm) single-file safetensors layout of SVD / SVD-XT / SV3D.

Prefixes (generative-models' ``DiffusionEngine``):

- ``model.diffusion_model.*``: the ``VideoUNet``;
- ``first_stage_model.decoder.*``: the VAE decoder (SVD's temporal ``VideoDecoder``, SV3D's plain one);
- ``first_stage_model.encoder.*``: the SD encoder (SVD only; SV3D's first-stage encoder is Identity);
- ``conditioner.embedders.0.open_clip.model.visual.*``: the OpenCLIP ViT-H/14 image tower;
- ``conditioner.embedders.N.encoder.{encoder,quant_conv}.*``: the conditioning-frame VAE encoder (N = 3
  for SVD, 1 for SV3D); it is an ``AutoencoderKLModeOnly`` and so may also hold an unused ``decoder`` and
  ``post_quant_conv``.

Reading: the VAE encoder and ``quant_conv`` come from the embedder copy (the only one with
``quant_conv``); a ``first_stage_model.encoder`` copy is compared with it and otherwise ignored.
Writing: the encoder goes to both places (as sgm expects), ``quant_conv`` to the embedder.
Configs: vidiff stores every component's config as JSON in the safetensors metadata
(``vidiff_configs``); files without it get configs inferred from tensor shapes (see the infer_* docs).
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from vidiff.io.clip_keymap import clip_config_from_state_dict, clip_from_open_clip, clip_to_open_clip
from vidiff.io.components import (
    RESNET_EPS_POLICY,
    Checkpoint,
    Component,
    copy_config,
    default_feature_extractor_config,
    default_scheduler_config,
    guess_model_type,
)
from vidiff.io.keymaps import unet_from_sgm, unet_to_sgm, vae_from_sgm, vae_to_sgm
from vidiff.io.weights import (
    CheckpointError,
    atomic_output,
    format_names,
    load_safetensors,
    read_safetensors_metadata,
    save_safetensors_atomic,
)

__all__ = ["infer_unet_config", "infer_vae_config", "read_single_file", "write_single_file"]

UNET = "model.diffusion_model."
FIRST_STAGE = "first_stage_model."
CLIP = "conditioner.embedders.0.open_clip.model."
CLIP_VISUAL = CLIP + "visual."
# What is left of the OpenCLIP text tower after sgm deletes ``model.transformer`` (and the tower itself,
# should a file keep it): accounted for, never used by an image-to-video model.
CLIP_TEXT = ("transformer.", "token_embedding.", "ln_final.", "text_projection", "positional_embedding",
             "logit_scale", "attn_mask")
_EMBEDDER_AE = re.compile(r"^conditioner\.embedders\.(\d+)\.encoder\.")
METADATA_KEY = "vidiff_configs"
DIFFUSERS_VERSION = "0.24.0"  # the version the published SVD folders were written with


def _count(keys: Any, pattern: str) -> int:
    found = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def infer_unet_config(sd: dict[str, torch.Tensor], num_frames: int | None = None) -> dict[str, Any]:
    """A diffusers ``UNetSpatioTemporalConditionModel`` config from tensor shapes (diffusers names).

    Not visible in the shapes: attention heads (sgm uses ``num_head_channels=64``, so channels // 64),
    ``addition_time_embed_dim`` (256 in every released model) and ``num_frames`` (SVD 14 and SVD-XT 25
    share all shapes: default 14, 21 for SV3D; pass ``num_frames`` to override).
    """
    n = _count(sd, r"^down_blocks\.(\d+)\.")
    if n == 0:
        raise CheckpointError("unet: no down_blocks tensors; cannot infer its config")
    try:
        ch = [int(sd[f"down_blocks.{i}.resnets.0.spatial_res_block.conv1.weight"].shape[0]) for i in range(n)]
        adm = int(sd["add_embedding.linear_1.weight"].shape[1])
        ctx = int(sd["mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"].shape[1])
        cin, cout = int(sd["conv_in.weight"].shape[1]), int(sd["conv_out.weight"].shape[0])
    except KeyError as e:
        raise CheckpointError(f"unet: cannot infer its config: tensor {e.args[0]} is missing") from None
    down_attn = [any(k.startswith(f"down_blocks.{i}.attentions.") for k in sd) for i in range(n)]
    up_attn = [any(k.startswith(f"up_blocks.{i}.attentions.") for k in sd) for i in range(n)]
    depth = _count(sd, r"^mid_block\.attentions\.0\.transformer_blocks\.(\d+)\.")
    if num_frames is None:
        num_frames = 21 if adm in (256, 1280) else 14
    return {
        "_class_name": "UNetSpatioTemporalConditionModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "addition_time_embed_dim": 256,
        "block_out_channels": ch,
        "cross_attention_dim": ctx,
        "down_block_types": [
            "CrossAttnDownBlockSpatioTemporal" if a else "DownBlockSpatioTemporal" for a in down_attn
        ],
        "in_channels": cin,
        "layers_per_block": _count(sd, r"^down_blocks\.0\.resnets\.(\d+)\."),
        "num_attention_heads": [max(1, c // 64) for c in ch],
        "num_frames": int(num_frames),
        "out_channels": cout,
        "projection_class_embeddings_input_dim": adm,
        "transformer_layers_per_block": max(1, depth),
        "up_block_types": [
            "CrossAttnUpBlockSpatioTemporal" if a else "UpBlockSpatioTemporal" for a in up_attn
        ],
        RESNET_EPS_POLICY: "sgm",
    }


def infer_vae_config(sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    """A diffusers VAE config from shapes: ``AutoencoderKLTemporalDecoder`` for SVD's temporal decoder,
    ``AutoencoderKL`` without ``post_quant_conv`` for SV3D's per-frame decoder.

    ``scaling_factor`` 0.18215 is sgm's ``scale_factor``; ``sample_size`` 768 is the published value.
    """
    n = _count(sd, r"^encoder\.down_blocks\.(\d+)\.")
    if n == 0:
        raise CheckpointError("vae: no encoder.down_blocks tensors; cannot infer its config")
    try:
        ch = [int(sd[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"].shape[0]) for i in range(n)]
        cin, zc = int(sd["encoder.conv_in.weight"].shape[1]), int(sd["decoder.conv_in.weight"].shape[1])
        cout = int(sd["decoder.conv_out.weight"].shape[0])
    except KeyError as e:
        raise CheckpointError(f"vae: cannot infer its config: tensor {e.args[0]} is missing") from None
    config: dict[str, Any] = {
        "_diffusers_version": DIFFUSERS_VERSION,
        "block_out_channels": ch,
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "force_upcast": True,
        "in_channels": cin,
        "latent_channels": zc,
        "layers_per_block": _count(sd, r"^encoder\.down_blocks\.0\.resnets\.(\d+)\."),
        "out_channels": cout,
        "sample_size": 768,
        "scaling_factor": 0.18215,
    }
    if "decoder.time_conv_out.weight" in sd:
        return {"_class_name": "AutoencoderKLTemporalDecoder", **config}
    return {
        "_class_name": "AutoencoderKL",
        **config,
        "act_fn": "silu",
        "norm_num_groups": 32,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "use_quant_conv": True,
        "use_post_quant_conv": False,
    }


def _strip(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def read_single_file(path: str | Path, *, num_frames: int | None = None, device: str = "cpu") -> Checkpoint:
    """Read an original sgm single-file checkpoint into diffusers vocabulary."""
    path = Path(path)
    tensors = load_safetensors(path, device=device)
    meta = read_safetensors_metadata(path)
    ignored: list[str] = []
    notes: list[str] = []

    ae_index = sorted({int(m.group(1)) for k in tensors if (m := _EMBEDDER_AE.match(k))})
    if len(ae_index) > 1:
        raise CheckpointError(f"{path}: VAE encoders under several embedders {ae_index}; expected one")
    ae = f"conditioner.embedders.{ae_index[0]}.encoder." if ae_index else None

    unet_sgm, vae_sgm, clip_visual, fs_encoder, unknown = {}, {}, {}, {}, []
    for k, v in tensors.items():
        if k.startswith(UNET):
            unet_sgm[k[len(UNET) :]] = v
        elif k.startswith(FIRST_STAGE + "decoder."):
            vae_sgm[k[len(FIRST_STAGE) :]] = v
        elif k.startswith(FIRST_STAGE + "encoder."):
            fs_encoder[k[len(FIRST_STAGE) :]] = v
        elif k.startswith(CLIP_VISUAL):
            clip_visual[k[len(CLIP_VISUAL) :]] = v
        elif k.startswith(CLIP) and k[len(CLIP) :].startswith(CLIP_TEXT):
            ignored.append(k)
        elif ae is not None and k.startswith((ae + "encoder.", ae + "quant_conv.")):
            vae_sgm[k[len(ae) :]] = v
        elif ae is not None and k.startswith((ae + "decoder.", ae + "post_quant_conv.")):
            ignored.append(k)  # AutoencoderKLModeOnly's decoder half: never run
        elif k.startswith("denoiser."):
            ignored.append(k)
        else:
            unknown.append(k)
    if unknown:
        raise CheckpointError(f"{path}: {len(unknown)} unexpected tensors for an SVD-family checkpoint: "
                              f"{format_names(sorted(unknown))}")
    present = {
        f"UNet ({UNET}*)": bool(unet_sgm),
        f"VAE decoder ({FIRST_STAGE}decoder.*)": any(k.startswith("decoder.") for k in vae_sgm),
        f"CLIP image encoder ({CLIP_VISUAL}*)": bool(clip_visual),
    }
    for what, found in present.items():
        if not found:
            raise CheckpointError(f"{path}: no {what} tensors; is this an SVD-family sgm checkpoint?")

    has_embedder_encoder = any(k.startswith("encoder.") for k in vae_sgm)
    if fs_encoder and has_embedder_encoder:
        ignored.extend(FIRST_STAGE + k for k in fs_encoder)
        emb = {k: v for k, v in vae_sgm.items() if k.startswith("encoder.")}
        if set(emb) != set(fs_encoder) or (
            device != "meta" and not all(torch.equal(emb[k], fs_encoder[k]) for k in emb)
        ):
            msg = f"{path}: first_stage_model.encoder differs from {ae}encoder; using the latter"
            warnings.warn(msg, stacklevel=2)
            notes.append(msg)
    elif fs_encoder:
        vae_sgm.update(fs_encoder)
        notes.append("VAE encoder read from first_stage_model.encoder (no conditioner embedder copy)")

    unet = unet_from_sgm(unet_sgm)
    vae = vae_from_sgm(vae_sgm)
    clip = clip_from_open_clip(clip_visual)

    if METADATA_KEY in meta:
        try:
            configs = json.loads(meta[METADATA_KEY])
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path}: metadata {METADATA_KEY!r} is not valid JSON ({e})") from None
        missing = [c for c in ("unet", "vae", "image_encoder") if c not in configs]
        if missing:
            raise CheckpointError(f"{path}: metadata {METADATA_KEY!r} lacks configs for {', '.join(missing)}")
        unet_cfg = configs["unet"]
        unet_cfg.setdefault(RESNET_EPS_POLICY, "sgm")
        if num_frames is not None:
            unet_cfg["num_frames"] = int(num_frames)
        vae_cfg, clip_cfg = configs["vae"], configs["image_encoder"]
        fe_cfg = configs.get("feature_extractor") or default_feature_extractor_config()
        sched_cfg = configs.get("scheduler") or default_scheduler_config()
    else:
        unet_cfg = infer_unet_config(unet, num_frames)
        vae_cfg, clip_cfg = infer_vae_config(vae), clip_config_from_state_dict(clip)
        fe_cfg, sched_cfg = default_feature_extractor_config(), default_scheduler_config()
        notes.append("configs inferred from tensor shapes (no vidiff metadata in the file)")
    return Checkpoint(
        layout="single-file",
        components={
            "unet": Component(unet_cfg, unet),
            "vae": Component(vae_cfg, vae),
            "image_encoder": Component(clip_cfg, clip),
            "feature_extractor": Component(fe_cfg),
            "scheduler": Component(sched_cfg),
        },
        ignored=sorted(ignored),
        notes=notes,
    )


def sgm_tensors(ckpt: Checkpoint) -> dict[str, torch.Tensor]:
    """All tensors of ``ckpt`` under their sgm single-file names (the encoder twice, as sgm stores it)."""
    model_type = guess_model_type(ckpt)
    sv3d = model_type.startswith("sv3d") or ckpt["vae"].config.get("_class_name") == "AutoencoderKL"
    ae = f"conditioner.embedders.{1 if sv3d else 3}.encoder."
    out: dict[str, torch.Tensor] = {}
    out.update({UNET + k: v for k, v in unet_to_sgm(ckpt["unet"].state_dict or {}).items()})
    for k, v in vae_to_sgm(ckpt["vae"].state_dict or {}).items():
        if k.startswith("decoder."):
            out[FIRST_STAGE + k] = v
        elif k.startswith("encoder."):
            out[ae + k] = v
            if not sv3d:  # SV3D's first stage has an Identity encoder
                out[FIRST_STAGE + k] = v.clone()
        else:  # quant_conv
            out[ae + k] = v
    clip = clip_to_open_clip(ckpt["image_encoder"].state_dict or {})
    out.update({CLIP_VISUAL + k: v for k, v in clip.items()})
    return out


def write_single_file(ckpt: Checkpoint, path: str | Path, *, overwrite: bool = False) -> None:
    """Write ``ckpt`` as one sgm-layout safetensors file, its configs in the metadata."""
    tensors = sgm_tensors(ckpt)
    configs = {name: copy_config(c.config) for name, c in ckpt.components.items()}
    metadata = {
        "format": "pt",
        METADATA_KEY: json.dumps(configs, sort_keys=True),
        "vidiff_model_type": guess_model_type(ckpt),
    }
    with atomic_output(path, overwrite=overwrite, directory=False) as tmp:
        save_safetensors_atomic(tensors, tmp, metadata=metadata)
