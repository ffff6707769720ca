"""Configuration of the spatio-temporal UNet (SVD, SVD-XT, SV3D) and its named presets.

``UNetConfig`` uses diffusers' vocabulary (the fields of ``UNetSpatioTemporalConditionModel``'s
``config.json``) plus two fields diffusers hard-codes: ``norm_num_groups`` and ``resnet_eps_policy``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

EPS_POLICIES = ("diffusers", "sgm")

# Keys of a diffusers config.json that describe bookkeeping, not the network.
_DIFFUSERS_BOOKKEEPING = frozenset({"sample_size"})
# diffusers' block layout for this model: attention everywhere except the deepest level.
_DOWN_ATTN, _DOWN_PLAIN = "CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"
_UP_ATTN, _UP_PLAIN = "CrossAttnUpBlockSpatioTemporal", "UpBlockSpatioTemporal"
# Fields diffusers does not have; written to config.json only when they differ from its behaviour.
_VIDIFF_ONLY_DEFAULTS: dict[str, Any] = {"norm_num_groups": 32, "resnet_eps_policy": "diffusers"}


def _down_block_types(levels: int) -> tuple[str, ...]:
    return (_DOWN_ATTN,) * (levels - 1) + (_DOWN_PLAIN,)


def _up_block_types(levels: int) -> tuple[str, ...]:
    return (_UP_PLAIN,) + (_UP_ATTN,) * (levels - 1)


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


@dataclass(frozen=True)
class UNetConfig:
    """Hyper-parameters of ``UNetSpatioTemporal`` (Blattmann et al. 2023, "Stable Video Diffusion").

    Defaults are SVD's. ``num_frames`` is only the default clip length of pipelines: the network
    accepts any frame count. ``addition_time_embed_dim`` documents the width of each sinusoid the
    conditioner concatenates into the ``vector`` input (whose total width is
    ``projection_class_embeddings_input_dim``); the network itself receives already-embedded vectors.
    ``resnet_eps_policy``: ``"diffusers"`` gives resnet GroupNorms eps 1e-6 in the down levels with
    attention and in all up levels, 1e-5 in the deepest down level and the mid block (diffusers'
    ``UNetSpatioTemporalConditionModel``); ``"sgm"`` uses 1e-5 everywhere, as Stability's original code.
    Per-level fields take an int (every level) or a tuple with one entry per level.
    """

    in_channels: int = 8
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int | tuple[int, ...] = 2
    num_attention_heads: int | tuple[int, ...] = (5, 10, 20, 20)
    cross_attention_dim: int = 1024
    transformer_layers_per_block: int | tuple[int, ...] = 1
    addition_time_embed_dim: int = 256
    projection_class_embeddings_input_dim: int = 768
    num_frames: int = 25
    norm_num_groups: int = 32
    resnet_eps_policy: str = "diffusers"

    def __post_init__(self) -> None:
        for f in fields(self):  # JSON gives lists; keep the config hashable and comparable
            object.__setattr__(self, f.name, _as_tuple(getattr(self, f.name)))
        for name in ("in_channels", "out_channels", "cross_attention_dim", "addition_time_embed_dim",
                     "projection_class_embeddings_input_dim", "num_frames", "norm_num_groups"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"UNetConfig.{name} must be a positive int, got {value!r}")
        channels = self.block_out_channels
        if not isinstance(channels, tuple) or not channels or any(
            not isinstance(c, int) or c < 1 for c in channels
        ):
            raise ValueError(f"UNetConfig.block_out_channels must be a non-empty tuple of positive ints, "
                             f"got {channels!r}")
        for c in channels:
            if c % self.norm_num_groups:
                raise ValueError(f"UNetConfig.block_out_channels {channels} must be multiples of "
                                 f"norm_num_groups ({self.norm_num_groups})")
        for name in ("layers_per_block", "num_attention_heads", "transformer_layers_per_block"):
            per_level = self.per_level(name)  # validates the length
            if any(not isinstance(v, int) or v < 1 for v in per_level):
                raise ValueError(f"UNetConfig.{name} must hold positive ints, got {getattr(self, name)!r}")
        for c, heads in zip(channels, self.per_level("num_attention_heads")):
            if c % heads:
                raise ValueError(f"UNetConfig.num_attention_heads: {heads} heads do not divide {c} channels")
        if self.resnet_eps_policy not in EPS_POLICIES:
            raise ValueError(f"UNetConfig.resnet_eps_policy must be one of {EPS_POLICIES}, "
                             f"got {self.resnet_eps_policy!r}")

    @property
    def num_levels(self) -> int:
        return len(self.block_out_channels)

    @property
    def time_embed_dim(self) -> int:
        """Width of the noise-level embedding added in every resnet (4 × the first level's channels)."""
        return 4 * self.block_out_channels[0]

    def per_level(self, name: str) -> tuple[int, ...]:
        """The per-level field ``name`` as one value per resolution level (coarsest last)."""
        value = getattr(self, name)
        if isinstance(value, int):
            return (value,) * self.num_levels
        if not isinstance(value, tuple) or len(value) != self.num_levels:
            raise ValueError(f"UNetConfig.{name} must be an int or have one entry per level "
                             f"({self.num_levels}), got {value!r}")
        return value

    def resnet_eps(self, where: str) -> float:
        """GroupNorm eps of the resnets in ``where``: "down_attn", "down", "mid" or "up" levels."""
        if self.resnet_eps_policy == "sgm" or where in ("down", "mid"):
            return 1e-5
        return 1e-6  # diffusers' CrossAttnDown*/Up* blocks

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # --- diffusers config.json ---------------------------------------------------------------------

    def to_diffusers(self) -> dict[str, Any]:
        """Keyword arguments of diffusers' ``UNetSpatioTemporalConditionModel`` (a config.json body).

        ``norm_num_groups`` / ``resnet_eps_policy`` are added only when they differ from what diffusers
        hard-codes (32 groups, its eps layout); diffusers then ignores them with a warning, so such a
        model computes differently in diffusers even though the weights load.
        """
        out: dict[str, Any] = {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "down_block_types": list(_down_block_types(self.num_levels)),
            "up_block_types": list(_up_block_types(self.num_levels)),
            "block_out_channels": list(self.block_out_channels),
            "addition_time_embed_dim": self.addition_time_embed_dim,
            "projection_class_embeddings_input_dim": self.projection_class_embeddings_input_dim,
            "layers_per_block": _as_list(self.layers_per_block),
            "cross_attention_dim": self.cross_attention_dim,
            "transformer_layers_per_block": _as_list(self.transformer_layers_per_block),
            "num_attention_heads": _as_list(self.num_attention_heads),
            "num_frames": self.num_frames,
        }
        for name, default in _VIDIFF_ONLY_DEFAULTS.items():
            if getattr(self, name) != default:
                out[name] = getattr(self, name)
        return out

    @classmethod
    def from_diffusers(cls, config: dict[str, Any]) -> UNetConfig:
        """Read a diffusers ``unet/config.json`` dict.

        Bookkeeping keys (``_class_name``, ``_diffusers_version``, any ``_``-prefixed key,
        ``sample_size``) are ignored; block types must be the SVD layout; any other unknown key is an
        error naming it, so a config of a different architecture is not silently misread.
        """
        known = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        unknown: list[str] = []
        for key, value in config.items():
            if key.startswith("_") or key in _DIFFUSERS_BOOKKEEPING:
                continue
            if key in ("down_block_types", "up_block_types"):
                continue  # checked below, once the number of levels is known
            if key not in known:
                unknown.append(key)
                continue
            kwargs[key] = _as_tuple(value)
        if unknown:
            raise ValueError(f"unknown UNet config key(s) {sorted(unknown)}; known: {sorted(known)}")
        ctx = kwargs.get("cross_attention_dim")
        if isinstance(ctx, tuple):  # diffusers allows one per level; one context tensor needs them equal
            if len(set(ctx)) != 1:
                raise ValueError(f"cross_attention_dim must be the same at every level, got {list(ctx)}")
            kwargs["cross_attention_dim"] = ctx[0]
        cfg = cls(**kwargs)
        for key, expected in (("down_block_types", _down_block_types(cfg.num_levels)),
                              ("up_block_types", _up_block_types(cfg.num_levels))):
            if key in config and tuple(config[key]) != expected:
                raise ValueError(f"{key} {list(config[key])} is not the SVD block layout {list(expected)}")
        return cfg

    def replace(self, **changes: Any) -> UNetConfig:
        return replace(self, **changes)


def _as_list(value: int | tuple[int, ...]) -> int | list[int]:
    return list(value) if isinstance(value, tuple) else value


# Named configurations (DiT-style: one explicit dict). SVD and SVD-XT share the architecture; only the
# default clip length differs. SV3D's vector is cond-aug (256) for _u, plus 512-d polar and azimuth
# sinusoids for _p (per frame). Tiny presets are diffusers-buildable (32 groups) test sizes.
_TINY = UNetConfig(
    block_out_channels=(32, 64),
    layers_per_block=1,
    num_attention_heads=(2, 4),  # head_dim 16
    cross_attention_dim=32,
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=24,
    num_frames=4,
)

UNET_PRESETS: dict[str, UNetConfig] = {
    "svd": UNetConfig(num_frames=14),
    "svd_xt": UNetConfig(num_frames=25),
    "sv3d_u": UNetConfig(projection_class_embeddings_input_dim=256, num_frames=21),
    "sv3d_p": UNetConfig(projection_class_embeddings_input_dim=1280, num_frames=21),
    "tiny": _TINY,
    "tiny_3level": _TINY.replace(block_out_channels=(32, 32, 64), num_attention_heads=(2, 2, 4)),
    "tiny_sgm": _TINY.replace(resnet_eps_policy="sgm"),
}
