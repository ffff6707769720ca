"""sgm <-> diffusers key maps (UNet, VAE), OpenCLIP <-> transformers CLIP map, and the shape models.

Oracles: diffusers / transformers modules (built on the meta device when only names and shapes matter),
torch's own ``nn.MultiheadAttention`` for the OpenCLIP forward.
"""

from __future__ import annotations

import diffusers
import pytest
import torch
import torch.nn.functional as F
import transformers

from vidiff.io.clip_keymap import clip_config_from_state_dict, clip_from_open_clip, clip_to_open_clip
from vidiff.io.keymaps import (
    unet_diffusers_to_sgm_key,
    unet_from_sgm,
    unet_sgm_to_diffusers_key,
    unet_to_sgm,
    vae_diffusers_to_sgm_key,
    vae_from_sgm,
    vae_to_sgm,
)
from vidiff.io.shapes import expected_shapes
from vidiff.io.weights import CheckpointError, check_state_dict

TINY_UNET = dict(
    in_channels=8,
    out_channels=4,
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
    up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
    layers_per_block=1,
    num_attention_heads=(2, 4),
    cross_attention_dim=32,
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=24,
)
TINY_VAE = dict(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2, layers_per_block=1)
SVD_VAE = dict(
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4, layers_per_block=2
)


def _meta(cls, **kw):
    with torch.device("meta"):
        m = cls(**kw)
    return m, {"_class_name": cls.__name__, **dict(m.config)}


@pytest.fixture(scope="module")
def unets():
    U = diffusers.UNetSpatioTemporalConditionModel
    return {"tiny": _meta(U, **TINY_UNET), "svd": _meta(U)}


@pytest.fixture(scope="module")
def vaes():
    V = diffusers.AutoencoderKLTemporalDecoder
    return {"tiny": _meta(V, **TINY_VAE), "svd": _meta(V, **SVD_VAE)}


# ------------------------------------------------------------------------------------------------
# shape models == the real modules


@pytest.mark.parametrize("which", ["tiny", "svd"])
def test_unet_and_vae_shapes_match_diffusers(unets, vaes, which: str) -> None:
    for name, (module, config) in (("unet", unets[which]), ("vae", vaes[which])):
        check_state_dict(expected_shapes(name, config), module.state_dict(), name)


def test_sv3d_vae_and_clip_shapes_match_references() -> None:
    module, config = _meta(
        diffusers.AutoencoderKL,
        up_block_types=("UpDecoderBlock2D",) * 2,
        use_post_quant_conv=False,
        **TINY_VAE,
    )
    check_state_dict(expected_shapes("vae", config), module.state_dict(), "vae")
    cfg = transformers.CLIPVisionConfig(
        hidden_size=1280,
        intermediate_size=5120,
        num_hidden_layers=32,
        num_attention_heads=16,
        image_size=224,
        patch_size=14,
        projection_dim=1024,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
    )  # SVD's ViT-H/14
    with torch.device("meta"):
        clip = transformers.CLIPVisionModelWithProjection(cfg)
    check_state_dict(expected_shapes("image_encoder", cfg.to_dict()), clip.state_dict(), "image_encoder")
    # and the config inferred from ViT-H/14 shapes is the ViT-H/14 config
    inferred = clip_config_from_state_dict(clip.state_dict())
    for k in (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "image_size",
        "patch_size",
        "projection_dim",
        "hidden_act",
        "layer_norm_eps",
    ):
        assert inferred[k] == getattr(cfg, k), k


# ------------------------------------------------------------------------------------------------
# UNet map


@pytest.mark.parametrize("which", ["tiny", "svd"])
def test_unet_map_is_a_bijection(unets, which: str) -> None:
    sd = unets[which][0].state_dict()
    sgm = unet_to_sgm(sd)
    assert len(sgm) == len(sd)  # injective: no two diffusers keys share an sgm name
    back = unet_from_sgm(sgm)
    assert list(back) == list(sd)
    assert all(back[k] is sd[k] for k in sd)  # names only; tensors untouched
    assert all(k.count(".") >= 1 for k in sgm)


def test_unet_sgm_names_of_the_published_checkpoint(unets) -> None:
    """Names from svd_spec §3 / generative-models' VideoUNet for the full SVD config."""
    sgm = set(unet_to_sgm(unets["svd"][0].state_dict()))
    for name in [
        "input_blocks.0.0.weight",
        "input_blocks.1.0.time_stack.in_layers.0.weight",
        "input_blocks.1.0.time_stack.emb_layers.1.weight",
        "input_blocks.1.0.in_layers.2.weight",
        "input_blocks.1.0.out_layers.3.weight",
        "input_blocks.1.0.time_mixer.mix_factor",
        "input_blocks.1.1.time_stack.0.ff_in.net.0.proj.weight",
        "input_blocks.1.1.time_pos_embed.0.weight",
        "input_blocks.1.1.time_mixer.mix_factor",
        "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
        "input_blocks.3.0.op.weight",
        "input_blocks.4.0.skip_connection.weight",
        "input_blocks.9.0.op.weight",
        "input_blocks.11.0.in_layers.0.weight",
        "label_emb.0.0.weight",
        "label_emb.0.2.weight",
        "time_embed.0.weight",
        "middle_block.1.proj_in.weight",
        "middle_block.2.time_stack.out_layers.3.weight",
        "output_blocks.2.1.conv.weight",  # up block 0 has no attention: upsampler in slot 1
        "output_blocks.5.2.conv.weight",  # later up blocks: slot 2
        "output_blocks.8.2.conv.weight",
        "output_blocks.11.1.proj_out.weight",
        "out.0.weight",
        "out.2.weight",
    ]:
        assert name in sgm, name
    assert not any(k.startswith("output_blocks.11.2.") for k in sgm)  # last up block: no upsampler
    assert unet_sgm_to_diffusers_key("label_emb.0.0.weight", 2) == "add_embedding.linear_1.weight"
    assert (
        unet_sgm_to_diffusers_key("input_blocks.1.0.time_stack.in_layers.0.weight", 2)
        == "down_blocks.0.resnets.0.temporal_res_block.norm1.weight"
    )
    assert (
        unet_diffusers_to_sgm_key(
            "up_blocks.3.attentions.2.temporal_transformer_blocks.0.attn1.to_q.weight", 2, {1, 2, 3}
        )
        == "output_blocks.11.1.time_stack.0.attn1.to_q.weight"
    )


def test_unet_unknown_sgm_key_is_an_error(unets) -> None:
    sgm = unet_to_sgm(unets["tiny"][0].state_dict())
    sgm["input_blocks.1.0.in_layers.9.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"in_layers\.9\.weight"):
        unet_from_sgm(sgm)


# ------------------------------------------------------------------------------------------------
# VAE map


@pytest.mark.parametrize("which", ["tiny", "svd"])
def test_vae_map_is_a_bijection_with_1x1_attention(vaes, which: str) -> None:
    module = diffusers.AutoencoderKLTemporalDecoder(**TINY_VAE) if which == "tiny" else vaes[which][0]
    sd = module.state_dict()
    sgm = vae_to_sgm(sd)
    assert len(sgm) == len(sd)
    assert sgm["decoder.mid.attn_1.q.weight"].shape[-2:] == (1, 1)
    assert sgm["encoder.mid.attn_1.proj_out.weight"].ndim == 4
    back = vae_from_sgm(sgm)
    assert list(back) == list(sd)
    if which == "tiny":
        assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_vae_sgm_names_of_the_published_checkpoint(vaes) -> None:
    sgm = set(vae_to_sgm(vaes["svd"][0].state_dict()))
    for name in [
        "decoder.conv_out.time_mix_conv.weight",
        "decoder.conv_out.weight",
        "decoder.up.3.block.0.conv1.weight",
        "decoder.up.3.block.0.time_stack.in_layers.2.weight",
        "decoder.up.3.block.2.mix_factor",
        "decoder.up.3.upsample.conv.weight",
        "decoder.up.1.block.0.nin_shortcut.weight",
        "decoder.mid.block_1.time_stack.out_layers.3.weight",
        "decoder.mid.block_2.mix_factor",
        "decoder.mid.attn_1.proj_out.weight",
        "decoder.norm_out.weight",
        "encoder.down.0.block.1.conv2.weight",
        "encoder.down.1.block.0.nin_shortcut.weight",
        "encoder.down.2.downsample.conv.weight",
        "encoder.mid.attn_1.q.weight",
        "encoder.norm_out.bias",
        "quant_conv.weight",
    ]:
        assert name in sgm, name
    assert not any(k.startswith("decoder.up.0.upsample") for k in sgm)  # highest resolution: no upsampler
    assert vae_diffusers_to_sgm_key("decoder.up_blocks.0.resnets.0.spatial_res_block.conv1.weight", 4) == (
        "decoder.up.3.block.0.conv1.weight"
    )
    assert (
        vae_diffusers_to_sgm_key("decoder.time_conv_out.weight", 4) == "decoder.conv_out.time_mix_conv.weight"
    )
    assert vae_diffusers_to_sgm_key("decoder.up_blocks.2.resnets.1.time_mixer.mix_factor", 4) == (
        "decoder.up.1.block.1.mix_factor"
    )


def test_plain_decoder_maps_to_autoencoderkl_names() -> None:
    """SV3D's per-frame decoder (no time_stack) maps onto diffusers' AutoencoderKL decoder."""
    module = diffusers.AutoencoderKL(
        up_block_types=("UpDecoderBlock2D",) * 2, use_post_quant_conv=False, **TINY_VAE
    )
    sd = module.state_dict()
    sgm = vae_to_sgm(sd)
    assert "decoder.mid.block_2.conv1.weight" in sgm and not any("time_stack" in k for k in sgm)
    back = vae_from_sgm(sgm)
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)


# ------------------------------------------------------------------------------------------------
# CLIP map


def _open_clip_state_dict(width: int, layers: int, patch: int, grid: int, proj: int, mlp: int) -> dict:
    """Random tensors in OpenCLIP VisionTransformer layout (built independently of the map)."""
    g = torch.Generator().manual_seed(0)

    def r(*shape, scale=0.2):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    sd = {
        "conv1.weight": r(width, 3, patch, patch, scale=0.05),
        "class_embedding": r(width),
        "positional_embedding": r(grid * grid + 1, width),
        "ln_pre.weight": 1 + r(width),
        "ln_pre.bias": r(width),
        "ln_post.weight": 1 + r(width),
        "ln_post.bias": r(width),
        "proj": r(width, proj),
    }
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        sd |= {
            p + "ln_1.weight": 1 + r(width),
            p + "ln_1.bias": r(width),
            p + "attn.in_proj_weight": r(3 * width, width),
            p + "attn.in_proj_bias": r(3 * width),
            p + "attn.out_proj.weight": r(width, width),
            p + "attn.out_proj.bias": r(width),
            p + "ln_2.weight": 1 + r(width),
            p + "ln_2.bias": r(width),
            p + "mlp.c_fc.weight": r(mlp, width),
            p + "mlp.c_fc.bias": r(mlp),
            p + "mlp.c_proj.weight": r(width, mlp),
            p + "mlp.c_proj.bias": r(width),
        }
    return sd


def _open_clip_visual_forward(sd: dict, x: torch.Tensor, heads: int, layers: int) -> torch.Tensor:
    """OpenCLIP ViT semantics: patchify, class token, pos emb, ln_pre, pre-norm MHA/MLP blocks,
    ln_post on the class token, @ proj. Attention is torch's nn.MultiheadAttention (the module OpenCLIP
    uses), loaded with the fused in-projection."""
    w = sd["conv1.weight"]
    d, p = w.shape[0], w.shape[-1]
    h = F.conv2d(x, w, stride=p).flatten(2).transpose(1, 2)  # (B, N, D)
    cls = sd["class_embedding"].expand(x.shape[0], 1, d)
    h = torch.cat([cls, h], dim=1) + sd["positional_embedding"]
    h = F.layer_norm(h, (d,), sd["ln_pre.weight"], sd["ln_pre.bias"], eps=1e-5)
    for i in range(layers):
        b = f"transformer.resblocks.{i}."
        mha = torch.nn.MultiheadAttention(d, heads, batch_first=True, dtype=x.dtype)
        mha.load_state_dict(
            {
                "in_proj_weight": sd[b + "attn.in_proj_weight"],
                "in_proj_bias": sd[b + "attn.in_proj_bias"],
                "out_proj.weight": sd[b + "attn.out_proj.weight"],
                "out_proj.bias": sd[b + "attn.out_proj.bias"],
            }
        )
        y = F.layer_norm(h, (d,), sd[b + "ln_1.weight"], sd[b + "ln_1.bias"], eps=1e-5)
        h = h + mha(y, y, y, need_weights=False)[0]
        y = F.layer_norm(h, (d,), sd[b + "ln_2.weight"], sd[b + "ln_2.bias"], eps=1e-5)
        y = F.linear(
            F.gelu(F.linear(y, sd[b + "mlp.c_fc.weight"], sd[b + "mlp.c_fc.bias"])),
            sd[b + "mlp.c_proj.weight"],
            sd[b + "mlp.c_proj.bias"],
        )
        h = h + y
    pooled = F.layer_norm(h[:, 0], (d,), sd["ln_post.weight"], sd["ln_post.bias"], eps=1e-5)
    return pooled @ sd["proj"]


def test_clip_map_round_trip_bitwise() -> None:
    cfg = transformers.CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=28,
        patch_size=14,
        projection_dim=16,
    )
    sd = transformers.CLIPVisionModelWithProjection(cfg).state_dict()
    oc = clip_to_open_clip(sd)
    assert oc["proj"].shape == (32, 16) and oc["transformer.resblocks.1.attn.in_proj_weight"].shape == (
        96,
        32,
    )
    back = clip_from_open_clip(oc)
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)
    assert clip_to_open_clip(back).keys() == oc.keys()


def test_clip_map_is_semantically_right() -> None:
    """transformers' model with weights mapped from OpenCLIP tensors == OpenCLIP's computation."""
    width, heads, layers, patch, grid, proj, mlp = 64, 4, 2, 7, 4, 24, 128
    oc = _open_clip_state_dict(width, layers, patch, grid, proj, mlp)
    hf = clip_from_open_clip(oc)
    config = clip_config_from_state_dict(hf)
    assert (
        config["hidden_size"],
        config["image_size"],
        config["patch_size"],
        config["projection_dim"],
        config["num_hidden_layers"],
        config["intermediate_size"],
    ) == (width, patch * grid, patch, proj, layers, mlp)
    config["num_attention_heads"] = heads  # not visible in shapes (width // 64 would give 1)
    model = (
        transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**config)).double().eval()
    )
    missing, unexpected = model.load_state_dict(hf, strict=False)
    assert not unexpected and not [k for k in missing if not k.endswith("position_ids")]
    x = torch.randn(
        2, 3, patch * grid, patch * grid, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    with torch.no_grad():
        got = model(pixel_values=x).image_embeds
        ref = _open_clip_visual_forward(oc, x, heads, layers)
    rel = (got - ref).abs().max() / ref.abs().max()
    assert rel <= 1e-5, rel
    # a wrong head count gives a different function: the test can fail
    model2 = (
        transformers.CLIPVisionModelWithProjection(
            transformers.CLIPVisionConfig(**{**config, "num_attention_heads": 1})
        )
        .double()
        .eval()
    )
    model2.load_state_dict(hf, strict=False)
    with torch.no_grad():
        assert (model2(pixel_values=x).image_embeds - ref).abs().max() / ref.abs().max() > 1e-3


def test_clip_unknown_key_is_an_error() -> None:
    with pytest.raises(CheckpointError, match="attnpool"):
        clip_from_open_clip({"attnpool.weight": torch.zeros(1)})


def test_configs_inferred_from_published_svd_shapes(unets, vaes) -> None:
    """A Stability AI single file has no configs: the ones inferred from SVD's shapes are SVD's."""
    from vidiff.io.single_file import infer_unet_config, infer_vae_config

    module, reference = unets["svd"]
    sd = unet_from_sgm(unet_to_sgm(module.state_dict()))
    inferred = infer_unet_config(sd)
    for k in ("in_channels", "out_channels", "block_out_channels", "layers_per_block", "num_attention_heads",
              "cross_attention_dim", "addition_time_embed_dim", "projection_class_embeddings_input_dim",
              "down_block_types", "up_block_types", "transformer_layers_per_block"):  # fmt: skip
        assert (
            list(inferred[k]) == list(reference[k])
            if isinstance(inferred[k], list)
            else (inferred[k] == reference[k])
        ), k
    assert inferred["num_frames"] == 14 and infer_unet_config(sd, num_frames=25)["num_frames"] == 25
    check_state_dict(expected_shapes("unet", inferred), sd, "unet")

    vae, vae_reference = vaes["svd"]
    vsd = vae_from_sgm(vae_to_sgm(vae.state_dict()))
    vinferred = infer_vae_config(vsd)
    for k in ("block_out_channels", "layers_per_block", "latent_channels", "in_channels", "out_channels"):
        assert (
            list(vinferred[k]) == list(vae_reference[k])
            if k == "block_out_channels"
            else (vinferred[k] == vae_reference[k])
        ), k
    check_state_dict(expected_shapes("vae", vinferred), vsd, "vae")
