"""UNetConfig: validation, diffusers config.json translation, presets, and state-dict layout vs diffusers."""

from __future__ import annotations

import json

import pytest
import torch

from vidiff.networks.unet_st import UNET_PRESETS, UNetConfig, UNetSpatioTemporal, count_parameters


@pytest.mark.parametrize("name", sorted(UNET_PRESETS))
def test_diffusers_round_trip(name: str) -> None:
    cfg = UNET_PRESETS[name]
    as_json = json.loads(json.dumps(cfg.to_diffusers()))  # what a config.json file holds
    assert UNetConfig.from_diffusers(as_json) == cfg


def test_presets_values() -> None:
    p = UNET_PRESETS
    assert (p["svd"].num_frames, p["svd_xt"].num_frames, p["sv3d_u"].num_frames) == (14, 25, 21)
    assert p["sv3d_u"].projection_class_embeddings_input_dim == 256
    assert p["sv3d_p"].projection_class_embeddings_input_dim == 1280
    assert p["svd"].replace(num_frames=25) == p["svd_xt"]  # same architecture


def test_from_diffusers_ignores_bookkeeping_and_reads_svd_xt_config() -> None:
    # The SVD-XT unet/config.json as diffusers writes it (values from the reference spec).
    config = {
        "_class_name": "UNetSpatioTemporalConditionModel",
        "_diffusers_version": "0.24.0.dev0",
        "_name_or_path": "somewhere",
        "addition_time_embed_dim": 256,
        "block_out_channels": [320, 640, 1280, 1280],
        "cross_attention_dim": 1024,
        "down_block_types": ["CrossAttnDownBlockSpatioTemporal"] * 3 + ["DownBlockSpatioTemporal"],
        "in_channels": 8,
        "layers_per_block": 2,
        "num_attention_heads": [5, 10, 20, 20],
        "num_frames": 25,
        "out_channels": 4,
        "projection_class_embeddings_input_dim": 768,
        "sample_size": 96,
        "transformer_layers_per_block": 1,
        "up_block_types": ["UpBlockSpatioTemporal"] + ["CrossAttnUpBlockSpatioTemporal"] * 3,
    }
    assert UNetConfig.from_diffusers(config) == UNET_PRESETS["svd_xt"]


def test_from_diffusers_rejects_unknown_key_by_name() -> None:
    config = {**UNET_PRESETS["tiny"].to_diffusers(), "attention_type": "gated"}
    with pytest.raises(ValueError, match="attention_type"):
        UNetConfig.from_diffusers(config)


def test_from_diffusers_rejects_other_block_layouts() -> None:
    config = UNET_PRESETS["tiny"].to_diffusers()
    config["down_block_types"] = ["DownBlockSpatioTemporal"] * 2
    with pytest.raises(ValueError, match="down_block_types"):
        UNetConfig.from_diffusers(config)


def test_vidiff_only_fields_travel_only_when_not_default() -> None:
    assert "resnet_eps_policy" not in UNET_PRESETS["tiny"].to_diffusers()
    assert UNET_PRESETS["tiny_sgm"].to_diffusers()["resnet_eps_policy"] == "sgm"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"in_channels": 0}, "in_channels"),
        ({"block_out_channels": (32, 48)}, "block_out_channels"),  # 48 not a multiple of 32 groups
        ({"num_attention_heads": (2, 4, 4)}, "num_attention_heads"),  # wrong number of levels
        ({"num_attention_heads": (3, 4)}, "num_attention_heads"),  # 3 does not divide 32
        ({"layers_per_block": 0}, "layers_per_block"),
        ({"resnet_eps_policy": "exact"}, "resnet_eps_policy"),
    ],
)
def test_validation_names_the_field(changes: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        UNET_PRESETS["tiny"].replace(**changes)


def test_lists_become_tuples() -> None:
    cfg = UNetConfig(block_out_channels=[32, 64], num_attention_heads=[2, 4])  # type: ignore[arg-type]
    assert cfg.block_out_channels == (32, 64) and hash(cfg)


@pytest.mark.parametrize("name", ["svd", "sv3d_p", "tiny_3level"])
def test_state_dict_identical_to_diffusers(name: str) -> None:
    """Same keys and shapes as diffusers' model, built on the meta device (no memory, no init)."""
    import diffusers
    cfg = UNET_PRESETS[name]
    with torch.device("meta"):
        ref = diffusers.UNetSpatioTemporalConditionModel(**cfg.to_diffusers())
        model = UNetSpatioTemporal(cfg)
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sorted(shapes) == sorted(ref_shapes)
    assert shapes == ref_shapes
    assert count_parameters(model) == sum(p.numel() for p in ref.parameters())
