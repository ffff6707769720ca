"""Strict key maps of the SV4D / SV4D 2.0 single files (Stability's sgm layout) to vidiff's modules.

A released ``sv4d.safetensors`` / ``sv4d2.safetensors`` / ``sv4d2_8views.safetensors`` holds:

- ``model.diffusion_model.*``: ``SpatialUNetModelWithTime`` -> :class:`vidiff.networks.sv4d.SV4DUNet`. The
  layout (``input_blocks`` / ``middle_block`` / ``output_blocks``) is the video UNet's and is renamed by the
  same functions (``keymaps.unet_sgm_to_diffusers_key``); inside a resnet the temporal branch is called
  ``time_mix_blocks`` (SVD: ``time_stack``), and inside a transformer :data:`_ATTN` renames the view and
  motion parts;
- ``conditioner.embedders.0.open_clip.model.*``: OpenCLIP ViT-H/14 (``visual.*`` used; text leftovers ignored);
- ``conditioner.embedders.{1,4,5}.encoder.*``: three ``AutoencoderKLModeOnly`` copies of SD's VAE, encoding
  the input frames (1, ``concat``), the reference views (4, ``cond_view``) and ``cond_motion`` (5, which the
  network never reads). The encoder and ``quant_conv`` are read from embedder 1; the other copies must have
  the same tensors (a difference is reported, copy 1 is used); the decoder halves are never run;
- ``first_stage_model.decoder.*``: the per-frame SD decoder (the first stage's encoder is Identity).

Any other tensor, and any tensor missing from one of these parts, is a :class:`CheckpointError` naming it.
SV4D: Xie et al. 2024; SV4D 2.0: Yao et al. 2025.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from vidiff.io.clip_keymap import clip_from_open_clip
from vidiff.io.keymaps import (
    _RES,
    _inv,
    _swap_prefix,
    _unet_layers_from_sgm,
    _unet_layout_from_diffusers,
    unet_diffusers_to_sgm_key,
    unet_sgm_to_diffusers_key,
    vae_from_sgm,
)
from vidiff.io.weights import CheckpointError, format_names

__all__ = ["SV4DTensors", "split_sv4d_single_file", "sv4d_unet_from_sgm", "sv4d_unet_to_sgm"]

UNET = "model.diffusion_model."
CLIP = "conditioner.embedders.0.open_clip.model."
CLIP_TEXT = ("transformer.", "token_embedding.", "ln_final.", "text_projection", "positional_embedding",
             "logit_scale", "attn_mask")
ENCODERS = {1: "cond_frames", 4: "cond_view", 5: "cond_motion"}  # conditioner embedder -> its input key
DECODER = "first_stage_model.decoder."

# vidiff -> sgm, inside one SV4D transformer (``PostHocSpatialTransformerWithTimeMixingAndMotion``).
_ATTN = {
    "view_blocks.": "time_mix_blocks.",
    "view_pos_embed.linear_1.": "time_mix_time_embed.0.",
    "view_pos_embed.linear_2.": "time_mix_time_embed.2.",
    "motion_pos_embed.linear_1.": "time_mix_motion_embed.0.",
    "motion_pos_embed.linear_2.": "time_mix_motion_embed.2.",
    "view_mixer.": "time_mixer.",
    "motion_mixer.": "time_mixer_motion.",
}
_ATTN_SAME = ("norm.", "proj_in.", "proj_out.", "transformer_blocks.", "motion_blocks.")
_TEMPORAL = ("temporal_res_block.", "time_mix_blocks.")  # (vidiff, sgm) prefix of a resnet's temporal branch


def _res_from_sgm(rest: str) -> str:
    if rest.startswith(_TEMPORAL[1]):
        return _TEMPORAL[0] + _swap_prefix(rest[len(_TEMPORAL[1]):], _inv(_RES), "SV4D resnet")
    if rest == "time_mixer.mix_factor":
        return rest
    return "spatial_res_block." + _swap_prefix(rest, _inv(_RES), "SV4D resnet")


def _res_to_sgm(rest: str) -> str:
    if rest.startswith(_TEMPORAL[0]):
        return _TEMPORAL[1] + _swap_prefix(rest[len(_TEMPORAL[0]):], _RES, "SV4D resnet")
    if rest == "time_mixer.mix_factor":
        return rest
    if rest.startswith("spatial_res_block."):
        return _swap_prefix(rest[len("spatial_res_block."):], _RES, "SV4D resnet")
    raise CheckpointError(f"unknown SV4D resnet key {rest!r}")


def _attn_from_sgm(rest: str) -> str:
    return rest if rest.startswith(_ATTN_SAME) else _swap_prefix(rest, _inv(_ATTN), "SV4D transformer")


def _attn_to_sgm(rest: str) -> str:
    return rest if rest.startswith(_ATTN_SAME) else _swap_prefix(rest, _ATTN, "SV4D transformer")


def sv4d_unet_from_sgm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an sgm ``SpatialUNetModelWithTime`` state dict (without ``model.diffusion_model.``) to
    :class:`SV4DUNet` names; an unknown key is a :class:`CheckpointError` naming it."""
    layers = _unet_layers_from_sgm(state_dict)
    out: dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        try:
            name = unet_sgm_to_diffusers_key(k, layers, res_tail=_res_from_sgm, attn_tail=_attn_from_sgm)
        except CheckpointError as e:
            raise CheckpointError(f"sv4d unet: unknown sgm key {k!r} ({e})") from None
        if name in out:
            raise CheckpointError(f"sv4d unet: two sgm keys map to {name!r}")
        out[name] = v
    return out


def sv4d_unet_to_sgm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an :class:`SV4DUNet` state dict to sgm names (without ``model.diffusion_model.``)."""
    layers, up_attn = _unet_layout_from_diffusers(state_dict)
    return {unet_diffusers_to_sgm_key(k, layers, up_attn, res_tail=_res_to_sgm, attn_tail=_attn_to_sgm): v
            for k, v in state_dict.items()}


@dataclass
class SV4DTensors:
    """A released SV4D file split by component, under vidiff's / diffusers' / transformers' names."""

    unet: dict[str, torch.Tensor]  # SV4DUNet names
    vae: dict[str, torch.Tensor]  # diffusers AutoencoderKL names (encoder + quant_conv, decoder)
    image_encoder: dict[str, torch.Tensor]  # transformers CLIPVisionModelWithProjection names
    ignored: list[str] = field(default_factory=list)  # tensors read and deliberately left unused
    notes: list[str] = field(default_factory=list)


def split_sv4d_single_file(tensors: Mapping[str, torch.Tensor]) -> SV4DTensors:
    """Split and rename the tensors of a released SV4D / SV4D 2.0 single file (see the module docstring).

    Every tensor is used or deliberately ignored; an unknown one, or a missing part, is a CheckpointError.
    The encoder copies of embedders 4 and 5 are compared with embedder 1's (not on the meta device).
    """
    unet, clip, decoder, unknown, ignored = {}, {}, {}, [], []
    encoders: dict[int, dict[str, torch.Tensor]] = {i: {} for i in ENCODERS}
    embedder = re.compile(r"^conditioner\.embedders\.(\d+)\.encoder\.(.+)$")
    for k, v in tensors.items():
        if k.startswith(UNET):
            unet[k[len(UNET):]] = v
        elif k.startswith(DECODER):
            decoder["decoder." + k[len(DECODER):]] = v
        elif k.startswith(CLIP + "visual."):
            clip[k[len(CLIP + "visual."):]] = v
        elif k.startswith(CLIP) and k[len(CLIP):].startswith(CLIP_TEXT):
            ignored.append(k)
        elif (m := embedder.match(k)) and int(m.group(1)) in ENCODERS:
            encoders[int(m.group(1))][m.group(2)] = v
        elif k.startswith("denoiser."):
            ignored.append(k)
        else:
            unknown.append(k)
    if unknown:
        raise CheckpointError(f"sv4d: {len(unknown)} unexpected tensors: {format_names(sorted(unknown))}")
    parts = {f"{UNET}*": unet, f"{DECODER}*": decoder, f"{CLIP}visual.*": clip,
             **{f"conditioner.embedders.{i}.encoder.* ({name})": encoders[i] for i, name in ENCODERS.items()}}
    missing = [what for what, part in parts.items() if not part]
    if missing:
        raise CheckpointError(f"sv4d: no {', '.join(missing)} tensors; is this an SV4D single file?")

    notes: list[str] = []
    used = {k: v for k, v in encoders[1].items() if k.startswith(("encoder.", "quant_conv."))}
    for i in (1, 4, 5):
        prefix = f"conditioner.embedders.{i}.encoder."
        if set(encoders[i]) != set(encoders[1]):
            diff = sorted(set(encoders[i]) ^ set(encoders[1]))
            raise CheckpointError(f"sv4d: {prefix}* and conditioner.embedders.1.encoder.* hold different tensors: "
                                  + ", ".join(diff[:5]))
        ignored.extend(prefix + k for k in encoders[i] if i != 1 or k not in used)
        same = all(v.is_meta or torch.equal(v, encoders[1][k]) for k, v in encoders[i].items() if k in used)
        if not same:
            msg = f"sv4d: {prefix}encoder differs from conditioner.embedders.1.encoder; using the latter"
            warnings.warn(msg, stacklevel=2)
            notes.append(msg)
    return SV4DTensors(unet=sv4d_unet_from_sgm(unet), vae=vae_from_sgm({**used, **decoder}),
                       image_encoder=clip_from_open_clip(clip), ignored=sorted(ignored), notes=notes)
