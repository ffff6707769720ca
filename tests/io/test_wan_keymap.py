"""Wan's original key names <-> diffusers', checked against diffusers' own converters (the oracle)."""

from __future__ import annotations

import diffusers
import pytest
import torch
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers, convert_wan_vae_to_diffusers

from vidiff.io.wan_keymap import (
    COMFY_PREFIX,
    is_original_wan_transformer,
    transformer_from_original,
    transformer_to_original,
    vae_from_original,
    vae_to_original,
    wan_transformer_config,
)
from vidiff.io.weights import CheckpointError
from vidiff.networks.dit_wan import WAN_PRESETS


def _diffusers_transformer(**changes) -> dict[str, torch.Tensor]:
    cfg = WAN_PRESETS["tiny-i2v"].replace(**changes)
    return diffusers.WanTransformer3DModel(**cfg.to_dict()).state_dict()


def test_transformer_keys_round_trip_through_diffusers_converter() -> None:
    sd = _diffusers_transformer()
    original = transformer_to_original(sd)
    assert "blocks.1.cross_attn.k_img.weight" in original and "blocks.0.norm3.weight" in original
    assert is_original_wan_transformer(original) and not is_original_wan_transformer(sd)
    back = convert_wan_transformer_to_diffusers(dict(original))
    assert set(back) == set(sd) and all(back[k] is sd[k] for k in sd)
    comfy = {COMFY_PREFIX + k: v for k, v in original.items()}
    assert transformer_from_original(comfy).keys() == sd.keys()
    # FLF2V's position table (Wan's MLPProj.emb_pos; diffusers' converter leaves it unmapped)
    flf = _diffusers_transformer(pos_embed_seq_len=10)
    assert transformer_to_original(flf)["img_emb.emb_pos"] is flf["condition_embedder.image_embedder.pos_embed"]


def test_config_is_read_off_the_tensors() -> None:
    cfg = WAN_PRESETS["tiny-i2v"].replace(num_attention_heads=1, attention_head_dim=128, added_kv_proj_dim=128)
    sd = diffusers.WanTransformer3DModel(**cfg.to_dict()).state_dict()
    assert wan_transformer_config(sd) == {k: v for k, v in cfg.to_dict().items()
                                          if k not in ("qk_norm", "eps", "rope_max_seq_len", "pos_embed_seq_len")}


def test_unknown_keys_are_errors() -> None:
    original = transformer_to_original(_diffusers_transformer())
    with pytest.raises(CheckpointError, match=r"blocks\.0\.self_attn\.extra\.weight"):
        transformer_from_original({**original, "blocks.0.self_attn.extra.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"lacks 'patch_embedding\.weight'"):
        wan_transformer_config({})


def test_vae_keys_match_diffusers_converter() -> None:
    """diffusers' converter is written for the released 4-level, 2-resnet layout: use that layout, tiny widths."""
    vae = diffusers.AutoencoderKLWan(base_dim=2, z_dim=2, latents_mean=[0.0] * 2,
                                     latents_std=[1.0] * 2)
    sd = vae.state_dict()
    original = vae_to_original(sd)
    assert "decoder.upsamples.7.time_conv.weight" in original and "encoder.middle.1.to_qkv.weight" in original
    back = convert_wan_vae_to_diffusers(dict(original))
    assert set(back) == set(sd)
    assert vae_from_original(original).keys() == sd.keys()
    with pytest.raises(CheckpointError, match=r"decoder\.upsamples\.15"):
        vae_from_original({**original, "decoder.upsamples.15.residual.0.gamma": torch.ones(1)})
