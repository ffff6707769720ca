"""SV4D (Xie et al. 2024) and SV4D 2.0 (Yao et al. 2025) networks against Stability's own ``sgm`` modules.

The golden files under ``tests/data/sv4d/`` were made by ``scripts/make_sv4d_golden.py``, which runs sgm's
``SpatialUNetModelWithTime`` (Stability-AI/generative-models, configs ``sv4d.yaml`` / ``sv4d2.yaml`` /
``sv4d2_8views.yaml`` shrunk to test size) on seeded random weights, and lists the tensor names and shapes of
the released single files from sgm's module tree built at full size on the meta device.

The index-label tests simulate sgm's reshapes (``view`` / ``permute`` / einops ``rearrange`` of
``spacetime_attention.py``) with numpy on arrays of (b, t, v, pixel) labels, independently of vidiff's code,
and compare the token groupings and the cross-attention rows with what vidiff's network does.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vidiff.conditioning import SV4DCond
from vidiff.io.sv4d_keymap import split_sv4d_single_file, sv4d_unet_from_sgm, sv4d_unet_to_sgm
from vidiff.io.weights import CheckpointError, load_state_dict_strict
from vidiff.networks.sv4d import (
    SV4D_PRESETS,
    SV4DConfig,
    SV4DTransformer,
    SV4DUNet,
    motion_sequences,
    motion_tokens,
    unmotion_sequences,
    unview_sequences,
    view_sequences,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "sv4d"
UNET = "model.diffusion_model."
WEIGHTS = {"sv4d": "tiny_sv4d", "sv4d2": "tiny_sv4d2", "sv4d2_8views": "tiny_sv4d2"}
VARIANTS = tuple(WEIGHTS)


def _sgm_weights(variant: str) -> dict[str, torch.Tensor]:
    tensors = load_file(str(DATA / f"{WEIGHTS[variant]}.safetensors"))
    return {k[len(UNET):]: v.float() for k, v in tensors.items()}


def _tiny(variant: str) -> SV4DUNet:
    net = SV4DUNet(SV4D_PRESETS[f"tiny_{variant}"]).eval()
    load_state_dict_strict(net, sv4d_unet_from_sgm(_sgm_weights(variant)), variant)
    return net


def _golden(variant: str) -> tuple[dict[str, torch.Tensor], SV4DCond]:
    g = {k: v.float() for k, v in load_file(str(DATA / f"golden_{variant}.safetensors")).items()}
    return g, SV4DCond(crossattn=g["crossattn"], vector=g["vector"], concat=g["concat"], cond_view=g["cond_view"])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# --- parity with sgm ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_matches_sgm(variant: str) -> None:
    """One forward of the tiny network (batch 2, a different noise level per latent) equals sgm's."""
    g, cond = _golden(variant)
    with torch.no_grad():
        out = _tiny(variant)(g["x"], g["c_noise"], cond)
    assert out.shape == g["out"].shape
    assert _rel(out, g["out"]) <= 1e-5


def test_per_video_noise_level_is_the_constant_per_frame_one() -> None:
    g, cond = _golden("sv4d2")
    net = _tiny("sv4d2")
    c_noise = g["c_noise"][:, 0]
    with torch.no_grad():
        a = net(g["x"], c_noise, cond)
        b = net(g["x"], c_noise[:, None].expand_as(g["c_noise"]), cond)
    assert torch.equal(a, b)


def test_level_attention_layout_runs() -> None:
    """The released layout (transformers after the resnets of the upper levels, not only in the middle)."""
    cfg = SV4D_PRESETS["tiny_sv4d2"].replace(attention_resolutions=(1,))
    net = SV4DUNet(cfg).eval()
    assert len(net.down_blocks[0].attentions) == 1 and net.down_blocks[1].attentions is None
    assert len(net.up_blocks[1].attentions) == 2 and net.up_blocks[0].attentions is None
    g, cond = _golden("sv4d2")
    with torch.no_grad():
        out = net(g["x"], g["c_noise"], cond)
    assert out.shape == g["x"].shape and torch.isfinite(out).all()


def test_cond_shapes_are_checked() -> None:
    g, cond = _golden("sv4d2")
    net = _tiny("sv4d2")
    with pytest.raises(ValueError, match=r"T=3 times .* x V=4 views"):
        net(g["x"][:, :8], g["c_noise"][:, :8], cond)
    with pytest.raises(ValueError, match="cond_view must be"):
        net(g["x"], g["c_noise"], SV4DCond(crossattn=cond.crossattn, vector=cond.vector, concat=cond.concat))


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"adm_in_channels .* use_camera_emb"):
        SV4DConfig(use_camera_emb=True, adm_in_channels=1000)
    with pytest.raises(ValueError, match=r"SV4DConfig\.channel_mult"):
        SV4DConfig(channel_mult=())
    assert SV4DConfig.from_dict(SV4D_PRESETS["sv4d2"].to_dict()) == SV4D_PRESETS["sv4d2"]


@pytest.mark.parametrize("preset", sorted(SV4D_PRESETS))
def test_config_from_state_dict_shapes(preset: str) -> None:
    cfg = SV4D_PRESETS[preset]
    with torch.device("meta"):
        shapes = SV4DUNet(cfg).state_dict()
    hidden = {k: getattr(cfg, k) for k in ("use_3d_attention", "num_head_channels", "num_times", "num_views")}
    assert SV4DConfig.from_state_dict(shapes, **hidden) == cfg


def test_unconditional_branch_zeroes_what_sgm_zeroes() -> None:
    """sgm's uc: cond_frames, cond_frames_without_noise and cond_view zeroed; the vector as given."""
    _, cond = _golden("sv4d2")
    uc = cond.zeros_like()
    assert isinstance(uc, SV4DCond)
    for name in ("crossattn", "concat", "cond_view"):
        assert not getattr(uc, name).any()
    assert torch.equal(uc.vector, cond.vector)
    vector_uc = torch.cat([torch.zeros_like(cond.vector[..., :64]), cond.vector[..., 64:]], -1)
    assert torch.equal(cond.zeros_like(vector=vector_uc).vector, vector_uc)
    both = uc.cat(cond)
    assert isinstance(both, SV4DCond) and torch.equal(both.cond_view[2:], cond.cond_view)


def test_resnet_temporal_branch_mixes_neighbouring_views_across_times() -> None:
    """The resnets' (3, 1, 1) temporal branch runs over the T·V latents time-major (sgm's
    ``"(b t) c h w -> b c t h w"`` with ``t = num_video_frames``): two convolutions reach two latents either
    side, so the last view of time 0 reaches the first two views of time 1 and nothing further (its
    GroupNorms, whose statistics span all latents, are left out here)."""
    net = _tiny("sv4d2")
    t, v = 3, 4
    resnet = net.mid_block.resnets[0]
    resnet.temporal_res_block.norm1 = resnet.temporal_res_block.norm2 = torch.nn.Identity()
    x = torch.randn(t * v, 32, 4, 3)
    emb = torch.randn(1, t * v, net.config.time_embed_dim)
    bumped = x.clone()
    bumped[v - 1] += 1.0  # latent (t=0, v=V-1)
    with torch.no_grad():
        changed = (resnet(bumped, emb, t * v) - resnet(x, emb, t * v)).abs().amax(dim=(1, 2, 3)) > 0
    assert changed.nonzero().flatten().tolist() == [v - 3, v - 2, v - 1, v, v + 1]


# --- index labels: numpy simulations of sgm's reshapes --------------------------------------------------------

B, T, V, H, W = 2, 3, 4, 4, 2
HW = H * W


def _labels(b: int, t: int, v: int, hw: int) -> np.ndarray:
    """``(b, t, v, hw, 4)``: every token holds its own (b, t, v, pixel)."""
    return np.stack(np.meshgrid(np.arange(b), np.arange(t), np.arange(v), np.arange(hw), indexing="ij"), -1)


def _einops_bt_to_bs(x: np.ndarray, t: int) -> np.ndarray:
    """einops ``"(b t) s c -> (b s) t c"`` (``BasicTransformerTimeMixBlock``'s first rearrange)."""
    bt, s, c = x.shape
    return x.reshape(bt // t, t, s, c).transpose(0, 2, 1, 3).reshape(bt // t * s, t, c)


def _sgm_view_sequences(x: np.ndarray, use_3d: bool) -> np.ndarray:
    """``x.view(b, t, v, h*w, c)`` then the camera-attention reshape and ``time_block(..., timesteps=v)``."""
    b, t, v, _, c = x.shape
    if use_3d:
        y = x.transpose(0, 2, 3, 1, 4).reshape(-1, t, c)  # b*v*h*w t c
    else:
        y = x.transpose(0, 2, 1, 3, 4).reshape(b * v, -1, c)  # b*v t*h*w c
    return _einops_bt_to_bs(y, v)


def _sgm_motion_sequences(x: np.ndarray, use_3d: bool) -> np.ndarray:
    """From the view block's layout, the motion-attention reshape and ``mot_block(..., timesteps=t)``."""
    b, t, v, hw, c = x.shape
    if use_3d:
        y = x.transpose(0, 2, 3, 1, 4).reshape(-1, t, c)
        y = y.reshape(b, v, hw, t, c).transpose(0, 3, 1, 2, 4).reshape(b * t, -1, c)
    else:
        y = x.transpose(0, 2, 1, 3, 4).reshape(b * v, -1, c)
        y = y.reshape(b, v, t, hw, c).transpose(0, 2, 1, 3, 4).reshape(b * t, -1, c)
    return _einops_bt_to_bs(y, t)


def _sgm_camera_context(b: int, t: int, hw: int) -> np.ndarray:
    """``context[:,:,None].repeat(1,1,h*w,1).reshape(-1,1,d1)`` on (b, t) labels: one row per query row."""
    ctx = np.stack(np.meshgrid(np.arange(b), np.arange(t), indexing="ij"), -1)  # (b, t, 2)
    return np.repeat(ctx[:, :, None], hw, axis=2).reshape(-1, 2)


def test_t_major_flattening_and_view_grouping() -> None:
    """Plain view blocks (SV4D, SV4D 2.0 8-view): a sequence is the V views of one (b, t, pixel), and
    latent frame f of x is (t, v) = divmod(f, V)."""
    x = _labels(B, T, V, HW)
    expected = _sgm_view_sequences(x, use_3d=False)
    got = view_sequences(torch.from_numpy(x), quirk_3d=False).numpy()
    assert np.array_equal(got, expected)
    assert (got[:, :, 2] == np.arange(V)).all() and (got[:, :, :2] == got[:, :1, :2]).all()
    flat = x.reshape(B * T * V, HW, 4)[:, 0]  # sgm's x rows (b t v): t-major
    assert np.array_equal(flat[:, 1:3], np.stack(np.divmod(np.arange(B * T * V) % (T * V), V), -1))
    back = unview_sequences(torch.from_numpy(got), torch.Size(x.shape), quirk_3d=False)
    assert np.array_equal(back.numpy(), x)


def test_sv4d2_4view_quirk_groups_adjacent_pixels() -> None:
    """SV4D 2.0 4-view (``use_3d_attention``): sgm splits (b, v, pixel) rows in groups of V, so a "view"
    sequence is V adjacent pixels of one view and one time; vidiff reproduces it exactly."""
    x = _labels(B, T, V, HW)
    expected = _sgm_view_sequences(x, use_3d=True)
    got = view_sequences(torch.from_numpy(x), quirk_3d=True).numpy()
    assert np.array_equal(got, expected)
    assert not np.array_equal(got, view_sequences(torch.from_numpy(x), quirk_3d=False).numpy())
    b, t, v, p = (got[..., i] for i in range(4))
    assert (t == t[:, :1]).all() and (v == v[:, :1]).all() and (b == b[:, :1]).all()  # one view, one time
    assert (np.diff(p, axis=1) == 1).all()  # V consecutive pixels
    back = unview_sequences(torch.from_numpy(got), torch.Size(x.shape), quirk_3d=True)
    assert np.array_equal(back.numpy(), x)


@pytest.mark.parametrize("use_3d", [False, True])
def test_motion_grouping(use_3d: bool) -> None:
    """Motion blocks: a sequence is the T times of one (b, v, pixel), in both of sgm's layouts."""
    x = _labels(B, T, V, HW)
    expected = _sgm_motion_sequences(x, use_3d)
    got = motion_sequences(torch.from_numpy(x)).numpy()
    assert np.array_equal(got, expected)
    assert (got[:, :, 1] == np.arange(T)).all()
    assert np.array_equal(unmotion_sequences(torch.from_numpy(got), torch.Size(x.shape)).numpy(), x)


class _Record(torch.nn.Module):
    """Stands in for a transformer block: records its query tokens and context, returns the tokens."""

    def __init__(self, seen: dict, name: str) -> None:
        super().__init__()
        self.seen, self.name = seen, name

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        self.seen[self.name] = (x[..., :4].round().numpy(), context)
        return x


@pytest.mark.parametrize("use_3d", [False, True])
def test_transformer_groupings_follow_sgm(use_3d: bool) -> None:
    """In a real forward of :class:`SV4DTransformer` (blocks replaced by recorders, norms and projections by
    identities, position embeddings zeroed), the tokens each spatial / view / motion block sees, and the
    context row each query row reads, are sgm's: input latent f = t·V + v is read as (t, v) (time-major),
    the view and motion sequences and the ``spatial_context`` / ``camera_context`` / ``motion_context`` rows
    are those of sgm's reshapes, the 4-view quirk and its misaligned camera rows included."""
    cfg = SV4D_PRESETS["tiny_sv4d2" if use_3d else "tiny_sv4d2_8views"].replace(context_dim=2, motion_context_dim=3)
    block = SV4DTransformer(32, cfg).eval()
    seen: dict[str, tuple[np.ndarray, torch.Tensor]] = {}
    for name in ("transformer_blocks", "view_blocks", "motion_blocks"):
        getattr(block, name)[0] = _Record(seen, name)
    block.norm = block.proj_in = block.proj_out = torch.nn.Identity()
    for embed in (block.view_pos_embed, block.motion_pos_embed):
        torch.nn.init.zeros_(embed.linear_2.weight)
        torch.nn.init.zeros_(embed.linear_2.bias)

    labels = _labels(B, T, V, HW)  # the token at vidiff's (b, latent t·V + v, pixel y·W + x)
    x = torch.zeros(B * T * V, 32, H, W)
    x[:, :4] = torch.from_numpy(labels.reshape(B * T * V, H, W, 4)).permute(0, 3, 1, 2).float()
    context = torch.from_numpy(np.stack(np.meshgrid(np.arange(B), np.arange(T), indexing="ij"), -1)).float()
    cond_view = torch.from_numpy(_labels(B, 1, V, HW)[:, 0][..., [0, 2, 3]]).float()  # (b, v, hw, 3): (b, v, p)
    cond_view = cond_view.reshape(B, V, H, W, 3).permute(0, 1, 4, 2, 3)
    with torch.no_grad():
        block(x, context, torch.randn(B, T * V, cfg.time_embed_dim), cond_view, T, V)

    def rows(name: str) -> np.ndarray:  # vidiff's Attention: query row n reads context row n // (N / M)
        tokens, ctx = seen[name]
        n = tokens.shape[0]
        return ctx[torch.arange(n) // (n // ctx.shape[0]), 0].numpy()

    sgm_x = labels.reshape(B * T * V, HW, 4)  # what sgm's network is handed: rows (b t v)
    assert np.array_equal(seen["transformer_blocks"][0], sgm_x)
    assert np.array_equal(rows("transformer_blocks"), sgm_x[:, 0, :2])  # spatial_context: (b, t) of the frame
    sgm_5d = sgm_x.reshape(B, T, V, HW, 4)  # sgm's x.view(b, t, v, h*w, c)
    assert np.array_equal(seen["view_blocks"][0], _sgm_view_sequences(sgm_5d, use_3d))
    assert np.array_equal(rows("view_blocks"), _sgm_camera_context(B, T, HW))
    assert np.array_equal(seen["motion_blocks"][0], _sgm_motion_sequences(sgm_5d, use_3d))
    motion = np.stack(np.meshgrid(np.arange(B), np.arange(V), np.arange(HW), indexing="ij"), -1).reshape(-1, 3)
    assert np.array_equal(rows("motion_blocks"), motion)  # cond_view.permute(0,2,3,1).reshape(-1,1,d2)
    view_times = seen["view_blocks"][0][:, 0, 1]
    # plain: every view sequence reads its own time's token; the quirk: sequence (group g, time s) reads the
    # token of time ((g·T + s) // HW) mod T
    assert np.array_equal(rows("view_blocks")[:, 1], view_times) != use_3d


def test_motion_tokens_are_resized_reference_pixels() -> None:
    cond_view = torch.randn(B, V, 4, 8, 6)
    tokens = motion_tokens(cond_view, 4, 3)
    resized = torch.nn.functional.interpolate(cond_view.flatten(0, 1), size=(4, 3), mode="bilinear")
    assert tokens.shape == (B * V * 12, 1, 4)
    assert torch.equal(tokens[5 * 12 + 7, 0], resized[5, :, 7 // 3, 7 % 3])
    assert torch.equal(motion_tokens(cond_view, 8, 6)[:, 0], cond_view.flatten(0, 1).permute(0, 2, 3, 1).reshape(-1, 4))


# --- keys -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_released_unet_keys_match_after_the_key_map(variant: str) -> None:
    """vidiff's full-size network (meta device) has exactly the tensors of the released file's
    ``model.diffusion_model.*``, names mapped and shapes equal; the map is a bijection."""
    with gzip.open(DATA / f"released_keys_{variant}.json.gz", "rt") as f:
        shapes = json.load(f)
    sgm = {k[len(UNET):]: torch.empty(s, device="meta") for k, s in shapes.items() if k.startswith(UNET)}
    mapped = sv4d_unet_from_sgm(sgm)
    with torch.device("meta"):
        net = SV4DUNet(SV4D_PRESETS[variant])
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in mapped.items()}
    assert sorted(set(expected) - set(got)) == [], "missing"
    assert sorted(set(got) - set(expected)) == [], "left over"
    assert got == expected
    assert set(sv4d_unet_to_sgm(mapped)) == set(sgm)


@pytest.mark.parametrize("variant", VARIANTS)
def test_released_single_file_splits_with_nothing_left_over(variant: str) -> None:
    """Every tensor of the released file is used or deliberately ignored (OpenCLIP text leftovers, the
    encoder copies of embedders 4 and 5, the autoencoders' decoder halves); the VAE and CLIP tower fill
    vidiff's / transformers' modules exactly."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from vidiff.autoencoders import AutoencoderKL, ImageVAEConfig
    from vidiff.io.clip_keymap import clip_config_from_state_dict
    from vidiff.io.single_file import infer_vae_config

    with gzip.open(DATA / f"released_keys_{variant}.json.gz", "rt") as f:
        shapes = json.load(f)
    parts = split_sv4d_single_file({k: torch.empty(s, device="meta") for k, s in shapes.items()})
    ignorable = re.compile(r"^conditioner\.embedders\.(0\.open_clip\.model\.(?!visual\.)"
                           r"|1\.encoder\.(decoder|post_quant_conv)\.|[45]\.encoder\.)")
    assert parts.ignored and all(ignorable.match(k) for k in parts.ignored)
    fused = sum(".attn.in_proj_" in k for k in shapes)  # OpenCLIP's fused q/k/v: three tensors each
    used = len(parts.unet) + len(parts.vae) + len(parts.image_encoder)
    assert used + len(parts.ignored) == len(shapes) + 2 * fused
    clip_cfg = {k: v for k, v in clip_config_from_state_dict(parts.image_encoder).items() if not k.startswith("_")}
    with torch.device("meta"):
        vae = AutoencoderKL(ImageVAEConfig.from_diffusers(infer_vae_config(parts.vae)))
        clip = CLIPVisionModelWithProjection(CLIPVisionConfig(**clip_cfg))
    for module, got in ((vae, parts.vae), (clip, parts.image_encoder)):
        expected = {k: tuple(v.shape) for k, v in module.state_dict().items() if not k.endswith("position_ids")}
        assert {k: tuple(v.shape) for k, v in got.items()} == expected


def test_missing_and_left_over_tensors_are_named() -> None:
    sgm = _sgm_weights("sv4d2")
    net = SV4DUNet(SV4D_PRESETS["tiny_sv4d2"])
    partial = dict(sgm)
    del partial["middle_block.1.time_mixer_motion.mix_factor"]
    with pytest.raises(CheckpointError, match=r"missing: .*mid_block\.attentions\.0\.motion_mixer\.mix_factor"):
        load_state_dict_strict(net, sv4d_unet_from_sgm(partial), "sv4d2")
    with pytest.raises(CheckpointError, match=r"unexpected: .*motion_mixer.* wrong shape: .*view_pos_embed\.linear_1"):
        load_state_dict_strict(SV4DUNet(SV4D_PRESETS["tiny_sv4d"]), sv4d_unet_from_sgm(sgm), "sv4d")
    with pytest.raises(CheckpointError, match=r"unknown sgm key 'middle_block\.1\.bogus\.weight'"):
        sv4d_unet_from_sgm({**sgm, "middle_block.1.bogus.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"unexpected: mid_block\.attentions\.0\.view_blocks\.0\.bogus"):
        extra = {**sgm, "middle_block.1.time_mix_blocks.0.bogus": torch.zeros(1)}
        load_state_dict_strict(net, sv4d_unet_from_sgm(extra), "sv4d2")
    with pytest.raises(CheckpointError, match=r"unexpected tensors: conditioner\.embedders\.7\.foo"):
        split_sv4d_single_file({UNET + k: v for k, v in sgm.items()} | {"conditioner.embedders.7.foo": torch.zeros(1)})
