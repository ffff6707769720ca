"""Key maps between the original (sgm, Stability-AI/generative-models) names and diffusers' names.

UNet: sgm ``VideoUNet`` (``model.diffusion_model.*`` without that prefix) <-> diffusers
``UNetSpatioTemporalConditionModel``. VAE: sgm ``Encoder`` / ``VideoDecoder`` (or the plain ``Decoder``
of SV3D) and the embedder's ``quant_conv`` <-> diffusers ``AutoencoderKLTemporalDecoder`` (or
``AutoencoderKL`` without ``post_quant_conv``). Names here are relative to the module: callers add the
``model.diffusion_model.`` / ``first_stage_model.`` / ``conditioner.embedders.N.encoder.`` prefixes.

Both directions are plain functions of one key plus the layout numbers they need (``layers_per_block``,
which up blocks have attention, the number of VAE levels), so each map is checked to be a bijection.
The only tensor change is in the VAE mid-block attention: sgm uses 1x1 convolutions (C, C, 1, 1) where
diffusers uses linear layers (C, C). The UNet transformers' ``proj_in`` / ``proj_out`` are linear in SVD
(``use_linear_in_transformer``); a 1x1-conv variant is flattened when read.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping

import torch

from vidiff.io.weights import CheckpointError

__all__ = [
    "unet_diffusers_to_sgm_key",
    "unet_from_sgm",
    "unet_sgm_to_diffusers_key",
    "unet_to_sgm",
    "vae_diffusers_to_sgm_key",
    "vae_from_sgm",
    "vae_sgm_to_diffusers_key",
    "vae_to_sgm",
]

# ------------------------------------------------------------------------------------------------
# UNet

_UNET_TOP = {  # diffusers prefix -> sgm prefix
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "add_embedding.linear_1.": "label_emb.0.0.",
    "add_embedding.linear_2.": "label_emb.0.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}
# openaimodel ResBlock Sequential indices: in_layers = [GN, SiLU, conv], emb_layers = [SiLU, Linear],
# out_layers = [GN, SiLU, Dropout, conv].
_RES = {
    "norm1.": "in_layers.0.",
    "conv1.": "in_layers.2.",
    "time_emb_proj.": "emb_layers.1.",
    "norm2.": "out_layers.0.",
    "conv2.": "out_layers.3.",
    "conv_shortcut.": "skip_connection.",
}


def _swap_prefix(rest: str, table: Mapping[str, str], what: str) -> str:
    for a, b in table.items():
        if rest.startswith(a):
            return b + rest[len(a) :]
    raise CheckpointError(f"unknown {what} key {rest!r}")


def _inv(table: Mapping[str, str]) -> dict[str, str]:
    return {v: k for k, v in table.items()}


def _unet_res_to_sgm(rest: str) -> str:
    if rest.startswith("spatial_res_block."):
        return _swap_prefix(rest[len("spatial_res_block.") :], _RES, "UNet resnet")
    if rest.startswith("temporal_res_block."):
        return "time_stack." + _swap_prefix(rest[len("temporal_res_block.") :], _RES, "UNet resnet")
    if rest.startswith("time_mixer."):
        return rest
    raise CheckpointError(f"unknown UNet resnet key {rest!r}")


def _unet_res_from_sgm(rest: str) -> str:
    if rest.startswith("time_stack."):
        return "temporal_res_block." + _swap_prefix(rest[len("time_stack.") :], _inv(_RES), "UNet resnet")
    if rest.startswith("time_mixer."):
        return rest
    return "spatial_res_block." + _swap_prefix(rest, _inv(_RES), "UNet resnet")


def _unet_attn_to_sgm(rest: str) -> str:
    if rest.startswith("temporal_transformer_blocks."):
        return "time_stack." + rest[len("temporal_transformer_blocks.") :]
    if rest.startswith("time_pos_embed.linear_1."):
        return "time_pos_embed.0." + rest[len("time_pos_embed.linear_1.") :]
    if rest.startswith("time_pos_embed.linear_2."):
        return "time_pos_embed.2." + rest[len("time_pos_embed.linear_2.") :]
    return rest


def _unet_attn_from_sgm(rest: str) -> str:
    if rest.startswith("time_stack."):
        return "temporal_transformer_blocks." + rest[len("time_stack.") :]
    if rest.startswith("time_pos_embed.0."):
        return "time_pos_embed.linear_1." + rest[len("time_pos_embed.0.") :]
    if rest.startswith("time_pos_embed.2."):
        return "time_pos_embed.linear_2." + rest[len("time_pos_embed.2.") :]
    return rest


_D_BLOCK = re.compile(
    r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)$"
)
_D_MID = re.compile(r"^mid_block\.(resnets|attentions)\.(\d+)\.(.+)$")
_S_BLOCK = re.compile(r"^(input_blocks|output_blocks)\.(\d+)\.(\d+)\.(.+)$")
_S_MID = re.compile(r"^middle_block\.(\d+)\.(.+)$")


def unet_diffusers_to_sgm_key(
    key: str, layers_per_block: int, up_blocks_with_attention: Iterable[int], *,
    res_tail: Callable[[str], str] = _unet_res_to_sgm, attn_tail: Callable[[str], str] = _unet_attn_to_sgm,
) -> str:
    """The sgm ``VideoUNet`` name of a diffusers ``UNetSpatioTemporalConditionModel`` key.

    ``res_tail`` / ``attn_tail`` rename what follows a resnet's / a transformer's prefix (SV4D's blocks
    share the UNet's layout but not its inner names, see ``sv4d_keymap``)."""
    L = layers_per_block
    for a, b in _UNET_TOP.items():
        if key.startswith(a):
            return b + key[len(a) :]
    if m := _D_MID.match(key):
        kind, j, rest = m.group(1), int(m.group(2)), m.group(3)
        if kind == "attentions" and j == 0:
            return "middle_block.1." + attn_tail(rest)
        if kind == "resnets" and j in (0, 1):
            return f"middle_block.{2 * j}." + res_tail(rest)
    elif m := _D_BLOCK.match(key):
        side, i, kind, j, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
        if side == "down_blocks":
            if kind == "resnets":
                return f"input_blocks.{1 + i * (L + 1) + j}.0." + res_tail(rest)
            if kind == "attentions":
                return f"input_blocks.{1 + i * (L + 1) + j}.1." + attn_tail(rest)
            if kind == "downsamplers" and j == 0 and rest.startswith("conv."):
                return f"input_blocks.{(i + 1) * (L + 1)}.0.op." + rest[len("conv.") :]
        else:
            if kind == "resnets":
                return f"output_blocks.{i * (L + 1) + j}.0." + res_tail(rest)
            if kind == "attentions":
                return f"output_blocks.{i * (L + 1) + j}.1." + attn_tail(rest)
            if kind == "upsamplers" and j == 0 and rest.startswith("conv."):
                slot = 2 if i in set(up_blocks_with_attention) else 1
                return f"output_blocks.{i * (L + 1) + L}.{slot}.conv." + rest[len("conv.") :]
    raise CheckpointError(f"unet: no sgm name for diffusers key {key!r}")


def unet_sgm_to_diffusers_key(
    key: str, layers_per_block: int, *,
    res_tail: Callable[[str], str] = _unet_res_from_sgm, attn_tail: Callable[[str], str] = _unet_attn_from_sgm,
) -> str:
    """The diffusers name of an sgm ``VideoUNet`` key (without ``model.diffusion_model.``); ``res_tail`` /
    ``attn_tail`` as in :func:`unet_diffusers_to_sgm_key`."""
    L = layers_per_block
    for a, b in _UNET_TOP.items():
        if key.startswith(b):
            return a + key[len(b) :]
    if m := _S_MID.match(key):
        n, rest = int(m.group(1)), m.group(2)
        if n == 1:
            return "mid_block.attentions.0." + attn_tail(rest)
        if n in (0, 2):
            return f"mid_block.resnets.{n // 2}." + res_tail(rest)
    elif m := _S_BLOCK.match(key):
        side, n, slot, rest = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
        if side == "input_blocks" and n >= 1:
            i, j = divmod(n - 1, L + 1)
            if j == L and slot == 0 and rest.startswith("op."):
                return f"down_blocks.{i}.downsamplers.0.conv." + rest[len("op.") :]
            if j < L and slot == 0:
                return f"down_blocks.{i}.resnets.{j}." + res_tail(rest)
            if j < L and slot == 1:
                return f"down_blocks.{i}.attentions.{j}." + attn_tail(rest)
        elif side == "output_blocks":
            i, j = divmod(n, L + 1)
            if slot == 0:
                return f"up_blocks.{i}.resnets.{j}." + res_tail(rest)
            if slot in (1, 2) and j == L and rest.startswith("conv."):
                return f"up_blocks.{i}.upsamplers.0.conv." + rest[len("conv.") :]
            if slot == 1:
                return f"up_blocks.{i}.attentions.{j}." + attn_tail(rest)
    raise CheckpointError(f"unet: unknown sgm key {key!r}")


def _unet_layout_from_diffusers(keys: Iterable[str]) -> tuple[int, set[int]]:
    resnets, up_attn = set(), set()
    for k in keys:
        if m := re.match(r"^down_blocks\.0\.resnets\.(\d+)\.", k):
            resnets.add(int(m.group(1)))
        elif m := re.match(r"^up_blocks\.(\d+)\.attentions\.", k):
            up_attn.add(int(m.group(1)))
    if not resnets:
        raise CheckpointError("unet: no down_blocks.0.resnets.* tensors; cannot tell layers_per_block")
    return max(resnets) + 1, up_attn


def _unet_layers_from_sgm(keys: Iterable[str]) -> int:
    ops, outs = set(), set()
    for k in keys:
        if m := re.match(r"^input_blocks\.(\d+)\.0\.op\.", k):
            ops.add(int(m.group(1)))
        elif m := re.match(r"^output_blocks\.(\d+)\.", k):
            outs.add(int(m.group(1)))
    if ops:  # the first downsampler sits right after the first level's resblocks
        return min(ops) - 1
    if outs:  # a single level: output blocks are its layers_per_block + 1 resblocks
        return max(outs)
    raise CheckpointError("unet: no input_blocks.*.0.op / output_blocks.* tensors; cannot tell the layout")


def unet_to_sgm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a diffusers UNet state dict to sgm ``VideoUNet`` names (no prefix)."""
    L, up_attn = _unet_layout_from_diffusers(state_dict)
    return {unet_diffusers_to_sgm_key(k, L, up_attn): v for k, v in state_dict.items()}


def unet_from_sgm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an sgm ``VideoUNet`` state dict (no prefix) to diffusers names."""
    L = _unet_layers_from_sgm(state_dict)
    out: dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        name = unet_sgm_to_diffusers_key(k, L)
        if re.search(r"\.proj_(in|out)\.weight$", name) and v.ndim == 4:
            v = v.reshape(v.shape[0], v.shape[1])  # 1x1-conv transformer projection -> linear
        if name in out:
            raise CheckpointError(f"unet: two sgm keys map to {name!r}")
        out[name] = v
    return out


# ------------------------------------------------------------------------------------------------
# VAE

_VAE_RES = {"conv_shortcut.": "nin_shortcut."}  # norm1/conv1/norm2/conv2 keep their names
_VAE_TIME = {  # diffusers temporal_res_block -> sgm VideoResBlock.time_stack (a 3D openaimodel ResBlock)
    "norm1.": "time_stack.in_layers.0.",
    "conv1.": "time_stack.in_layers.2.",
    "norm2.": "time_stack.out_layers.0.",
    "conv2.": "time_stack.out_layers.3.",
}
_VAE_ATTN = {
    "group_norm.": "norm.",
    "to_q.": "q.",
    "to_k.": "k.",
    "to_v.": "v.",
    "to_out.0.": "proj_out.",
}
_PLAIN_RES = ("norm1.", "conv1.", "norm2.", "conv2.")


def _vae_res_to_sgm(rest: str) -> str:
    if rest.startswith("spatial_res_block."):
        rest = rest[len("spatial_res_block.") :]
    elif rest.startswith("temporal_res_block."):
        return _swap_prefix(rest[len("temporal_res_block.") :], _VAE_TIME, "VAE resnet")
    elif rest == "time_mixer.mix_factor":
        return "mix_factor"
    if rest.startswith(_PLAIN_RES):
        return rest
    return _swap_prefix(rest, _VAE_RES, "VAE resnet")


def _vae_res_from_sgm(rest: str, temporal: bool) -> str:
    if rest.startswith("time_stack."):
        return "temporal_res_block." + _swap_prefix(rest, _inv(_VAE_TIME), "VAE resnet")
    if rest == "mix_factor":
        return "time_mixer.mix_factor"
    if not rest.startswith(_PLAIN_RES):
        rest = _swap_prefix(rest, _inv(_VAE_RES), "VAE resnet")
    return ("spatial_res_block." if temporal else "") + rest


def vae_diffusers_to_sgm_key(key: str, num_levels: int) -> str:
    """The sgm name (``encoder.*`` / ``decoder.*`` / ``quant_conv.*``) of a diffusers VAE key."""
    n = num_levels
    side, _, rest = key.partition(".")
    if key.startswith("quant_conv."):
        return key
    if side in ("encoder", "decoder"):
        if rest.startswith(("conv_in.", "conv_out.")):
            return key
        if rest.startswith("conv_norm_out."):
            return f"{side}.norm_out." + rest[len("conv_norm_out.") :]
        if side == "decoder" and rest.startswith("time_conv_out."):
            return "decoder.conv_out.time_mix_conv." + rest[len("time_conv_out.") :]
        if m := re.match(r"^mid_block\.(resnets|attentions)\.(\d+)\.(.+)$", rest):
            kind, j, r = m.group(1), int(m.group(2)), m.group(3)
            if kind == "attentions" and j == 0:
                return f"{side}.mid.attn_1." + _swap_prefix(r, _VAE_ATTN, "VAE attention")
            if kind == "resnets":
                return f"{side}.mid.block_{j + 1}." + _vae_res_to_sgm(r)
        key_re = r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.+)$"
        if m := re.match(key_re, rest):
            blocks, i, kind, j, r = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
            if side == "encoder" and blocks == "down_blocks":
                if kind == "resnets":
                    return f"encoder.down.{i}.block.{j}." + _vae_res_to_sgm(r)
                if kind == "downsamplers" and j == 0 and r.startswith("conv."):
                    return f"encoder.down.{i}.downsample.{r}"
            if side == "decoder" and blocks == "up_blocks":
                if kind == "resnets":  # sgm builds decoder levels bottom-up and stores them reversed
                    return f"decoder.up.{n - 1 - i}.block.{j}." + _vae_res_to_sgm(r)
                if kind == "upsamplers" and j == 0 and r.startswith("conv."):
                    return f"decoder.up.{n - 1 - i}.upsample.{r}"
    raise CheckpointError(f"vae: no sgm name for diffusers key {key!r}")


def vae_sgm_to_diffusers_key(key: str, num_levels: int, temporal: bool = True) -> str:
    """The diffusers name of an sgm VAE key; ``temporal`` picks SVD's VideoDecoder resnet naming."""
    n = num_levels
    side, _, rest = key.partition(".")
    if key.startswith("quant_conv."):
        return key
    if side in ("encoder", "decoder"):
        temporal_here = temporal and side == "decoder"
        if side == "decoder" and rest.startswith("conv_out.time_mix_conv."):
            return "decoder.time_conv_out." + rest[len("conv_out.time_mix_conv.") :]
        if rest.startswith(("conv_in.", "conv_out.")):
            return key
        if rest.startswith("norm_out."):
            return f"{side}.conv_norm_out." + rest[len("norm_out.") :]
        if rest.startswith("mid.attn_1."):
            r = rest[len("mid.attn_1.") :]
            return f"{side}.mid_block.attentions.0." + _swap_prefix(r, _inv(_VAE_ATTN), "VAE attention")
        if m := re.match(r"^mid\.block_(\d+)\.(.+)$", rest):
            return f"{side}.mid_block.resnets.{int(m.group(1)) - 1}." + _vae_res_from_sgm(
                m.group(2), temporal_here
            )
        if m := re.match(r"^(down|up)\.(\d+)\.(block\.(\d+)|downsample|upsample)\.(.+)$", rest):
            lvl, i, what, j, r = m.group(1), int(m.group(2)), m.group(3), m.group(4), m.group(5)
            if side == "encoder" and lvl == "down":
                if j is not None:
                    return f"encoder.down_blocks.{i}.resnets.{j}." + _vae_res_from_sgm(r, False)
                if what == "downsample" and r.startswith("conv."):
                    return f"encoder.down_blocks.{i}.downsamplers.0.{r}"
            if side == "decoder" and lvl == "up":
                if j is not None:
                    return f"decoder.up_blocks.{n - 1 - i}.resnets.{j}." + _vae_res_from_sgm(r, temporal_here)
                if what == "upsample" and r.startswith("conv."):
                    return f"decoder.up_blocks.{n - 1 - i}.upsamplers.0.{r}"
    raise CheckpointError(f"vae: unknown sgm key {key!r}")


def _is_vae_attn_weight(diffusers_key: str) -> bool:
    return bool(re.search(r"mid_block\.attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight$", diffusers_key))


def _count_levels(keys: Iterable[str], pattern: str) -> int:
    found = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
    if not found:
        raise CheckpointError(f"vae: no tensors match {pattern!r}; cannot tell the number of levels")
    return max(found) + 1


def vae_to_sgm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a diffusers VAE state dict to sgm names; attention linears become 1x1 convolutions."""
    n = _count_levels(state_dict, r"^decoder\.up_blocks\.(\d+)\.")
    out = {}
    for k, v in state_dict.items():
        if _is_vae_attn_weight(k) and v.ndim == 2:
            v = v.reshape(*v.shape, 1, 1)
        out[vae_diffusers_to_sgm_key(k, n)] = v
    return out


def vae_from_sgm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an sgm VAE state dict (``encoder.*``, ``decoder.*``, ``quant_conv.*``) to diffusers names.

    The decoder is SVD's temporal ``VideoDecoder`` if it has ``time_stack`` / ``time_mix_conv`` tensors,
    otherwise a plain per-frame SD decoder (SV3D), named as diffusers' ``AutoencoderKL`` decoder.
    """
    n = _count_levels(state_dict, r"^decoder\.up\.(\d+)\.")
    temporal = any(".time_stack." in k or ".time_mix_conv." in k for k in state_dict)
    out: dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        name = vae_sgm_to_diffusers_key(k, n, temporal)
        if _is_vae_attn_weight(name) and v.ndim == 4:
            v = v.reshape(v.shape[0], v.shape[1])
        if name in out:
            raise CheckpointError(f"vae: two sgm keys map to {name!r}")
        out[name] = v
    return out
