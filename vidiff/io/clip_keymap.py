"""OpenCLIP visual tower <-> transformers ``CLIPVisionModelWithProjection`` state dicts and config.

OpenCLIP (``VisionTransformer``, the tower SVD's sgm checkpoint stores under
``conditioner.embedders.0.open_clip.model.visual.``) and transformers compute the same function for
ViT-H/14: patch conv (no bias) -> prepend class token -> + positional embedding -> ``ln_pre`` -> pre-norm
residual blocks (``nn.MultiheadAttention`` with a fused in-projection; MLP with exact GELU) ->
``ln_post`` of the class token -> ``@ proj``. transformers splits the fused in-projection into
q/k/v and stores the projection as a bias-free ``Linear``, i.e. ``proj`` transposed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from vidiff.io.weights import CheckpointError

__all__ = ["clip_config_from_state_dict", "clip_from_open_clip", "clip_to_open_clip"]

_HF = "vision_model."
_SIMPLE = {  # open_clip name -> transformers name (tensors copied as is)
    "conv1.weight": _HF + "embeddings.patch_embedding.weight",
    "class_embedding": _HF + "embeddings.class_embedding",
    "positional_embedding": _HF + "embeddings.position_embedding.weight",
    "ln_pre.weight": _HF + "pre_layrnorm.weight",  # (sic: transformers' spelling)
    "ln_pre.bias": _HF + "pre_layrnorm.bias",
    "ln_post.weight": _HF + "post_layernorm.weight",
    "ln_post.bias": _HF + "post_layernorm.bias",
}
_BLOCK = {  # inside transformer.resblocks.{i}. -> inside encoder.layers.{i}.
    "ln_1.": "layer_norm1.",
    "ln_2.": "layer_norm2.",
    "attn.out_proj.": "self_attn.out_proj.",
    "mlp.c_fc.": "mlp.fc1.",
    "mlp.c_proj.": "mlp.fc2.",
}
# A buffer older transformers versions saved; it is arange(num_positions), recomputed by the model.
_HF_DERIVED = (_HF + "embeddings.position_ids",)


def _err(msg: str) -> CheckpointError:
    return CheckpointError(f"image_encoder: {msg}")


def clip_from_open_clip(visual: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map an OpenCLIP ``visual.*`` state dict (names without ``visual.``) to transformers names."""
    out: dict[str, torch.Tensor] = {}
    for k, v in visual.items():
        if k in _SIMPLE:
            out[_SIMPLE[k]] = v
            continue
        if k == "proj":
            out["visual_projection.weight"] = v.t().contiguous()
            continue
        m = re.match(r"^transformer\.resblocks\.(\d+)\.(.+)$", k)
        if not m:
            raise _err(f"unknown OpenCLIP visual key {k!r}")
        i, rest = m.group(1), m.group(2)
        layer = f"{_HF}encoder.layers.{i}."
        if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
            if v.shape[0] % 3:
                raise _err(f"{k} has shape {list(v.shape)}; its first dimension must be 3 x width")
            kind = "weight" if rest.endswith("weight") else "bias"
            for name, part in zip(("q_proj", "k_proj", "v_proj"), v.chunk(3, dim=0)):
                out[f"{layer}self_attn.{name}.{kind}"] = part.contiguous()
            continue
        for a, b in _BLOCK.items():
            if rest.startswith(a):
                out[layer + b + rest[len(a) :]] = v
                break
        else:
            raise _err(f"unknown OpenCLIP visual key {k!r}")
    return out


def clip_to_open_clip(hf: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a transformers ``CLIPVisionModelWithProjection`` state dict to OpenCLIP ``visual.*`` names."""
    inv = {v: k for k, v in _SIMPLE.items()}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for k, v in hf.items():
        if k in _HF_DERIVED:
            continue
        if k in inv:
            out[inv[k]] = v
            continue
        if k == "visual_projection.weight":
            out["proj"] = v.t().contiguous()
            continue
        m = re.match(r"^vision_model\.encoder\.layers\.(\d+)\.(.+)$", k)
        if not m:
            raise _err(f"unknown transformers CLIP vision key {k!r}")
        i, rest = m.group(1), m.group(2)
        if mm := re.match(r"^self_attn\.(q|k|v)_proj\.(weight|bias)$", rest):
            qkv.setdefault((i, mm.group(2)), {})[mm.group(1)] = v
            continue
        for b, a in _BLOCK.items():
            if rest.startswith(a):
                out[f"transformer.resblocks.{i}.{b}{rest[len(a):]}"] = v
                break
        else:
            raise _err(f"unknown transformers CLIP vision key {k!r}")
    for (i, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            missing = sorted({"q", "k", "v"} - set(parts))
            names = ", ".join(f"vision_model.encoder.layers.{i}.self_attn.{p}_proj.{kind}" for p in missing)
            raise _err(f"missing {names}")
        out[f"transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat(
            [parts["q"], parts["k"], parts["v"]], dim=0
        )
    return out


def drop_derived_clip_keys(hf: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove buffers that older transformers versions saved but current ones recompute."""
    return {k: v for k, v in hf.items() if k not in _HF_DERIVED}


def _heads_for_width(width: int) -> int:
    # OpenCLIP's ViT-H/14 has width 1280 and 16 heads (head dim 80); the other OpenCLIP/OpenAI ViTs use
    # head dim 64 (ViT-B 768/12, ViT-L 1024/16); ViT-g (1408) and ViT-bigG (1664) also use 16 heads.
    return {1280: 16, 1408: 16, 1664: 16}.get(width, max(1, width // 64))


def clip_config_from_state_dict(hf: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """A transformers ``CLIPVisionConfig`` dict inferred from tensor shapes (transformers names).

    ``num_attention_heads`` cannot be read from shapes: it is 16 for width 1280 (ViT-H/14) and
    width // 64 otherwise. Activation is exact GELU and LayerNorm eps 1e-5, as in OpenCLIP.
    """
    try:
        patch = hf[_HF + "embeddings.patch_embedding.weight"]
        pos = hf[_HF + "embeddings.position_embedding.weight"]
        fc1 = hf[_HF + "encoder.layers.0.mlp.fc1.weight"]
        proj = hf["visual_projection.weight"]
    except KeyError as e:
        raise _err(f"cannot infer the config: tensor {e.args[0]} is missing") from None
    width, channels, p = patch.shape[0], patch.shape[1], patch.shape[2]
    grid = round((pos.shape[0] - 1) ** 0.5)
    if grid * grid != pos.shape[0] - 1:
        raise _err(f"position embedding has {pos.shape[0]} rows, not 1 + a square number of patches")
    layers = {int(m.group(1)) for k in hf if (m := re.match(r"^vision_model\.encoder\.layers\.(\d+)\.", k))}
    return {
        "architectures": ["CLIPVisionModelWithProjection"],
        "model_type": "clip_vision_model",
        "hidden_size": int(width),
        "intermediate_size": int(fc1.shape[0]),
        "projection_dim": int(proj.shape[0]),
        "num_hidden_layers": max(layers) + 1 if layers else 0,
        "num_attention_heads": _heads_for_width(int(width)),
        "num_channels": int(channels),
        "image_size": int(grid * p),
        "patch_size": int(p),
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "initializer_factor": 1.0,
    }
