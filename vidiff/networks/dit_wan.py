"""The Wan 2.x video diffusion transformer (Wan team 2025, "Wan: Open and Advanced Large-Scale Video
Generative Models", Sec. 3.2), text-to-video and image-to-video, Wan 2.1 and 2.2.

Full 3D self-attention over ``(1, 2, 2)`` latent patches with 3D rotary positions, cross-attention to
the UMT5 text tokens (and, for Wan 2.1 I2V, to CLIP image tokens through separate keys and values), and
adaLN-single timestep modulation (PixArt-α, Chen et al. 2023, Sec. 2.3): one shared MLP produces six
modulation vectors, each block adds its own learned ``scale_shift_table``. Parameter names match
diffusers' ``WanTransformer3DModel`` so a diffusers ``transformer`` folder loads with ``strict=True``;
Wan's original key names are renamed in ``vidiff.io.wan_keymap``.

Interface (docs/architecture.md): ``F(x, c_noise, cond) -> F_x`` with ``x (B, T, C, H, W)``, ``c_noise (B,)``
or per-frame ``(B, T)`` (Wan's timestep, ``1000·t`` for flow time ``t``), ``cond.crossattn (B, S, text_dim)``,
optional ``cond.concat`` (channels appended to x) and ``cond.image (B, N, image_dim)``. ``F_x`` is the
flow velocity ``ε − x₀`` for the released weights.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from vidiff.networks.attention import attention_kernel
from vidiff.networks.dit_wan_config import WAN_PRESETS, WanConfig
from vidiff.networks.layers import Linear, TimestepMLP, maybe_checkpoint
from vidiff.utils import timestep_embedding

__all__ = ["WAN_PRESETS", "WanConfig", "WanTransformer3D", "rope_angles"]


class WanCond(Protocol):
    """What the Wan transformer reads from a conditioning object (``crossattn``; ``concat``, ``image``
    may be None or absent)."""

    @property
    def crossattn(self) -> torch.Tensor: ...


def _layer_norm(x: torch.Tensor, eps: float, weight: torch.Tensor | None = None,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """LayerNorm computed in float32 whatever the activations' dtype (Wan keeps norms in fp32)."""
    w = None if weight is None else weight.float()
    b = None if bias is None else bias.float()
    return F.layer_norm(x.float(), x.shape[-1:], w, b, eps)


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm evaluated in float32, returned in the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _layer_norm(x, self.eps, self.weight, self.bias).type_as(x)


class _Proj(nn.Module):
    """``Linear`` then GELU, named ``proj`` so the keys read ``net.0.proj`` as diffusers' FeedForward."""

    def __init__(self, dim_in: int, dim_out: int, approximate: str) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate=self.approximate)


class GELUFeedForward(nn.Module):
    """Transformer MLP ``W₂ gelu(W₁ x)`` (keys ``net.0.proj``, ``net.2``)."""

    def __init__(self, dim: int, inner: int, dim_out: int | None = None, approximate: str = "tanh") -> None:
        super().__init__()
        self.net = nn.Sequential(_Proj(dim, inner, approximate), nn.Dropout(0.0), nn.Linear(inner, dim_out or dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TextProjection(nn.Module):
    """Two-layer tanh-GELU MLP mapping text-encoder tokens to the model width (PixArt-α's caption
    projection; keys ``linear_1``, ``linear_2``)."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.linear_1 = Linear(in_dim, dim)
        self.linear_2 = Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.gelu(self.linear_1(x), approximate="tanh"))


class ImageProjection(nn.Module):
    """CLIP image tokens -> model width: LayerNorm, GELU MLP, LayerNorm (Wan 2.1 I2V's ``img_emb``);
    FLF2V adds a learned position table over the first- and last-frame tokens."""

    def __init__(self, in_dim: int, dim: int, pos_embed_seq_len: int | None) -> None:
        super().__init__()
        self.norm1 = FP32LayerNorm(in_dim)
        self.ff = GELUFeedForward(in_dim, in_dim, dim, approximate="none")
        self.norm2 = FP32LayerNorm(dim)
        self.pos_embed = None if pos_embed_seq_len is None else nn.Parameter(torch.zeros(1, pos_embed_seq_len, in_dim))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.pos_embed is not None:  # (B·2, N, D) first/last-frame tokens -> (B, 2N, D)
            image = image.reshape(-1, self.pos_embed.shape[1], image.shape[-1]) + self.pos_embed
        return self.norm2(self.ff(self.norm1(image)))


class ConditionEmbedder(nn.Module):
    """Timestep MLP and its 6-way modulation projection (adaLN-single), text and image projections."""

    def __init__(self, cfg: WanConfig) -> None:
        super().__init__()
        dim = cfg.inner_dim
        self.freq_dim = cfg.freq_dim
        self.time_embedder = TimestepMLP(cfg.freq_dim, dim)
        self.time_proj = Linear(dim, 6 * dim)
        self.text_embedder = TextProjection(cfg.text_dim, dim)
        self.image_embedder = (ImageProjection(cfg.image_dim, dim, cfg.pos_embed_seq_len)
                               if cfg.image_dim is not None else None)

    def time(self, c_noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``c_noise (B, F)`` -> ``temb (B, F, D)`` and modulation ``(B, F, 6, D)``, both float32."""
        b, f = c_noise.shape
        sinus = timestep_embedding(c_noise.reshape(-1), self.freq_dim).reshape(b, f, -1)
        temb = self.time_embedder(sinus.to(self.time_embedder.linear_1.weight.dtype)).float()
        mod = self.time_proj(F.silu(temb).to(self.time_proj.weight.dtype)).float()
        return temb, mod.unflatten(-1, (6, -1))


def rope_angles(head_dim: int, grid: tuple[int, int, int], theta: float = 10000.0,
                device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """3D RoPE (Su et al. 2021, eq. 34, applied per axis): ``cos, sin`` of shape ``(F·H·W, head_dim/2)``.

    The head is split into frame, height and width parts of ``d − 4⌊d/6⌋``, ``2⌊d/6⌋``, ``2⌊d/6⌋``
    channels; pair ``i`` of a part of width ``n`` turns by ``pos · θ^(−2i/n)``. Angles are formed in
    float64 (as the reference) and returned in float32; any frame count works (extrapolation).
    """
    hw = 2 * (head_dim // 6)
    parts = []
    for n, size, axis in ((head_dim - 2 * hw, grid[0], 0), (hw, grid[1], 1), (hw, grid[2], 2)):
        inv = 1.0 / theta ** (torch.arange(0, n, 2, dtype=torch.float64, device=device) / n)
        ang = torch.arange(size, dtype=torch.float64, device=device)[:, None] * inv  # (size, n/2)
        shape = [1, 1, 1, n // 2]
        shape[axis] = size
        parts.append(ang.reshape(shape).expand(*grid, n // 2))
    ang = torch.cat(parts, dim=-1).reshape(-1, head_dim // 2)
    return ang.cos().float(), ang.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs ``(x₂ᵢ, x₂ᵢ₊₁)`` of ``x (B, heads, L, d)`` by the angles."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)
    return out.type_as(x)


class AttentionKernel(nn.Module):
    """:func:`attention_kernel` as a (parameter-free) module, so that sequence parallelism
    (``vidiff.parallel.sequence``) can hook the one point where all tokens of a head must meet."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return attention_kernel(q, k, v)


class WanAttention(nn.Module):
    """Multi-head attention with RMS-normalised queries and keys over all heads (Wan's qk-norm).

    Cross-attention with ``image_kv_dim`` set also attends to image tokens through their own key/value
    projections (``add_k_proj``, ``add_v_proj``); the two results are summed (decoupled cross-attention,
    as IP-Adapter, Ye et al. 2023, eq. 5).
    """

    def __init__(self, dim: int, heads: int, eps: float, qk_norm: bool, image_kv_dim: int | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])
        self.kernel = AttentionKernel()
        self.norm_q = nn.RMSNorm(dim, eps=eps) if qk_norm else nn.Identity()
        self.norm_k = nn.RMSNorm(dim, eps=eps) if qk_norm else nn.Identity()
        if image_kv_dim is not None:
            self.add_k_proj = nn.Linear(image_kv_dim, dim)
            self.add_v_proj = nn.Linear(image_kv_dim, dim)
            self.norm_added_k = nn.RMSNorm(dim, eps=eps) if qk_norm else nn.Identity()

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (B, L, D) -> (B, h, L, d)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                image: torch.Tensor | None = None) -> torch.Tensor:
        """``x (B, L, D)``; ``context (B, S, D)`` (None: self-attention) -> ``(B, L, D)``."""
        ctx = x if context is None else context
        q = self._heads(self.norm_q(self.to_q(x)))
        k = self._heads(self.norm_k(self.to_k(ctx)))
        v = self._heads(self.to_v(ctx))
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = self.kernel(q, k, v)  # (B, h, L, d)
        if image is not None:
            k_img = self._heads(self.norm_added_k(self.add_k_proj(image)))
            out = out + attention_kernel(q, k_img, self._heads(self.add_v_proj(image)))
        return self.to_out[0](out.transpose(1, 2).flatten(2))


def _modulate(x: torch.Tensor, frames: int, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x·(1 + scale) + shift`` in float32 with per-frame ``shift, scale (B, F, D)`` over ``x (B, F·N, D)``."""
    b, length, d = x.shape
    x = x.float().reshape(b, frames, length // frames, d)
    return (x * (1 + scale[:, :, None]) + shift[:, :, None]).reshape(b, length, d)


def _gate(x: torch.Tensor, frames: int, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """Residual ``x + y·gate`` in float32 with per-frame ``gate (B, F, D)``, returned in x's dtype."""
    b, length, d = x.shape
    y = y.float().reshape(b, frames, length // frames, d) * gate[:, :, None]
    return (x.float() + y.reshape(b, length, d)).type_as(x)


class WanBlock(nn.Module):
    """Self-attention (3D RoPE), cross-attention, feed-forward; adaLN-single modulation of the first and last."""

    def __init__(self, cfg: WanConfig) -> None:
        super().__init__()
        dim, eps, qk = cfg.inner_dim, cfg.eps, cfg.qk_norm is not None
        self.eps = eps
        self.attn1 = WanAttention(dim, cfg.num_attention_heads, eps, qk)
        self.attn2 = WanAttention(dim, cfg.num_attention_heads, eps, qk, cfg.added_kv_proj_dim)
        self.norm2 = FP32LayerNorm(dim, eps) if cfg.cross_attn_norm else None
        self.ffn = GELUFeedForward(dim, cfg.ffn_dim)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, context: torch.Tensor, image: torch.Tensor | None, mod: torch.Tensor,
                rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """``x (B, L, D)``, ``mod (B, F, 6, D)`` float32 -> ``(B, L, D)``."""
        frames = mod.shape[1]
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.scale_shift_table.float() + mod).unbind(2)
        h = _modulate(_layer_norm(x, self.eps), frames, shift1, scale1).type_as(x)
        x = _gate(x, frames, self.attn1(h, rope=rope), gate1)
        h = x if self.norm2 is None else self.norm2(x)
        x = x + self.attn2(h, context, image=image)
        h = _modulate(_layer_norm(x, self.eps), frames, shift2, scale2).type_as(x)
        return _gate(x, frames, self.ffn(h), gate2)


class WanTransformer3D(nn.Module):
    """Wan's video DiT: ``forward(x (B, T, C, H, W), c_noise (B,) | (B, T), cond) -> (B, T, C_out, H, W)``."""

    def __init__(self, config: WanConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or WanConfig()
        dim = cfg.inner_dim
        self.patch_embedding = nn.Conv3d(cfg.in_channels, dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.condition_embedder = ConditionEmbedder(cfg)
        self.blocks = nn.ModuleList([WanBlock(cfg) for _ in range(cfg.num_layers)])
        self.proj_out = nn.Linear(dim, cfg.out_channels * cfg.patch_size[0] * cfg.patch_size[1] * cfg.patch_size[2])
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)
        self.gradient_checkpointing = False

    @classmethod
    def from_preset(cls, name: str) -> WanTransformer3D:
        if name not in WAN_PRESETS:
            raise ValueError(f"unknown Wan preset {name!r}; choose from {sorted(WAN_PRESETS)}")
        return cls(WAN_PRESETS[name])

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block's activations in backward (less memory, more compute)."""
        self.gradient_checkpointing = enabled

    def _inputs(self, x: torch.Tensor, cond: Any) -> torch.Tensor:
        concat = getattr(cond, "concat", None)
        if concat is not None:
            if concat.ndim == 4:  # one per video
                concat = concat[:, None].expand(-1, x.shape[1], -1, -1, -1)
            x = torch.cat([x, concat.to(x.dtype)], dim=2)
        if x.shape[2] != self.config.in_channels:
            raise ValueError(f"x and cond.concat have {x.shape[2]} channels together; the Wan transformer takes "
                             f"in_channels={self.config.in_channels}")
        return x

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: WanCond) -> torch.Tensor:
        """``x (B, T, C, H, W)``, ``c_noise (B,)`` or per-frame ``(B, T)`` -> ``(B, T, C_out, H, W)``."""
        cfg = self.config
        b, t, _, height, width = x.shape
        pt, ph, pw = cfg.patch_size
        if t % pt or height % ph or width % pw:
            raise ValueError(f"latent (T, H, W) = {(t, height, width)} is not divisible by patch_size {cfg.patch_size}")
        grid = (t // pt, height // ph, width // pw)
        x = self._inputs(x, cond)

        # 1. Patches -> tokens (B, L, D), L = F·H'·W' in frame-major order.
        h = self.patch_embedding(x.transpose(1, 2)).flatten(2).transpose(1, 2).contiguous()
        rope = rope_angles(cfg.attention_head_dim, grid, device=x.device)

        # 2. Timestep per video (B, 1) or per latent frame (B, F); adaLN-single modulation (B, F, 6, D).
        c_noise = c_noise.reshape(b, -1) if c_noise.numel() > 1 else c_noise.reshape(1, 1).expand(b, 1)
        if c_noise.shape[1] not in (1, t):
            raise ValueError(f"c_noise must be (B,) or (B, T) with T={t}, got {tuple(c_noise.shape)}")
        if c_noise.shape[1] > 1 and pt > 1:
            c_noise = c_noise[:, ::pt]
        temb, mod = self.condition_embedder.time(c_noise)

        # 3. Context: projected text tokens, and projected CLIP image tokens for Wan 2.1 I2V.
        context = self.condition_embedder.text_embedder(cond.crossattn.to(h.dtype))
        image = getattr(cond, "image", None)
        if (image is not None) != cfg.has_image_attention:
            raise ValueError("cond.image (CLIP image tokens) is required by, and only by, Wan 2.1 I2V models "
                             f"(image_dim={cfg.image_dim})")
        if image is not None:
            image = self.condition_embedder.image_embedder(image.to(h.dtype)).type_as(h)

        # 4. Blocks.
        for block in self.blocks:
            h = maybe_checkpoint(self.gradient_checkpointing, block, h, context, image, mod, rope)

        # 5. Output modulation, projection, unpatchify.
        shift, scale = (self.scale_shift_table.float() + temb[:, :, None]).unbind(2)
        h = _modulate(_layer_norm(h, cfg.eps), temb.shape[1], shift, scale).type_as(h)
        h = self.proj_out(h)  # (B, L, pt·ph·pw·C_out)
        h = h.reshape(b, *grid, pt, ph, pw, -1)
        h = h.permute(0, 1, 4, 7, 2, 5, 3, 6)  # (B, F, pt, C, H', ph, W', pw)
        return h.reshape(b, t, cfg.out_channels, height, width)
