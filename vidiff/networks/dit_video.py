"""A Wan-architecture video DiT under the image-to-video conditioning of the UNet, for training from scratch.

:class:`VideoDiT` is :class:`~vidiff.networks.dit_wan.WanTransformer3D` (Wan team 2025, Sec. 3.2: 3D patch
embedding, full 3D self-attention with 3D RoPE, adaLN-single, q/k RMSNorm, cross-attention) fed the same
:class:`~vidiff.conditioning.Cond` the spatio-temporal UNet takes, so the two backbones train on the same
data pipeline (``vidiff.training``) and sample through the same image-to-video pipeline:

* ``cond.concat`` (the conditioning image's latent, per video or per frame) is appended to the noisy
  latent on the channel axis, as Wan 2.x I2V appends its first-frame latent (``in_channels`` counts both);
* ``cond.crossattn (B, N, D)`` and the micro-conditioning ``cond.vector (B, k·D)`` (SVD's sinusoids of
  fps − 1, motion bucket and noise-augmentation strength, ``D = addition_time_embed_dim`` each) are the
  cross-attention context: the vector is split into ``k`` tokens of width ``D`` and appended to the
  cross-attention tokens (the "text" of Wan's cross-attention), so ``text_dim = D``.

Any number of frames divisible by the temporal patch works at sampling time: the rotary angles are computed
for the grid given (3D RoPE extrapolation beyond the trained frame count).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

from vidiff.networks.dit_wan import WanConfig, WanTransformer3D
from vidiff.utils import dataclass_from_config

_BOOKKEEPING = frozenset({"_class_name", "_diffusers_version", "_name_or_path"})
CLASS_NAME = "VidiffVideoDiT"


@dataclass(frozen=True)
class VideoDiTConfig:
    """Sizes of a :class:`VideoDiT`. ``in_channels`` = latent + concat channels, ``out_channels`` = latent
    channels; ``addition_time_embed_dim`` is the width of each micro-conditioning token and of the
    cross-attention tokens (``cross_attention_dim``); ``num_frames`` the trained frame count (a default, not
    a limit). The rest are :class:`~vidiff.networks.dit_wan.WanConfig`'s."""

    in_channels: int
    out_channels: int
    num_frames: int = 14
    addition_time_embed_dim: int = 64
    patch_size: tuple[int, int, int] = (1, 2, 2)
    num_attention_heads: int = 6
    attention_head_dim: int = 32
    ffn_dim: int = 768
    num_layers: int = 8
    freq_dim: int = 256

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", tuple(self.patch_size))
        for name in ("in_channels", "out_channels", "num_frames", "addition_time_embed_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"VideoDiTConfig.{name} must be a positive int, got {value!r}")
        self.wan()  # WanConfig validates the transformer's own sizes, naming the field

    @property
    def cross_attention_dim(self) -> int:
        """Width of ``cond.crossattn`` tokens (the same as each micro-conditioning token)."""
        return self.addition_time_embed_dim

    def wan(self) -> WanConfig:
        """The transformer's :class:`WanConfig` (no image cross-attention: the image comes in as concat)."""
        return WanConfig(patch_size=self.patch_size, num_attention_heads=self.num_attention_heads,
                         attention_head_dim=self.attention_head_dim, in_channels=self.in_channels,
                         out_channels=self.out_channels, text_dim=self.addition_time_embed_dim,
                         freq_dim=self.freq_dim, ffn_dim=self.ffn_dim, num_layers=self.num_layers)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["patch_size"] = list(self.patch_size)
        return d

    def to_diffusers(self) -> dict[str, Any]:
        """``config.json`` of an exported model (``_class_name`` names this class; diffusers has none)."""
        return {"_class_name": CLASS_NAME, **self.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VideoDiTConfig:
        """From a ``config.json`` dict (bookkeeping keys dropped; unknown keys are an error)."""
        return dataclass_from_config(cls, d, _BOOKKEEPING, CLASS_NAME)

    def replace(self, **changes: Any) -> VideoDiTConfig:
        return replace(self, **changes)


@dataclass
class _WanInputs:
    """What :class:`WanTransformer3D` reads from a conditioning object."""

    crossattn: torch.Tensor
    concat: torch.Tensor | None = None


class VideoDiT(nn.Module):
    """``F(x (B, T, C, H, W), c_noise (B,) | (B, T), cond) -> (B, T, C_out, H, W)`` with Wan's transformer.

    Initialised for training from scratch as DiT (Peebles & Xie 2023, Sec. 3.2): Xavier-uniform linear
    layers, and a zero output projection so the untrained network predicts 0.
    """

    def __init__(self, config: VideoDiTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = WanTransformer3D(config.wan())
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.transformer.proj_out.weight)
        nn.init.zeros_(self.transformer.proj_out.bias)

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block's activations in backward."""
        self.transformer.enable_gradient_checkpointing(enabled)

    def context(self, cond: Any, batch: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Cross-attention context ``(B, N + k, D)``: ``cond.crossattn`` then ``cond.vector`` split into
        ``k`` tokens of ``D = addition_time_embed_dim`` (a zero token when the cond has neither)."""
        d = self.config.addition_time_embed_dim
        tokens = []
        crossattn = getattr(cond, "crossattn", None)
        if crossattn is not None:
            if crossattn.shape[-1] != d:
                raise ValueError(f"cond.crossattn tokens have width {crossattn.shape[-1]}; this DiT takes "
                                 f"addition_time_embed_dim={d}")
            tokens.append(crossattn.to(dtype))
        vector = getattr(cond, "vector", None)
        if vector is not None:
            if vector.ndim != 2 or vector.shape[-1] % d:
                raise ValueError(f"cond.vector must be (B, k·{d}) (k micro-conditioning tokens), got "
                                 f"{tuple(vector.shape)}")
            tokens.append(vector.to(dtype).unflatten(-1, (-1, d)))
        if not tokens:
            return torch.zeros(batch, 1, d, device=device, dtype=dtype)
        return torch.cat(tokens, dim=1)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: Any) -> torch.Tensor:
        """``x (B, T, C, H, W)`` noisy latents, ``c_noise`` Wan's timestep ``1000·t`` per video or frame."""
        context = self.context(cond, x.shape[0], x.device, x.dtype)  # (B, N + k, D)
        return self.transformer(x, c_noise, _WanInputs(context, getattr(cond, "concat", None)))


def count_dit_parameters(config: VideoDiTConfig) -> int:
    """Parameters of a :class:`VideoDiT` of ``config`` (built on the meta device: no memory, no time)."""
    with torch.device("meta"):
        return sum(p.numel() for p in WanTransformer3D(config.wan()).parameters())
