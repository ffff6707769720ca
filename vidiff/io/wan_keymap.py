"""Strict key maps between Wan's original checkpoints (Wan-AI release, ComfyUI single files) and diffusers'
names for the Wan 2.x transformer and the Wan 2.1 VAE, and the transformer config implied by its tensors.

Every source key must be recognised: an unknown key is a :class:`CheckpointError` naming it, never
silently dropped. ComfyUI's ``model.diffusion_model.`` prefix is removed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from vidiff.io.weights import CheckpointError

__all__ = [
    "COMFY_PREFIX",
    "is_original_wan_transformer",
    "transformer_from_original",
    "transformer_to_original",
    "vae_from_original",
    "vae_to_original",
    "wan_transformer_config",
]

COMFY_PREFIX = "model.diffusion_model."

# original -> diffusers, for the parts outside the blocks
_TOP = {
    "patch_embedding": "patch_embedding",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.head": "proj_out",
    "head.modulation": "scale_shift_table",
    "img_emb.proj.0": "condition_embedder.image_embedder.norm1",
    "img_emb.proj.1": "condition_embedder.image_embedder.ff.net.0.proj",
    "img_emb.proj.3": "condition_embedder.image_embedder.ff.net.2",
    "img_emb.proj.4": "condition_embedder.image_embedder.norm2",
    "img_emb.emb_pos": "condition_embedder.image_embedder.pos_embed",
}
# inside blocks.N.
_BLOCK = {
    "modulation": "scale_shift_table",
    "norm3": "norm2",  # the affine cross-attention norm: Wan's norm3 is diffusers' norm2
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
}
_ATTN = {"self_attn": "attn1", "cross_attn": "attn2"}
_PROJ = {"q": "to_q", "k": "to_k", "v": "to_v", "o": "to_out.0", "norm_q": "norm_q", "norm_k": "norm_k",
         "k_img": "add_k_proj", "v_img": "add_v_proj", "norm_k_img": "norm_added_k"}


def _inverse(table: Mapping[str, str]) -> dict[str, str]:
    return {v: k for k, v in table.items()}


def _rename(key: str, table: Mapping[str, str]) -> str | None:
    """``table`` applied to the longest matching dotted prefix of ``key`` (None when none matches)."""
    for src in sorted(table, key=len, reverse=True):
        if key == src or key.startswith(src + "."):
            return table[src] + key[len(src):]
    return None


def _map_transformer_key(key: str, top: Mapping[str, str], block: Mapping[str, str], attn: Mapping[str, str],
                         proj: Mapping[str, str]) -> str | None:
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
    if m is None:
        return _rename(key, top)
    n, rest = m.groups()
    if (new := _rename(rest, block)) is not None:
        return f"blocks.{n}.{new}"
    a = re.fullmatch(r"([a-z_0-9]+)\.([a-z_]+(?:\.0)?)\.(weight|bias)", rest)
    if a is None or a.group(1) not in attn or a.group(2) not in proj:
        return None
    return f"blocks.{n}.{attn[a.group(1)]}.{proj[a.group(2)]}.{a.group(3)}"


def is_original_wan_transformer(state_dict: Mapping[str, Any]) -> bool:
    """Whether the keys are Wan's own (``blocks.0.self_attn.q.weight``, optionally ComfyUI-prefixed)."""
    return any(k.removeprefix(COMFY_PREFIX).startswith(("blocks.0.self_attn.", "text_embedding.")) for k in state_dict)


def transformer_from_original(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Wan/ComfyUI transformer keys -> diffusers' ``WanTransformer3DModel`` keys (strict)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new = _map_transformer_key(key.removeprefix(COMFY_PREFIX), _TOP, _BLOCK, _ATTN, _PROJ)
        if new is None:
            raise CheckpointError(f"unknown key in a Wan transformer checkpoint: {key!r}")
        out[new] = value
    return out


def transformer_to_original(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' transformer keys -> Wan's original keys (strict)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new = _map_transformer_key(key, _inverse(_TOP), _inverse(_BLOCK), _inverse(_ATTN), _inverse(_PROJ))
        if new is None:
            raise CheckpointError(f"unknown key in a diffusers Wan transformer: {key!r}")
        out[new] = value
    return out


def wan_transformer_config(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The ``WanTransformer3DModel`` config implied by a (diffusers-keyed) state dict's shapes.

    Head width 128 is assumed (every released Wan model); the rest is read off the tensors.
    """
    try:
        patch = state_dict["patch_embedding.weight"]  # (dim, C_in, pt, ph, pw)
        proj_out = state_dict["proj_out.weight"]
        dim = int(patch.shape[0])
        layers = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("blocks."))
        cfg: dict[str, Any] = {
            "patch_size": [int(s) for s in patch.shape[2:]],
            "num_attention_heads": dim // 128,
            "attention_head_dim": 128,
            "in_channels": int(patch.shape[1]),
            "out_channels": int(proj_out.shape[0]) // int(torch.tensor(patch.shape[2:]).prod()),
            "text_dim": int(state_dict["condition_embedder.text_embedder.linear_1.weight"].shape[1]),
            "freq_dim": int(state_dict["condition_embedder.time_embedder.linear_1.weight"].shape[1]),
            "ffn_dim": int(state_dict["blocks.0.ffn.net.0.proj.weight"].shape[0]),
            "num_layers": layers,
            "cross_attn_norm": "blocks.0.norm2.weight" in state_dict,
        }
    except KeyError as e:
        raise CheckpointError(f"not a Wan transformer state dict: it lacks {e.args[0]!r}") from None
    if dim % 128:
        raise CheckpointError(f"Wan transformer width {dim} is not a multiple of the 128-wide heads")
    img = state_dict.get("condition_embedder.image_embedder.norm1.weight")
    if img is not None:
        cfg["image_dim"] = int(img.shape[0])
        cfg["added_kv_proj_dim"] = dim
        pos = state_dict.get("condition_embedder.image_embedder.pos_embed")
        if pos is not None:
            cfg["pos_embed_seq_len"] = int(pos.shape[1])
    return cfg


# --- VAE (Wan 2.1) -------------------------------------------------------------------------------------------

_RES = {"residual.0": "norm1", "residual.2": "conv1", "residual.3": "norm2", "residual.6": "conv2",
        "shortcut": "conv_shortcut"}
_VAE_TOP = {"conv1": "quant_conv", "conv2": "post_quant_conv", "encoder.conv1": "encoder.conv_in",
            "decoder.conv1": "decoder.conv_in", "encoder.head.0": "encoder.norm_out",
            "encoder.head.2": "encoder.conv_out", "decoder.head.0": "decoder.norm_out",
            "decoder.head.2": "decoder.conv_out"}
_MIDDLE = {"middle.0": "mid_block.resnets.0", "middle.1": "mid_block.attentions.0", "middle.2": "mid_block.resnets.1"}


def _vae_rename(key: str, decoder_levels: list[int]) -> str | None:
    """One original Wan 2.1 VAE key -> diffusers (``decoder_levels``: decoder entries per level)."""
    if (new := _rename(key, _VAE_TOP)) is not None:
        return new
    m = re.fullmatch(r"(encoder|decoder)\.(middle\.\d)\.(.+)", key)
    if m:
        part, mid, rest = m.groups()
        base = _MIDDLE.get(mid)
        rest = _rename(rest, _RES) or rest
        return None if base is None else f"{part}.{base}.{rest}"
    m = re.fullmatch(r"encoder\.downsamples\.(\d+)\.(.+)", key)
    if m:
        return f"encoder.down_blocks.{m.group(1)}.{_rename(m.group(2), _RES) or m.group(2)}"
    m = re.fullmatch(r"decoder\.upsamples\.(\d+)\.(.+)", key)
    if m:
        idx, rest = int(m.group(1)), m.group(2)
        for level, count in enumerate(decoder_levels):
            if idx < count:
                if rest.startswith(("resample.", "time_conv.")):
                    return f"decoder.up_blocks.{level}.upsamplers.0.{rest}"
                return f"decoder.up_blocks.{level}.resnets.{idx}.{_rename(rest, _RES) or rest}"
            idx -= count
    return None


def _decoder_levels(num_levels: int, num_res_blocks: int) -> list[int]:
    """Entries of each decoder level in Wan's flat ``upsamples`` list: resnets, then an upsampler if any."""
    return [num_res_blocks + 1 + (1 if level < num_levels - 1 else 0) for level in range(num_levels)]


def vae_from_original(state_dict: Mapping[str, torch.Tensor], *, num_levels: int = 4,
                      num_res_blocks: int = 2) -> dict[str, torch.Tensor]:
    """Wan 2.1's original VAE keys (``Wan2.1_VAE.pth`` converted to safetensors) -> diffusers' (strict)."""
    levels = _decoder_levels(num_levels, num_res_blocks)
    out = {}
    for key, value in state_dict.items():
        new = _vae_rename(key, levels)
        if new is None:
            raise CheckpointError(f"unknown key in a Wan VAE checkpoint: {key!r}")
        out[new] = value
    return out


def vae_to_original(state_dict: Mapping[str, torch.Tensor], *, num_levels: int = 4,
                    num_res_blocks: int = 2) -> dict[str, torch.Tensor]:
    """diffusers' Wan 2.1 VAE keys -> the original's (the inverse of :func:`vae_from_original`)."""
    levels = _decoder_levels(num_levels, num_res_blocks)
    inverse: dict[str, str] = {}
    for key in state_dict:
        inverse[key] = _original_vae_key(key, levels)
    return {inverse[k]: v for k, v in state_dict.items()}


def _original_vae_key(key: str, levels: list[int]) -> str:
    if (new := _rename(key, _inverse(_VAE_TOP))) is not None:
        return new
    m = re.fullmatch(r"(encoder|decoder)\.(mid_block\.(?:resnets|attentions)\.\d)\.(.+)", key)
    if m and m.group(2) in _inverse(_MIDDLE):
        return f"{m.group(1)}.{_inverse(_MIDDLE)[m.group(2)]}.{_rename(m.group(3), _inverse(_RES)) or m.group(3)}"
    m = re.fullmatch(r"encoder\.down_blocks\.(\d+)\.(.+)", key)
    if m:
        return f"encoder.downsamples.{m.group(1)}.{_rename(m.group(2), _inverse(_RES)) or m.group(2)}"
    m = re.fullmatch(r"decoder\.up_blocks\.(\d+)\.(resnets\.(\d+)|upsamplers\.0)\.(.+)", key)
    if m:
        level, rest = int(m.group(1)), m.group(4)
        start = sum(levels[:level])
        if m.group(3) is not None:
            return f"decoder.upsamples.{start + int(m.group(3))}.{_rename(rest, _inverse(_RES)) or rest}"
        return f"decoder.upsamples.{start + levels[level] - 1}.{rest}"
    raise CheckpointError(f"unknown key in a diffusers Wan VAE: {key!r}")
