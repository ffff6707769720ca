"""Expected tensor names and shapes of each component, computed from its diffusers / transformers config.

This lets every reader check a checkpoint strictly (missing, unexpected and mis-shaped tensors) without
building a model, and lets configs be inferred from shapes and then verified against all of them.
Covered: ``UNetSpatioTemporalConditionModel``, ``AutoencoderKLTemporalDecoder``, ``AutoencoderKL`` with
``use_post_quant_conv=False`` (SV3D's per-frame decoder) and ``CLIPVisionModelWithProjection``.
The tests compare these against the real diffusers / transformers modules.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vidiff.io.weights import CheckpointError

__all__ = ["expected_shapes"]

Shapes = dict[str, tuple[int, ...]]


def _per_block(value: Any, n: int, name: str) -> list[int]:
    if isinstance(value, int):
        return [value] * n
    values = [int(v) for v in value]
    if len(values) != n:
        raise CheckpointError(f"config: {name} has {len(values)} entries for {n} blocks")
    return values


def _lin(s: Shapes, p: str, out: int, inp: int, bias: bool = True) -> None:
    s[p + "weight"] = (out, inp)
    if bias:
        s[p + "bias"] = (out,)


def _conv(s: Shapes, p: str, out: int, inp: int, kernel: tuple[int, ...] = (3, 3)) -> None:
    s[p + "weight"] = (out, inp, *kernel)
    s[p + "bias"] = (out,)


def _norm(s: Shapes, p: str, c: int) -> None:
    s[p + "weight"] = (c,)
    s[p + "bias"] = (c,)


# ------------------------------------------------------------------------------------------------
# UNet


def _st_resnet(s: Shapes, p: str, cin: int, cout: int, temb: int | None) -> None:
    """diffusers SpatioTemporalResBlock (temb None: the VAE decoder's variant without time embedding)."""
    sp, tp = p + "spatial_res_block.", p + "temporal_res_block."
    _norm(s, sp + "norm1.", cin)
    _conv(s, sp + "conv1.", cout, cin)
    if temb is not None:
        _lin(s, sp + "time_emb_proj.", cout, temb)
    _norm(s, sp + "norm2.", cout)
    _conv(s, sp + "conv2.", cout, cout)
    if cin != cout:
        _conv(s, sp + "conv_shortcut.", cout, cin, (1, 1))
    _norm(s, tp + "norm1.", cout)
    _conv(s, tp + "conv1.", cout, cout, (3, 1, 1))
    if temb is not None:
        _lin(s, tp + "time_emb_proj.", cout, temb)
    _norm(s, tp + "norm2.", cout)
    _conv(s, tp + "conv2.", cout, cout, (3, 1, 1))
    s[p + "time_mixer.mix_factor"] = (1,)


def _attention(s: Shapes, p: str, dim: int, ctx: int | None) -> None:
    kv = dim if ctx is None else ctx
    _lin(s, p + "to_q.", dim, dim, bias=False)
    _lin(s, p + "to_k.", dim, kv, bias=False)
    _lin(s, p + "to_v.", dim, kv, bias=False)
    _lin(s, p + "to_out.0.", dim, dim)


def _geglu_ff(s: Shapes, p: str, dim: int) -> None:
    _lin(s, p + "net.0.proj.", dim * 8, dim)
    _lin(s, p + "net.2.", dim, dim * 4)


def _st_transformer(s: Shapes, p: str, c: int, heads: int, ctx: int, depth: int) -> None:
    inner = heads * (c // heads)
    _norm(s, p + "norm.", c)
    _lin(s, p + "proj_in.", inner, c)
    for d in range(depth):
        b = f"{p}transformer_blocks.{d}."
        _norm(s, b + "norm1.", inner)
        _attention(s, b + "attn1.", inner, None)
        _norm(s, b + "norm2.", inner)
        _attention(s, b + "attn2.", inner, ctx)
        _norm(s, b + "norm3.", inner)
        _geglu_ff(s, b + "ff.", inner)
        t = f"{p}temporal_transformer_blocks.{d}."
        _norm(s, t + "norm_in.", inner)
        _geglu_ff(s, t + "ff_in.", inner)
        _norm(s, t + "norm1.", inner)
        _attention(s, t + "attn1.", inner, None)
        _norm(s, t + "norm2.", inner)
        _attention(s, t + "attn2.", inner, ctx)
        _norm(s, t + "norm3.", inner)
        _geglu_ff(s, t + "ff.", inner)
    _lin(s, p + "time_pos_embed.linear_1.", c * 4, c)
    _lin(s, p + "time_pos_embed.linear_2.", c, c * 4)
    s[p + "time_mixer.mix_factor"] = (1,)
    _lin(s, p + "proj_out.", c, inner)


def unet_shapes(config: Mapping[str, Any]) -> Shapes:
    """Tensor shapes of diffusers' ``UNetSpatioTemporalConditionModel`` for ``config``."""
    try:
        ch = [int(c) for c in config["block_out_channels"]]
        downs, ups = list(config["down_block_types"]), list(config["up_block_types"])
        n = len(ch)
        L = _per_block(config.get("layers_per_block", 2), n, "layers_per_block")
        heads = _per_block(config.get("num_attention_heads", 1), n, "num_attention_heads")
        ctx = _per_block(config.get("cross_attention_dim", 1024), n, "cross_attention_dim")
        depth = _per_block(config.get("transformer_layers_per_block", 1), n, "transformer_layers_per_block")
        cin, cout = int(config.get("in_channels", 8)), int(config.get("out_channels", 4))
        adm = int(config["projection_class_embeddings_input_dim"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"unet: config is incomplete or malformed ({e!r})") from None
    if len(downs) != n or len(ups) != n:
        raise CheckpointError(
            f"unet: config has {n} block_out_channels but {len(downs)}/{len(ups)} down/up block types"
        )
    temb = ch[0] * 4
    s: Shapes = {}
    _conv(s, "conv_in.", ch[0], cin)
    _lin(s, "time_embedding.linear_1.", temb, ch[0])
    _lin(s, "time_embedding.linear_2.", temb, temb)
    _lin(s, "add_embedding.linear_1.", temb, adm)
    _lin(s, "add_embedding.linear_2.", temb, temb)
    out = ch[0]
    for i, kind in enumerate(downs):
        inp, out = out, ch[i]
        for j in range(L[i]):
            _st_resnet(s, f"down_blocks.{i}.resnets.{j}.", inp if j == 0 else out, out, temb)
            if "CrossAttn" in kind:
                _st_transformer(s, f"down_blocks.{i}.attentions.{j}.", out, heads[i], ctx[i], depth[i])
        if i < n - 1:
            _conv(s, f"down_blocks.{i}.downsamplers.0.conv.", out, out)
    _st_resnet(s, "mid_block.resnets.0.", ch[-1], ch[-1], temb)
    _st_transformer(s, "mid_block.attentions.0.", ch[-1], heads[-1], ctx[-1], depth[-1])
    _st_resnet(s, "mid_block.resnets.1.", ch[-1], ch[-1], temb)
    rch, rL, rheads, rctx, rdepth = ch[::-1], L[::-1], heads[::-1], ctx[::-1], depth[::-1]
    out = rch[0]
    for i, kind in enumerate(ups):
        prev, out = out, rch[i]
        inp = rch[min(i + 1, n - 1)]
        for j in range(rL[i] + 1):
            skip = inp if j == rL[i] else out
            res_in = prev if j == 0 else out
            _st_resnet(s, f"up_blocks.{i}.resnets.{j}.", res_in + skip, out, temb)
            if "CrossAttn" in kind:
                _st_transformer(s, f"up_blocks.{i}.attentions.{j}.", out, rheads[i], rctx[i], rdepth[i])
        if i < n - 1:
            _conv(s, f"up_blocks.{i}.upsamplers.0.conv.", out, out)
    _norm(s, "conv_norm_out.", ch[0])
    _conv(s, "conv_out.", cout, ch[0])
    return s


# ------------------------------------------------------------------------------------------------
# VAE


def _resnet(s: Shapes, p: str, cin: int, cout: int) -> None:
    _norm(s, p + "norm1.", cin)
    _conv(s, p + "conv1.", cout, cin)
    _norm(s, p + "norm2.", cout)
    _conv(s, p + "conv2.", cout, cout)
    if cin != cout:
        _conv(s, p + "conv_shortcut.", cout, cin, (1, 1))


def _vae_attention(s: Shapes, p: str, c: int) -> None:
    _norm(s, p + "group_norm.", c)
    for name in ("to_q.", "to_k.", "to_v.", "to_out.0."):
        _lin(s, p + name, c, c)


def vae_shapes(config: Mapping[str, Any]) -> Shapes:
    """Shapes of ``AutoencoderKLTemporalDecoder`` (or ``AutoencoderKL`` for ``_class_name`` AutoencoderKL)."""
    try:
        ch = [int(c) for c in config["block_out_channels"]]
        L = int(config.get("layers_per_block", 1))
        zc = int(config.get("latent_channels", 4))
        cin, cout = int(config.get("in_channels", 3)), int(config.get("out_channels", 3))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"vae: config is incomplete or malformed ({e!r})") from None
    temporal = config.get("_class_name", "AutoencoderKLTemporalDecoder") != "AutoencoderKL"
    n = len(ch)
    s: Shapes = {}
    _conv(s, "encoder.conv_in.", ch[0], cin)
    out = ch[0]
    for i in range(n):
        inp, out = out, ch[i]
        for j in range(L):
            _resnet(s, f"encoder.down_blocks.{i}.resnets.{j}.", inp if j == 0 else out, out)
        if i < n - 1:
            _conv(s, f"encoder.down_blocks.{i}.downsamplers.0.conv.", out, out)
    _resnet(s, "encoder.mid_block.resnets.0.", ch[-1], ch[-1])
    _vae_attention(s, "encoder.mid_block.attentions.0.", ch[-1])
    _resnet(s, "encoder.mid_block.resnets.1.", ch[-1], ch[-1])
    _norm(s, "encoder.conv_norm_out.", ch[-1])
    _conv(s, "encoder.conv_out.", 2 * zc, ch[-1])
    if config.get("use_quant_conv", True):
        _conv(s, "quant_conv.", 2 * zc, 2 * zc, (1, 1))
    if not temporal and config.get("use_post_quant_conv", True):
        _conv(s, "post_quant_conv.", zc, zc, (1, 1))

    def res(p: str, a: int, b: int) -> None:
        (_st_resnet(s, p, a, b, None) if temporal else _resnet(s, p, a, b))

    _conv(s, "decoder.conv_in.", ch[-1], zc)
    # diffusers' temporal mid block has layers_per_block resnets; the 2D one always has two
    for j in range(L if temporal else 2):
        res(f"decoder.mid_block.resnets.{j}.", ch[-1], ch[-1])
    _vae_attention(s, "decoder.mid_block.attentions.0.", ch[-1])
    rch = ch[::-1]
    out = rch[0]
    for i in range(n):
        prev, out = out, rch[i]
        for j in range(L + 1):
            res(f"decoder.up_blocks.{i}.resnets.{j}.", prev if j == 0 else out, out)
        if i < n - 1:
            _conv(s, f"decoder.up_blocks.{i}.upsamplers.0.conv.", out, out)
    _norm(s, "decoder.conv_norm_out.", ch[0])
    _conv(s, "decoder.conv_out.", cout, ch[0])
    if temporal:
        _conv(s, "decoder.time_conv_out.", cout, cout, (3, 1, 1))
    return s


# ------------------------------------------------------------------------------------------------
# CLIP vision


def clip_vision_shapes(config: Mapping[str, Any]) -> Shapes:
    """Shapes of transformers' ``CLIPVisionModelWithProjection`` (persistent tensors only)."""
    try:
        d, inter = int(config["hidden_size"]), int(config["intermediate_size"])
        layers, proj = int(config["num_hidden_layers"]), int(config["projection_dim"])
        img, p = int(config["image_size"]), int(config["patch_size"])
        c = int(config.get("num_channels", 3))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"image_encoder: config is incomplete or malformed ({e!r})") from None
    v = "vision_model."
    s: Shapes = {
        v + "embeddings.class_embedding": (d,),
        v + "embeddings.patch_embedding.weight": (d, c, p, p),
        v + "embeddings.position_embedding.weight": ((img // p) ** 2 + 1, d),
    }
    _norm(s, v + "pre_layrnorm.", d)
    for i in range(layers):
        b = f"{v}encoder.layers.{i}."
        for name in ("k_proj", "v_proj", "q_proj", "out_proj"):
            _lin(s, f"{b}self_attn.{name}.", d, d)
        _norm(s, b + "layer_norm1.", d)
        _lin(s, b + "mlp.fc1.", inter, d)
        _lin(s, b + "mlp.fc2.", d, inter)
        _norm(s, b + "layer_norm2.", d)
    _norm(s, v + "post_layernorm.", d)
    _lin(s, "visual_projection.", proj, d, bias=False)
    return s


_BY_COMPONENT = {"unet": unet_shapes, "vae": vae_shapes, "image_encoder": clip_vision_shapes}


def expected_shapes(component: str, config: Mapping[str, Any]) -> Shapes:
    """Expected ``{name: shape}`` of a component's state dict, from its config."""
    if component not in _BY_COMPONENT:
        raise CheckpointError(f"{component}: no known tensor layout (components with weights: "
                              f"{', '.join(_BY_COMPONENT)})")
    return _BY_COMPONENT[component](config)
