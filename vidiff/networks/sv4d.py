"""The multi-view video UNet of SV4D (Xie et al. 2024) and SV4D 2.0 (Yao et al. 2025).

SV4D renders V views of T times of a moving object at once. Its network is SVD's latent UNet with every
attention layer widened into three: spatial attention inside each latent image, a **view block** across the
V views of one time and a **motion block** across the T times of one view (SV4D Sec. 3.2, "view attention"
and "frame attention"). The resnets keep SVD's (3, 1, 1) temporal branch, run over all T·V latents.

Layout (one convention for the whole family): ``x (B, F, C, H, W)`` with ``F = T·V`` latents flattened
**time-major**, frame ``f = t·V + v``. Consequences of Stability's code (``SpatialUNetModelWithTime``), all
reproduced because the released weights were trained with them:

- the resnets' temporal convolution runs over ``f``, so it mixes neighbouring *views* of one time and, at a
  view boundary, the last view of time t with the first of t+1;
- SV4D 2.0's 4-view model (``use_3d_attention``) hands its view blocks a tensor whose rows are
  (batch, view, pixel) and columns times, but splits rows into groups of V: each view "sequence" is V
  *adjacent pixels* of one view and time, and its cross-attention token is that of time
  ``(row // HW) mod T`` of sgm's (batch, time, pixel) row order rather than of its own time
  (:func:`view_sequences`);
- the view blocks' position embedding is a sinusoid of the view index (SV4D) or, with ``use_camera_emb``,
  the timestep + camera embedding of time 0 of each view (SV4D 2.0).

The conditioning (:class:`SV4DCondLike`, satisfied by ``vidiff.conditioning.SV4DCond``):
``crossattn (B, T, D)`` the CLIP token of each time's input frame; ``vector (B, F, 1280)`` per-latent
[cond σ | polar | azimuth] sinusoids; ``concat (B, F, 4, H, W)`` the input frame's latent of each time
repeated over views; ``cond_view (B, V, 4, H, W)`` the reference views' latents, which the motion blocks
cross-attend to pixel by pixel at every level's resolution. sgm's ``cond_motion`` is never read by its
forward pass and is not asked for.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from vidiff.networks.layers import Downsample, TimestepMLP, Upsample, group_norm
from vidiff.networks.resnet import AlphaBlender, SpatioTemporalResBlock
from vidiff.networks.sv4d_config import SV4D_PRESETS, SV4DConfig
from vidiff.networks.transformer import BasicTransformerBlock, SequenceTransformerBlock
from vidiff.networks.unet_st import VideoCond, _frame_levels
from vidiff.utils import timestep_embedding

__all__ = ["SV4D_PRESETS", "SV4DCondLike", "SV4DConfig", "SV4DTransformer", "SV4DUNet", "motion_sequences",
           "motion_tokens", "view_sequences"]


class SV4DCondLike(VideoCond, Protocol):
    """What :class:`SV4DUNet` reads from its conditioning: the UNet's three fields plus the reference views
    (see the module docstring for shapes)."""

    @property
    def cond_view(self) -> torch.Tensor: ...


def view_sequences(x: torch.Tensor, quirk_3d: bool) -> torch.Tensor:
    """Tokens ``x (B, T, V, HW, C)`` as the view blocks' sequences ``(N, V, C)``, ``N = B·T·HW``; sequence
    ``n`` cross-attends to CLIP token row ``n // HW`` of ``(B·T, 1, D)`` (Attention's shared context).

    Plain (SV4D, SV4D 2.0 8-view): one sequence per (b, t, pixel), over its V views, reading time t's token.
    ``quirk_3d`` (SV4D 2.0 4-view): sgm lays the tokens out as rows (b, v, pixel) x columns t, then splits
    the rows into consecutive groups of V; a sequence is (group, t) over the V rows of its group, i.e. V
    adjacent pixels of one view, and reads token row ``n // HW`` all the same.
    """
    b, t, v, hw, c = x.shape
    if not quirk_3d:
        return x.permute(0, 1, 3, 2, 4).reshape(b * t * hw, v, c)
    rows = x.permute(0, 2, 3, 1, 4).reshape(b * hw, v, t, c)  # (B·V·HW rows in groups of V, V, T, C)
    return rows.transpose(1, 2).reshape(b * hw * t, v, c)


def unview_sequences(seq: torch.Tensor, shape: torch.Size, quirk_3d: bool) -> torch.Tensor:
    """Inverse of :func:`view_sequences`: ``(N, V, C)`` back to ``shape = (B, T, V, HW, C)``."""
    b, t, v, hw, c = shape
    if not quirk_3d:
        return seq.reshape(b, t, hw, v, c).permute(0, 1, 3, 2, 4)
    rows = seq.reshape(b * hw, t, v, c).transpose(1, 2)  # (groups, V, T, C)
    return rows.reshape(b, v, hw, t, c).permute(0, 3, 1, 2, 4)


def motion_sequences(x: torch.Tensor) -> torch.Tensor:
    """Tokens ``x (B, T, V, HW, C)`` as the motion blocks' sequences ``(B·V·HW, T, C)``: one per (b, v, pixel)
    over the T times; sequence ``n`` cross-attends to row ``n`` of :func:`motion_tokens`."""
    b, t, v, hw, c = x.shape
    return x.permute(0, 2, 3, 1, 4).reshape(b * v * hw, t, c)


def unmotion_sequences(seq: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Inverse of :func:`motion_sequences`: ``(B·V·HW, T, C)`` back to ``shape = (B, T, V, HW, C)``."""
    b, t, v, hw, c = shape
    return seq.reshape(b, v, hw, t, c).permute(0, 3, 1, 2, 4)


def motion_tokens(cond_view: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Reference-view latents ``(B, V, C_v, H0, W0)`` resized (bilinear) to this level as one token per
    (b, v, pixel): ``(B·V·H·W, 1, C_v)``."""
    x = F.interpolate(cond_view.flatten(0, 1), size=(height, width), mode="bilinear")
    return x.permute(0, 2, 3, 1).reshape(-1, 1, x.shape[1])


class SV4DTransformer(nn.Module):
    """GroupNorm → proj_in → [spatial block, view block, motion block]×depth → proj_out, plus the input.

    Each view / motion block's output is blended with its input by a learned α ("Align your Latents"
    merging); SV4D shares one α between the two, SV4D 2.0 gives the motion blocks their own.
    """

    def __init__(self, channels: int, cfg: SV4DConfig, depth: int = 1) -> None:
        super().__init__()
        heads, head_dim = channels // cfg.num_head_channels, cfg.num_head_channels
        self.norm = group_norm(channels, cfg.norm_num_groups, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(channels, heads, head_dim, cfg.context_dim) for _ in range(depth)])
        self.view_blocks = nn.ModuleList(
            [SequenceTransformerBlock(channels, heads, head_dim, cfg.context_dim) for _ in range(depth)])
        self.motion_blocks = nn.ModuleList(
            [SequenceTransformerBlock(channels, heads, head_dim, cfg.motion_context_dim) for _ in range(depth)])
        # View position: sinusoid of the view index (SV4D) or the view's timestep + camera embedding (SV4D 2.0).
        self.use_camera_emb = cfg.use_camera_emb
        self.view_pos_embed = TimestepMLP(cfg.adm_in_channels if cfg.use_camera_emb else channels, 4 * channels,
                                          channels)
        self.motion_pos_embed = TimestepMLP(channels, 4 * channels, channels)  # sinusoid of the time index
        self.view_mixer = AlphaBlender(0.0, "learned_with_images")
        self.motion_mixer = AlphaBlender(0.5, "learned_with_images") if cfg.separate_motion_merge_factor else None
        self.quirk_3d = cfg.use_3d_attention
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor, emb: torch.Tensor, cond_view: torch.Tensor,
                num_times: int, num_views: int) -> torch.Tensor:
        """``x (B·T·V, C, H, W)`` time-major, ``context (B, T, D)``, ``emb (B, T·V | 1, E)``, ``cond_view
        (B, V, C_v, H0, W0)`` -> ``(B·T·V, C, H, W)``."""
        n, c, height, width = x.shape
        t, v, hw = num_times, num_views, height * width
        b = n // (t * v)
        residual = x
        x = self.proj_in(self.norm(x).permute(0, 2, 3, 1).reshape(n, hw, c))  # (B·T·V, HW, C)

        # Time t's CLIP token, shared (Attention's context groups) by the V frames (b, t, ·) in the spatial
        # blocks and by the HW consecutive view sequences of (b, t) in the view blocks.
        frame_context = context.reshape(b * t, 1, -1)
        motion_context = motion_tokens(cond_view.to(x.dtype), height, width)  # (B·V·HW, 1, C_v)
        pos_time = self.motion_pos_embed(timestep_embedding(torch.arange(t, device=x.device), c).to(x.dtype))
        if self.use_camera_emb:  # the embedding of time 0 of every view: (B, V, E)
            pos_view = self.view_pos_embed(emb.expand(b, t * v, -1).reshape(b, t, v, -1)[:, 0])
        else:
            pos_view = self.view_pos_embed(timestep_embedding(torch.arange(v, device=x.device), c).to(x.dtype))
            pos_view = pos_view.expand(b, v, c)

        motion_mixer = self.view_mixer if self.motion_mixer is None else self.motion_mixer
        for block, view_block, motion_block in zip(self.transformer_blocks, self.view_blocks, self.motion_blocks):
            x = block(x, frame_context)  # spatial; frame (b, t, v) reads token (b, t)
            x = x.reshape(b, t, v, hw, c)
            seq = view_block(view_sequences(x + pos_view[:, None, :, None], self.quirk_3d), frame_context)
            x = self.view_mixer(x, unview_sequences(seq, x.shape, self.quirk_3d))
            # Motion: one sequence per (b, v, pixel) over the T times, reading that pixel of reference view v.
            seq = motion_block(motion_sequences(x + pos_time[None, :, None, None]), motion_context)
            x = motion_mixer(x, unmotion_sequences(seq, x.shape)).reshape(n, hw, c)

        x = self.proj_out(x).reshape(n, height, width, c).permute(0, 3, 1, 2)
        return x + residual


class _Level(nn.Module):
    """Resnets, each optionally followed by an :class:`SV4DTransformer`, at one resolution."""

    def __init__(self, in_channels: list[int], out_channels: int, cfg: SV4DConfig, attention: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([
            SpatioTemporalResBlock(ch, out_channels, cfg.time_embed_dim, groups=cfg.norm_num_groups, eps=1e-5,
                                   merge_factor=0.0) for ch in in_channels])
        self.attentions = (nn.ModuleList([SV4DTransformer(out_channels, cfg) for _ in in_channels])
                           if attention else None)

    def layer(self, i: int, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor, cond_view: torch.Tensor,
              t: int, v: int) -> torch.Tensor:
        x = self.resnets[i](x, emb, t * v)
        if self.attentions is not None:
            x = self.attentions[i](x, context, emb, cond_view, t, v)
        return x


class DownBlock(_Level):
    """Encoder level: resnet(+transformer) pairs, then an optional strided-conv downsample."""

    def __init__(self, in_channels: int, out_channels: int, cfg: SV4DConfig, *, attention: bool,
                 add_downsample: bool) -> None:
        layers = cfg.num_res_blocks
        super().__init__([in_channels] + [out_channels] * (layers - 1), out_channels, cfg, attention)
        self.downsamplers = nn.ModuleList([Downsample(out_channels)]) if add_downsample else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor, cond_view: torch.Tensor, t: int,
                v: int, skips: list[torch.Tensor]) -> torch.Tensor:
        for i in range(len(self.resnets)):
            x = self.layer(i, x, emb, context, cond_view, t, v)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x


class UpBlock(_Level):
    """Decoder level: resnet(+transformer) pairs, each fed the input concatenated with a skip."""

    def __init__(self, in_channels: list[int], out_channels: int, cfg: SV4DConfig, *, attention: bool,
                 add_upsample: bool) -> None:
        super().__init__(in_channels, out_channels, cfg, attention)
        self.upsamplers = nn.ModuleList([Upsample(out_channels)]) if add_upsample else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor, cond_view: torch.Tensor, t: int,
                v: int, skips: list[torch.Tensor]) -> torch.Tensor:
        for i in range(len(self.resnets)):
            x = self.layer(i, torch.cat([x, skips.pop()], dim=1), emb, context, cond_view, t, v)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, size=tuple(skips[-1].shape[-2:]))
        return x


class MidBlock(_Level):
    """Bottleneck: resnet, transformer, resnet (sgm builds the transformer whatever attention_resolutions)."""

    def __init__(self, channels: int, cfg: SV4DConfig) -> None:
        super().__init__([channels, channels], channels, cfg, attention=False)
        self.attentions = nn.ModuleList([SV4DTransformer(channels, cfg)])

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor, cond_view: torch.Tensor, t: int,
                v: int) -> torch.Tensor:
        x = self.resnets[0](x, emb, t * v)
        x = self.attentions[0](x, context, emb, cond_view, t, v)
        return self.resnets[1](x, emb, t * v)


class SV4DUNet(nn.Module):
    """SV4D's UNet: ``forward(x (B, T·V, C, H, W), c_noise (B,) | (B, T·V), cond) -> (B, T·V, C_out, H, W)``."""

    def __init__(self, config: SV4DConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or SV4DConfig()
        channels, levels, layers = cfg.block_out_channels, len(cfg.channel_mult), cfg.num_res_blocks
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.model_channels, kernel_size=3, padding=1)
        self.time_embedding = TimestepMLP(cfg.model_channels, cfg.time_embed_dim)
        self.add_embedding = TimestepMLP(cfg.adm_in_channels, cfg.time_embed_dim)

        self.down_blocks = nn.ModuleList()
        skip_channels, prev = [cfg.model_channels], cfg.model_channels
        for i, out in enumerate(channels):
            last = i == levels - 1
            self.down_blocks.append(DownBlock(prev, out, cfg, attention=cfg.has_attention(i), add_downsample=not last))
            skip_channels += [out] * (layers + (0 if last else 1))
            prev = out
        self.mid_block = MidBlock(channels[-1], cfg)
        self.up_blocks = nn.ModuleList()
        for i in reversed(range(levels)):
            level_in = []
            for _ in range(layers + 1):
                level_in.append(prev + skip_channels.pop())
                prev = channels[i]
            self.up_blocks.append(UpBlock(level_in, channels[i], cfg, attention=cfg.has_attention(i),
                                          add_upsample=i > 0))
        self.conv_norm_out = group_norm(cfg.model_channels, cfg.norm_num_groups, eps=1e-5)
        self.conv_out = nn.Conv2d(cfg.model_channels, cfg.out_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: SV4DCondLike) -> torch.Tensor:
        """``x (B, F, C_noisy, H, W)`` with ``F = T·V`` time-major; T is ``cond.crossattn.shape[1]``, V is
        ``cond.cond_view.shape[1]``. ``c_noise (B,)`` or ``(B, F)`` (one level per latent)."""
        b, f, _, height, width = x.shape
        cfg = self.config
        context, cond_view = cond.crossattn.to(x.dtype), cond.cond_view
        if context.ndim != 3 or context.shape[0] != b:
            raise ValueError(f"cond.crossattn must be (B, T, D) with B={b}, got {tuple(context.shape)}")
        if cond_view is None or cond_view.ndim != 5 or cond_view.shape[0] != b:
            got = None if cond_view is None else tuple(cond_view.shape)
            raise ValueError(f"cond.cond_view must be (B, V, C, H, W) with B={b}, got {got}")
        t, v = context.shape[1], cond_view.shape[1]
        if t * v != f:
            raise ValueError(f"x has {f} latent frames; cond gives T={t} times (crossattn tokens) x V={v} views")

        concat = cond.concat
        if concat is not None:
            concat = concat[:, None] if concat.ndim == 4 else concat
            x = torch.cat([x, concat.to(x.dtype).expand(b, f, -1, height, width)], dim=2)
        if x.shape[2] != cfg.in_channels:
            raise ValueError(f"x and cond.concat have {x.shape[2]} channels together; the network takes "
                             f"in_channels={cfg.in_channels}")

        # Noise level + vector embedding, per latent (B, F, E) or once per video (B, 1, E).
        c_noise = _frame_levels(c_noise, b, f)
        emb = self.time_embedding(timestep_embedding(c_noise.reshape(-1), cfg.model_channels).to(x.dtype))
        emb = emb[:, None] if c_noise.ndim == 1 else emb.unflatten(0, (b, f))
        vector = cond.vector.to(x.dtype)
        vector = vector[:, None] if vector.ndim == 2 else vector
        if vector.shape[0] != b or vector.shape[1] not in (1, f):
            raise ValueError(f"cond.vector must be (B, D) or (B, F, D) with B={b}, F={f}; "
                             f"got {tuple(cond.vector.shape)}")
        emb = emb + self.add_embedding(vector)  # (B, F|1, E)

        h = self.conv_in(x.flatten(0, 1))  # (B·F, C0, H, W)
        skips = [h]
        for block in self.down_blocks:
            h = block(h, emb, context, cond_view, t, v, skips)
        h = self.mid_block(h, emb, context, cond_view, t, v)
        for block in self.up_blocks:
            h = block(h, emb, context, cond_view, t, v, skips)
        h = self.conv_out(F.silu(self.conv_norm_out(h)))
        return h.unflatten(0, (b, f))
