"""The spatio-temporal UNet of Stable Video Diffusion (Blattmann et al. 2023), SVD-XT and SV3D.

A latent-diffusion UNet whose every resnet is a ``SpatioTemporalResBlock`` and every attention layer a
``SpatioTemporalTransformer`` ("Align your Latents" factorisation). The parameter names and nesting match
diffusers' ``UNetSpatioTemporalConditionModel``, so a diffusers ``unet`` folder loads with ``strict=True``
and no renaming; sgm single-file checkpoints are renamed in ``vidiff.io``.

Interface (see docs/architecture.md): ``F(x, c_noise, cond) -> F_x`` with ``x (B, T, C, H, W)``. The
network knows nothing of sigma: ``c_noise`` is whatever the preconditioning feeds it (0.25·ln σ for SVD).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from vidiff.networks.attention import Attention
from vidiff.networks.layers import (
    Downsample,
    FeedForward,
    TimestepMLP,
    Upsample,
    group_norm,
    maybe_checkpoint,
)
from vidiff.networks.resnet import SpatioTemporalResBlock
from vidiff.networks.transformer import SpatioTemporalTransformer
from vidiff.networks.unet_config import UNET_PRESETS, UNetConfig
from vidiff.utils import timestep_embedding

__all__ = ["UNET_PRESETS", "UNetConfig", "UNetSpatioTemporal", "VideoCond", "count_parameters"]


class VideoCond(Protocol):
    """What the UNet reads from a conditioning object (``vidiff.conditioning.Cond`` satisfies it).

    ``crossattn (B, S, D_ctx)``: per-video context tokens (SVD: one CLIP image embedding).
    ``vector (B, D_adm)`` or ``(B, T, D_adm)``: already-embedded scalars (SVD: the 256-d sinusoids of
    fps−1, motion bucket and noise-aug strength, concatenated; SV3D_p: per-frame camera angles).
    ``concat (B, T, C_c, H, W)``, ``(B, C_c, H, W)`` or None: channels appended after the noisy latent.
    """

    @property
    def crossattn(self) -> torch.Tensor: ...

    @property
    def vector(self) -> torch.Tensor: ...

    @property
    def concat(self) -> torch.Tensor | None: ...


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (only those with ``requires_grad`` if ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


class _Level(nn.Module):
    """Resnets, optionally each followed by a transformer, at one resolution of the UNet."""

    def __init__(
        self,
        in_channels: list[int],
        out_channels: int,
        cfg: UNetConfig,
        heads: int | None,
        depth: int,
        eps: float,
    ) -> None:
        super().__init__()
        temb = cfg.time_embed_dim
        self.resnets = nn.ModuleList(
            [SpatioTemporalResBlock(c, out_channels, temb, groups=cfg.norm_num_groups, eps=eps)
             for c in in_channels]
        )
        self.attentions = None
        if heads is not None:
            self.attentions = nn.ModuleList(
                [SpatioTemporalTransformer(out_channels, heads, cfg.cross_attention_dim, depth=depth,
                                           groups=cfg.norm_num_groups)
                 for _ in in_channels]
            )
        self.gradient_checkpointing = False

    def layer(self, i: int, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor, num_frames: int,
              indicator: torch.Tensor | None) -> torch.Tensor:
        """Resnet ``i`` then transformer ``i`` (if any), each recomputed in backward when checkpointing."""
        run = partial(maybe_checkpoint, self.gradient_checkpointing)
        x = run(self.resnets[i], x, emb, num_frames, indicator)
        if self.attentions is not None:
            x = run(self.attentions[i], x, context, num_frames, indicator)
        return x


class DownBlock(_Level):
    """Encoder level: ``layers`` resnet(+transformer) pairs, then an optional strided-conv downsample."""

    def __init__(self, in_channels: int, out_channels: int, cfg: UNetConfig, *, layers: int,
                 heads: int | None, depth: int, add_downsample: bool) -> None:
        eps = cfg.resnet_eps("down_attn" if heads is not None else "down")
        super().__init__([in_channels] + [out_channels] * (layers - 1), out_channels, cfg, heads, depth, eps)
        self.downsamplers = nn.ModuleList([Downsample(out_channels)]) if add_downsample else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor, num_frames: int,
                indicator: torch.Tensor | None, skips: list[torch.Tensor]) -> torch.Tensor:
        """``x (B·T, C_in, H, W)`` -> ``(B·T, C_out, H', W')``; appends every intermediate to ``skips``."""
        for i in range(len(self.resnets)):
            x = self.layer(i, x, emb, context, num_frames, indicator)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x


class UpBlock(_Level):
    """Decoder level: ``layers`` resnet(+transformer) pairs, each fed the input concatenated with a skip."""

    def __init__(self, in_channels: list[int], out_channels: int, cfg: UNetConfig, *, heads: int | None,
                 depth: int, add_upsample: bool) -> None:
        super().__init__(in_channels, out_channels, cfg, heads, depth, cfg.resnet_eps("up"))
        self.upsamplers = nn.ModuleList([Upsample(out_channels)]) if add_upsample else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor, num_frames: int,
                indicator: torch.Tensor | None, skips: list[torch.Tensor]) -> torch.Tensor:
        """``x (B·T, C, H, W)`` -> ``(B·T, C_out, H'', W'')``; pops one skip per resnet."""
        for i in range(len(self.resnets)):
            x = torch.cat([x, skips.pop()], dim=1)  # (B·T, C + C_skip, H, W)
            x = self.layer(i, x, emb, context, num_frames, indicator)
        if self.upsamplers is not None:
            # Upsample to the next skip's size, so odd sizes (9 -> 5 -> 9) come back exactly.
            x = self.upsamplers[0](x, size=tuple(skips[-1].shape[-2:]))
        return x


class MidBlock(nn.Module):
    """Bottleneck: resnet, transformer, resnet at the coarsest resolution."""

    def __init__(self, channels: int, cfg: UNetConfig, heads: int, depth: int) -> None:
        super().__init__()
        temb, groups, eps = cfg.time_embed_dim, cfg.norm_num_groups, cfg.resnet_eps("mid")
        self.resnets = nn.ModuleList(
            [SpatioTemporalResBlock(channels, channels, temb, groups=groups, eps=eps) for _ in range(2)]
        )
        self.attentions = nn.ModuleList(
            [SpatioTemporalTransformer(channels, heads, cfg.cross_attention_dim, depth=depth, groups=groups)]
        )
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor, num_frames: int,
                indicator: torch.Tensor | None) -> torch.Tensor:
        run = partial(maybe_checkpoint, self.gradient_checkpointing)
        x = run(self.resnets[0], x, emb, num_frames, indicator)
        x = run(self.attentions[0], x, context, num_frames, indicator)
        return run(self.resnets[1], x, emb, num_frames, indicator)


class UNetSpatioTemporal(nn.Module):
    """SVD's video UNet: ``forward(x (B, T, C, H, W), c_noise (B,) | (B, T), cond) -> (B, T, C_out, H, W)``."""

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or UNetConfig()
        channels = cfg.block_out_channels
        heads = cfg.per_level("num_attention_heads")
        layers = cfg.per_level("layers_per_block")
        depth = cfg.per_level("transformer_layers_per_block")
        levels = cfg.num_levels

        self.conv_in = nn.Conv2d(cfg.in_channels, channels[0], kernel_size=3, padding=1)
        # The noise level and the added vector (fps, motion, augmentation...) are each mapped to
        # time_embed_dim and summed, as sgm's time_embed + label_emb ("micro-conditioning").
        self.time_embedding = TimestepMLP(channels[0], cfg.time_embed_dim)
        self.add_embedding = TimestepMLP(cfg.projection_class_embeddings_input_dim, cfg.time_embed_dim)

        # Encoder: attention at every level but the deepest, downsampling after every level but the last.
        self.down_blocks = nn.ModuleList()
        skip_channels = [channels[0]]  # channels of the skips, in the order they are pushed
        prev = channels[0]
        for i, out in enumerate(channels):
            last = i == levels - 1
            self.down_blocks.append(DownBlock(prev, out, cfg, layers=layers[i],
                                              heads=None if last else heads[i], depth=depth[i],
                                              add_downsample=not last))
            skip_channels += [out] * (layers[i] + (0 if last else 1))
            prev = out

        self.mid_block = MidBlock(channels[-1], cfg, heads[-1], depth[-1])

        # Decoder mirrors the encoder with one extra resnet per level (it also consumes the
        # downsampler's skip); attention everywhere but the deepest level.
        self.up_blocks = nn.ModuleList()
        for j, i in enumerate(reversed(range(levels))):
            level_in = []
            for _ in range(layers[i] + 1):
                level_in.append(prev + skip_channels.pop())
                prev = channels[i]
            self.up_blocks.append(UpBlock(level_in, channels[i], cfg, heads=None if j == 0 else heads[i],
                                          depth=depth[i], add_upsample=i > 0))

        self.conv_norm_out = group_norm(channels[0], cfg.norm_num_groups, eps=1e-5)
        self.conv_out = nn.Conv2d(channels[0], cfg.out_channels, kernel_size=3, padding=1)

    # --- gradient checkpointing (a runtime switch, not part of the config) ---------------------------

    @property
    def gradient_checkpointing(self) -> bool:
        return self.mid_block.gradient_checkpointing

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each resnet's and transformer's activations in backward (less memory, more compute)."""
        for module in self.modules():
            if isinstance(module, (_Level, MidBlock)):
                module.gradient_checkpointing = enabled

    def disable_gradient_checkpointing(self) -> None:
        self.enable_gradient_checkpointing(False)

    def set_single_key_shortcut(self, enabled: bool) -> None:
        """Toggle the exact one-token attention shortcut (on by default, see ``attention.py``).

        With SVD's one-token context the shortcut leaves cross-attention's ``norm2``/``to_q``/``to_k``
        out of the graph (their true gradient is zero anyway). DistributedDataParallel then needs
        ``find_unused_parameters=True``, or this switched off during training.
        """
        for module in self.modules():
            if isinstance(module, Attention):
                module.single_key_shortcut = enabled

    # --- memory control: chunked attention and feed-forward ---------------------------------------------

    def set_attention_chunk(self, frames: int | None) -> None:
        """Run attention and feed-forward layers on at most ``frames`` frames' worth of tokens at a time
        (counted at the full latent resolution; None: all at once). Exact; bounds peak activations."""
        if frames is not None and frames < 1:
            raise ValueError(f"attention chunk must be >= 1 frame or None, got {frames}")
        self._attention_chunk = frames

    @contextmanager
    def chunked(self, frames: int | None) -> Iterator[None]:
        """``with unet.chunked(2): ...`` runs the block with :meth:`set_attention_chunk` (2)."""
        before = getattr(self, "_attention_chunk", None)
        self.set_attention_chunk(frames)
        try:
            yield
        finally:
            self.set_attention_chunk(before)

    def _apply_chunking(self, height: int, width: int) -> None:
        frames = getattr(self, "_attention_chunk", None)
        budget = None if frames is None else frames * height * width
        if budget == getattr(self, "_applied_budget", None):
            return  # walking every module each step is cheap, but not free
        self._applied_budget = budget
        for module in self.modules():
            if isinstance(module, (Attention, FeedForward)):
                module.max_tokens = budget

    # --- forward ------------------------------------------------------------------------------------

    def forward(
        self,
        x: torch.Tensor,
        c_noise: torch.Tensor,
        cond: VideoCond,
        *,
        image_only_indicator: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x (B, T, C_noisy, H, W)``, ``c_noise (B,)`` or ``(B, T)`` -> ``(B, T, C_out, H, W)``.

        ``c_noise (B, T)`` gives every frame its own noise level, embedded per frame as Stability's
        VideoUNet embeds one timestep per ``(b t)`` (the weights are unchanged): the spatial and temporal
        resnets add frame ``f``'s embedding to frame ``f``. Rows constant over frames are embedded once per
        video, exactly the ``(B,)`` path (bit for bit). ``image_only_indicator (B, T)``: 1 marks frames to be
        treated as independent images (temporal layers bypassed); None means all video frames (zeros).
        """
        b, t, _, height, width = x.shape
        cfg = self.config

        # 1. Inputs: the conditioning latent is appended on the channel axis (SVD concat conditioning).
        concat = cond.concat
        if concat is not None:
            if concat.ndim == 4:  # one per video
                concat = concat[:, None]
            x = torch.cat([x, concat.to(x.dtype).expand(b, t, -1, height, width)], dim=2)
        if x.shape[2] != cfg.in_channels:
            raise ValueError(f"x and cond.concat have {x.shape[2]} channels together; the UNet takes "
                             f"in_channels={cfg.in_channels}")

        # 2. Embeddings, once per video (B, 1, E), or per frame (B, T, E) when the noise level or the vector
        #    is: resnets broadcast them over frames, which is exact and avoids T-fold repeated projections.
        c_noise = _frame_levels(c_noise, b, t)  # (B,) or (B, T)
        emb = self.time_embedding(timestep_embedding(c_noise.reshape(-1), cfg.block_out_channels[0]).to(x.dtype))
        emb = emb[:, None] if c_noise.ndim == 1 else emb.unflatten(0, (b, t))  # (B, 1|T, E)
        vector = cond.vector.to(x.dtype)
        if vector.ndim == 2:
            vector = vector[:, None]  # (B, 1, D_adm)
        if vector.shape[0] != b or vector.shape[1] not in (1, t):
            raise ValueError(f"cond.vector must be (B, D) or (B, T, D) with B={b}, T={t}; "
                             f"got {tuple(cond.vector.shape)}")
        emb = emb + self.add_embedding(vector)  # (B, T|1, E)
        context = cond.crossattn.to(x.dtype)  # (B, S, D_ctx); frames (and pixels) share their video's
        if context.ndim != 3 or context.shape[0] != b:
            raise ValueError(f"cond.crossattn must be (B, S, D) with B={b}, got {tuple(context.shape)}")

        # 3. UNet on frames folded into the batch.
        self._apply_chunking(height, width)
        h = self.conv_in(x.flatten(0, 1))  # (B·T, C0, H, W)
        skips = [h]
        for block in self.down_blocks:
            h = block(h, emb, context, t, image_only_indicator, skips)
        h = self.mid_block(h, emb, context, t, image_only_indicator)
        for block in self.up_blocks:
            h = block(h, emb, context, t, image_only_indicator, skips)
        h = self.conv_out(F.silu(self.conv_norm_out(h)))  # (B·T, C_out, H, W)
        return h.unflatten(0, (b, t))


def _frame_levels(c_noise: torch.Tensor, b: int, t: int) -> torch.Tensor:
    """``c_noise`` as ``(B,)`` (a scalar or ``(1,)`` repeated), or ``(B, T)`` when it differs across frames.

    A ``(B, T)`` or ``(1, T)`` level that is the same for every frame of each video becomes ``(B,)``, so
    the embedding is computed once per video exactly as on the ``(B,)`` path.
    """
    if c_noise.ndim < 2:
        return c_noise.reshape(-1).expand(b)
    if c_noise.ndim != 2 or c_noise.shape[1] != t or c_noise.shape[0] not in (1, b):
        raise ValueError(f"c_noise must be (B,) or (B, T) with B={b}, T={t}; got {tuple(c_noise.shape)}")
    c_noise = c_noise.expand(b, t)
    if bool((c_noise == c_noise[:, :1]).all()):
        return c_noise[:, 0]
    return c_noise
