"""Configuration of the SV4D / SV4D 2.0 multi-view video UNet and its named presets.

The field names are those of the ``network_config`` of Stability's ``sv4d.yaml`` / ``sv4d2.yaml`` /
``sv4d2_8views.yaml`` (``SpatialUNetModelWithTime``), so each preset reads next to its yaml; the fields
those files fix for every released model (linear transformer projections, ``transformer_depth`` 1,
``extra_ff_mix_layer``, spatial context, a (3, 1, 1) temporal kernel, ``learned_with_images`` merging with
factors 0 / 0.5, non-legacy mixers) are built in. ``num_times`` and ``num_views`` are only the default
window of the pipelines: the network reads T from the CLIP tokens and V from the reference-view latents.

SV4D: Xie et al. 2024, "SV4D: Dynamic 3D Content Generation with Multi-Frame and Multi-View Consistency".
SV4D 2.0: Yao et al. 2025, "SV4D 2.0: Enhancing Spatio-Temporal Consistency in Multi-View Video Diffusion".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

__all__ = ["SV4D_PRESETS", "SV4DConfig"]


@dataclass(frozen=True)
class SV4DConfig:
    """Hyper-parameters of :class:`vidiff.networks.sv4d.SV4DUNet` (defaults: SV4D, 5 times x 8 views).

    - ``in_channels``: noisy latent + concatenated input-frame latent (4 + 4);
    - ``model_channels`` x ``channel_mult``: widths of the levels; ``attention_resolutions``: the
      downsampling factors 2^level of the levels with attention (the middle block always has it);
    - ``num_head_channels``: width of each attention head;
    - ``context_dim``: CLIP token width; ``motion_context_dim``: the reference-view latent channels the
      motion blocks cross-attend to, one pixel per token;
    - ``adm_in_channels``: width of the per-frame vector [cond σ 256 | polar 512 | azimuth 512];
    - ``use_camera_emb`` (SV4D 2.0): the view blocks' position embedding reads each view's timestep +
      vector embedding (so ``adm_in_channels`` must equal the embedding width ``4 · model_channels``)
      instead of a sinusoid of the view index;
    - ``use_3d_attention`` (SV4D 2.0, 4 views): the view blocks see sgm's reshaped tensor (see ``sv4d.py``);
    - ``separate_motion_merge_factor`` (SV4D 2.0): the motion blocks have their own blend factor.
    """

    in_channels: int = 8
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    attention_resolutions: tuple[int, ...] = (4, 2, 1)
    num_res_blocks: int = 2
    num_head_channels: int = 64
    context_dim: int = 1024
    motion_context_dim: int = 4
    adm_in_channels: int = 1280
    num_times: int = 5
    num_views: int = 8
    use_camera_emb: bool = False
    use_3d_attention: bool = False
    separate_motion_merge_factor: bool = False
    norm_num_groups: int = 32

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):  # JSON gives lists; keep the config hashable
                object.__setattr__(self, f.name, value := tuple(value))
            if f.type == "bool":
                if not isinstance(value, bool):
                    raise ValueError(f"SV4DConfig.{f.name} must be a bool, got {value!r}")
            elif isinstance(value, tuple):
                if any(not _positive_int(m) for m in value) or (not value and f.name == "channel_mult"):
                    raise ValueError(f"SV4DConfig.{f.name} must be a tuple of positive ints, got {value!r}")
            elif not _positive_int(value):
                raise ValueError(f"SV4DConfig.{f.name} must be a positive int, got {value!r}")
        for c in self.block_out_channels:
            if c % self.norm_num_groups or c % self.num_head_channels:
                raise ValueError(f"SV4DConfig.channel_mult: level width {c} must be a multiple of norm_num_groups "
                                 f"({self.norm_num_groups}) and num_head_channels ({self.num_head_channels})")
        if self.use_camera_emb and self.adm_in_channels != self.time_embed_dim:
            raise ValueError(f"SV4DConfig.adm_in_channels ({self.adm_in_channels}) must equal 4 · model_channels "
                             f"({self.time_embed_dim}) with use_camera_emb: the view embedding reads the "
                             "timestep + vector embedding through a layer sized adm_in_channels")

    def has_attention(self, level: int) -> bool:
        """Whether resolution level ``level`` (0: full size) has transformers after its resnets."""
        return 2**level in self.attention_resolutions

    @property
    def block_out_channels(self) -> tuple[int, ...]:
        return tuple(self.model_channels * m for m in self.channel_mult)

    @property
    def time_embed_dim(self) -> int:
        """Width of the noise-level + vector embedding added in every resnet (4 × ``model_channels``)."""
        return 4 * self.model_channels

    @property
    def num_frames(self) -> int:
        """Latent frames of the default window, flattened time-major (frame ``t·V + v``)."""
        return self.num_times * self.num_views

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> SV4DConfig:
        """Read :meth:`to_dict`'s output; an unknown key is an error naming it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown SV4D config key(s) {unknown}; known: {sorted(known)}")
        return cls(**config)

    def replace(self, **changes: Any) -> SV4DConfig:
        return replace(self, **changes)

    @classmethod
    def from_state_dict(cls, shapes: Mapping[str, Any], **hidden: Any) -> SV4DConfig:
        """The config implied by the tensor shapes of an :class:`SV4DUNet` state dict (vidiff names; values
        are tensors or shapes). What shapes cannot tell comes from ``hidden``: ``use_3d_attention`` (sv4d2 vs
        sv4d2_8views), ``num_head_channels`` (64 in every release), ``num_times`` / ``num_views``."""

        def dim(name: str, axis: int) -> int:
            if name not in shapes:
                raise ValueError(f"SV4D state dict has no tensor {name!r}; cannot infer its config")
            return int(tuple(shapes[name].shape if hasattr(shapes[name], "shape") else shapes[name])[axis])

        levels = 1 + max(int(k.split(".")[1]) for k in shapes if k.startswith("down_blocks."))
        base = dim("conv_in.weight", 0)
        mid = "mid_block.attentions.0."
        found = dict(
            in_channels=dim("conv_in.weight", 1), out_channels=dim("conv_out.weight", 0), model_channels=base,
            channel_mult=tuple(dim(f"down_blocks.{i}.resnets.0.spatial_res_block.conv1.weight", 0) // base
                               for i in range(levels)),
            attention_resolutions=tuple(2**i for i in reversed(range(levels))  # the yamls' order: [4, 2, 1]
                                        if f"down_blocks.{i}.attentions.0.proj_in.weight" in shapes),
            num_res_blocks=len({k.split(".")[3] for k in shapes if k.startswith("down_blocks.0.resnets.")}),
            context_dim=dim(mid + "transformer_blocks.0.attn2.to_k.weight", 1),
            motion_context_dim=dim(mid + "motion_blocks.0.attn2.to_k.weight", 1),
            adm_in_channels=dim("add_embedding.linear_1.weight", 1),
            separate_motion_merge_factor=mid + "motion_mixer.mix_factor" in shapes,
        )
        # The view embedding reads adm_in_channels (camera) or the level's width (view index): visible in any
        # transformer whose width differs from adm_in_channels.
        telling = [k[: -len("view_pos_embed.linear_1.weight")] for k in shapes
                   if k.endswith("view_pos_embed.linear_1.weight")
                   and dim(k.replace("view_pos_embed.linear_1", "proj_in"), 0) != found["adm_in_channels"]]
        if telling:
            found["use_camera_emb"] = dim(telling[0] + "view_pos_embed.linear_1.weight", 1) != dim(
                telling[0] + "proj_in.weight", 0)
        elif "use_camera_emb" not in hidden:
            raise ValueError("SV4D state dict: every transformer is adm_in_channels wide, so use_camera_emb "
                             "cannot be told from the shapes; pass it")
        return cls(**{**found, **hidden})


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


_SV4D2 = SV4DConfig(num_times=12, num_views=4, use_camera_emb=True, use_3d_attention=True,
                    separate_motion_merge_factor=True)
# Test sizes: two levels of 32 channels, attention in the middle block only (its weights stay small), heads of
# 16; adm = 4 · 32 so the camera embedding fits.
_TINY = SV4DConfig(model_channels=32, channel_mult=(1, 1), attention_resolutions=(), num_res_blocks=1,
                   num_head_channels=16, context_dim=32,
                   adm_in_channels=128, num_times=3, num_views=4)

SV4D_PRESETS: dict[str, SV4DConfig] = {
    "sv4d": SV4DConfig(),  # sv4d.yaml: N_TIME 5, N_VIEW 8
    "sv4d2": _SV4D2,  # sv4d2.yaml: N_TIME 12, N_VIEW 4
    "sv4d2_8views": _SV4D2.replace(num_times=5, num_views=8, use_3d_attention=False),  # sv4d2_8views.yaml
    "tiny_sv4d": _TINY.replace(num_views=8),
    "tiny_sv4d2": _TINY.replace(use_camera_emb=True, use_3d_attention=True, separate_motion_merge_factor=True),
    "tiny_sv4d2_8views": _TINY.replace(num_views=8, use_camera_emb=True, separate_motion_merge_factor=True),
}
