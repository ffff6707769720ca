"""Configuration of the Wan 2.x video diffusion transformer and its named presets.

``WanConfig`` uses the vocabulary of diffusers' ``WanTransformer3DModel`` ``config.json``, so a diffusers
``transformer`` folder's config loads as is. The presets are the released checkpoints' shapes (Wan team
2025, "Wan: Open and Advanced Large-Scale Video Generative Models", Table 1) and tiny ones for tests.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from vidiff.utils import dataclass_from_config

QK_NORMS = ("rms_norm_across_heads",)
# config.json keys of diffusers that do not describe the network.
_BOOKKEEPING = frozenset({"_class_name", "_diffusers_version", "_name_or_path", "window_size", "add_img_emb"})


@dataclass(frozen=True)
class WanConfig:
    """Hyper-parameters of :class:`vidiff.networks.dit_wan.WanTransformer3D` (defaults: Wan 2.1 T2V 14B).

    ``in_channels`` counts the noisy latent plus any channels appended from ``cond.concat`` (Wan 2.1/2.2
    I2V: 16 noise + 4 first-frame mask + 16 conditioning latent = 36). ``image_dim`` is set for Wan 2.1
    I2V/FLF2V only (CLIP ViT-H/14 penultimate tokens, 1280-d); ``added_kv_proj_dim`` is then the model
    width. ``pos_embed_seq_len`` is FLF2V's learned position table over the two images' 2·257 tokens.
    ``rope_max_seq_len`` is kept for config compatibility: the rotary angles are computed for any length.
    """

    patch_size: tuple[int, int, int] = (1, 2, 2)
    num_attention_heads: int = 40
    attention_head_dim: int = 128
    in_channels: int = 16
    out_channels: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    ffn_dim: int = 13824
    num_layers: int = 40
    cross_attn_norm: bool = True
    qk_norm: str | None = "rms_norm_across_heads"
    eps: float = 1e-6
    image_dim: int | None = None
    added_kv_proj_dim: int | None = None
    rope_max_seq_len: int = 1024
    pos_embed_seq_len: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", tuple(self.patch_size))
        if len(self.patch_size) != 3 or any(not isinstance(p, int) or p < 1 for p in self.patch_size):
            raise ValueError(f"WanConfig.patch_size must be three positive ints, got {self.patch_size!r}")
        for name in ("num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "text_dim",
                     "freq_dim", "ffn_dim", "num_layers", "rope_max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"WanConfig.{name} must be a positive int, got {value!r}")
        if self.attention_head_dim % 2 or (self.attention_head_dim // 6) < 1:
            raise ValueError(f"WanConfig.attention_head_dim must be even and >= 6 (3D RoPE splits it in three), "
                             f"got {self.attention_head_dim}")
        if self.qk_norm not in (None, *QK_NORMS):
            raise ValueError(f"WanConfig.qk_norm must be one of {QK_NORMS} or None, got {self.qk_norm!r}")
        if (self.image_dim is None) != (self.added_kv_proj_dim is None):
            raise ValueError("WanConfig.image_dim and added_kv_proj_dim must be both set (Wan 2.1 I2V) or both "
                             f"None, got {self.image_dim!r} and {self.added_kv_proj_dim!r}")
        if self.pos_embed_seq_len is not None and self.image_dim is None:
            raise ValueError("WanConfig.pos_embed_seq_len needs image_dim (FLF2V image tokens)")

    @property
    def inner_dim(self) -> int:
        """Model width ``heads · head_dim``."""
        return self.num_attention_heads * self.attention_head_dim

    @property
    def has_image_attention(self) -> bool:
        return self.image_dim is not None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["patch_size"] = list(self.patch_size)
        return d

    def to_diffusers(self) -> dict[str, Any]:
        """The ``config.json`` diffusers' ``WanTransformer3DModel`` reads."""
        return {"_class_name": "WanTransformer3DModel", **self.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WanConfig:
        """From a vidiff or diffusers config dict (bookkeeping keys dropped; unknown keys are an error)."""
        return dataclass_from_config(cls, d, _BOOKKEEPING, "WanTransformer3DModel")

    def replace(self, **changes: Any) -> WanConfig:
        return replace(self, **changes)


_T2V_14B = WanConfig()
_I2V_14B = _T2V_14B.replace(in_channels=36, image_dim=1280, added_kv_proj_dim=5120)

WAN_PRESETS: dict[str, WanConfig] = {
    "wan2.1-t2v-1.3b": WanConfig(num_attention_heads=12, ffn_dim=8960, num_layers=30),
    "wan2.1-t2v-14b": _T2V_14B,
    "wan2.1-i2v-14b": _I2V_14B,
    "wan2.1-flf2v-14b": _I2V_14B.replace(pos_embed_seq_len=2 * 257),
    # Wan 2.2 A14B: two experts of this shape (high-noise ``transformer``, low-noise ``transformer_2``).
    "wan2.2-t2v-a14b": _T2V_14B,
    "wan2.2-i2v-a14b": _T2V_14B.replace(in_channels=36),
    # Wan 2.2 TI2V-5B: 48-channel latents of the 16x16x4 VAE; per-frame timesteps for the image frame.
    "wan2.2-ti2v-5b": WanConfig(num_attention_heads=24, ffn_dim=14336, num_layers=30, in_channels=48,
                                out_channels=48),
    # Tiny shapes for tests and from-scratch CPU training.
    "tiny-t2v": WanConfig(num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
                          text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2),
    "tiny-i2v": WanConfig(num_attention_heads=2, attention_head_dim=12, in_channels=12, out_channels=4,
                          text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2, image_dim=8, added_kv_proj_dim=24),
}
