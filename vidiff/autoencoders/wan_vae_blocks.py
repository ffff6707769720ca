"""Layers of Wan's causal 3D VAE: causal convolutions that can run chunk by chunk, RMS norms, resampling.

A :class:`Stream` holds, per causal layer, the trailing input frames of the previous chunk; passing
``stream=None`` processes a whole clip at once (zero history). Both give the same result.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class Stream:
    """State of a chunked causal pass: the last input frames each layer saw, keyed by the layer."""

    def __init__(self) -> None:
        self.tails: dict[int, torch.Tensor] = {}

    def get(self, layer: nn.Module) -> torch.Tensor | None:
        return self.tails.get(id(layer))

    def put(self, layer: nn.Module, tail: torch.Tensor) -> None:
        """Keep a copy of ``tail``: a view would keep the whole chunk's tensor alive until the next chunk."""
        self.tails[id(layer)] = tail.clone()


def _is_first(layer: nn.Module, stream: Stream | None) -> bool:
    """Whether ``layer`` is seeing the clip's first frame now (always, for a whole-clip pass)."""
    return stream is None or stream.get(layer) is None


class CausalConv3d(nn.Conv3d):
    """3D convolution padded ``2p`` frames in front and none behind (causal), ``p`` on each spatial side.

    In a chunked pass the front padding is replaced by the previous chunk's last ``2p`` input frames.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int, int],
                 stride: int | tuple[int, int, int] = 1, padding: int | tuple[int, int, int] = 0) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding)
        self.causal_pad = 2 * self.padding[0]
        self.space_pad = (self.padding[2], self.padding[2], self.padding[1], self.padding[1])
        self.padding = (0, 0, 0)

    def forward(self, x: torch.Tensor, stream: Stream | None = None) -> torch.Tensor:
        """``x (B, C, T, H, W)`` -> ``(B, C', T, H', W')`` (for stride 1 in time)."""
        front = self.causal_pad
        if front and stream is not None:
            prev = stream.get(self)
            if prev is not None:
                x = torch.cat([prev, x], dim=2)
                front -= prev.shape[2]
            stream.put(self, x[:, :, -self.causal_pad:])
        return super().forward(F.pad(x, (*self.space_pad, max(front, 0), 0)))


class RMSNorm(nn.Module):
    """``x/‖x‖₂ · √C · γ (+ β)`` over the channel axis (RMSNorm, Zhang & Sennrich 2019, with L2 normalisation)."""

    def __init__(self, dim: int, images: bool = True, bias: bool = False) -> None:
        super().__init__()
        shape = (dim, 1, 1) if images else (dim, 1, 1, 1)
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(shape))
        self.bias = nn.Parameter(torch.zeros(shape)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = x.dtype in (torch.float16, torch.bfloat16)
        out = F.normalize(x.float() if low else x, dim=1).to(x.dtype) * self.scale * self.gamma
        return out if self.bias is None else out + self.bias


class ResidualBlock(nn.Module):
    """``shortcut(x) + conv₂(silu(norm₂(conv₁(silu(norm₁ x)))))`` with causal 3×3×3 convolutions."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm1 = RMSNorm(in_dim, images=False)
        self.conv1 = CausalConv3d(in_dim, out_dim, 3, padding=1)
        self.norm2 = RMSNorm(out_dim, images=False)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = CausalConv3d(out_dim, out_dim, 3, padding=1)
        self.conv_shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, stream: Stream | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)), stream)
        h = self.conv2(F.silu(self.norm2(h)), stream)
        return self.conv_shortcut(x) + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame (no temporal mixing)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim)
        self.to_qkv = nn.Conv2d(dim, 3 * dim, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, stream: Stream | None = None) -> torch.Tensor:
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        q, k, v = self.to_qkv(self.norm(frames)).flatten(2).transpose(1, 2).chunk(3, dim=-1)  # (N, hw, c)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b * t, c, h, w)
        return x + self.proj(out).reshape(b, t, c, h, w).transpose(1, 2)


class Resample(nn.Module):
    """2× spatial up/downsampling per frame, optionally with 2× causal temporal resampling.

    Temporal upsampling leaves frame 0 alone and turns every later frame into two (a causal conv with 2C
    outputs); temporal downsampling keeps frame 0 and then maps frames ``(2i, 2i+1, 2i+2)`` to one (a valid
    stride-2 conv). Hence ``1 + 2k`` <-> ``1 + k`` frames.
    """

    def __init__(self, dim: int, mode: str, upsample_out_dim: int | None = None) -> None:
        super().__init__()
        self.mode = mode
        if mode.startswith("upsample"):
            self.resample = nn.Sequential(nn.Upsample(scale_factor=(2.0, 2.0), mode="nearest-exact"),
                                          nn.Conv2d(dim, upsample_out_dim or dim // 2, 3, padding=1))
            if mode == "upsample3d":
                self.time_conv = CausalConv3d(dim, 2 * dim, (3, 1, 1), padding=(1, 0, 0))
        elif mode.startswith("downsample"):
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
            if mode == "downsample3d":
                self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))
        else:
            raise ValueError(f"unknown resample mode {mode!r}")

    def _time_up(self, x: torch.Tensor, stream: Stream | None) -> torch.Tensor:
        head = None
        if _is_first(self, stream):
            head, x = x[:, :, :1], x[:, :, 1:]
            if stream is not None:
                stream.put(self, x[:, :, :0])
        if x.shape[2]:
            b, c, t, h, w = x.shape
            y = self.time_conv(x, stream).reshape(b, 2, c, t, h, w)
            x = torch.stack([y[:, 0], y[:, 1]], dim=3).reshape(b, c, 2 * t, h, w)  # frames interleaved
        return x if head is None else torch.cat([head, x], dim=2)

    def _time_down(self, x: torch.Tensor, stream: Stream | None) -> torch.Tensor:
        head = None
        if stream is not None:
            prev = stream.get(self)
            if prev is None:
                head = x[:, :, :1]
            else:
                x = torch.cat([prev, x], dim=2)
        else:
            head = x[:, :, :1]
        n = (x.shape[2] - 1) // 2  # complete windows (2i, 2i+1, 2i+2)
        if stream is not None:
            stream.put(self, x[:, :, 2 * n:])
        out = self.time_conv(x[:, :, :2 * n + 1]) if n else x[:, :, :0]
        return out if head is None else torch.cat([head, out], dim=2)

    def _spatial(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = x.transpose(1, 2).reshape(b * t, c, h, w)
        if self.mode.startswith("up"):  # nearest-exact in float32, as the reference
            y = self.resample[0](y.float()).to(x.dtype)
        else:
            y = self.resample[0](y)
        y = self.resample[1](y)
        return y.reshape(b, t, *y.shape[1:]).transpose(1, 2)

    def forward(self, x: torch.Tensor, stream: Stream | None = None) -> torch.Tensor:
        if self.mode == "upsample3d":
            x = self._time_up(x, stream)
        x = self._spatial(x)
        if self.mode == "downsample3d":
            x = self._time_down(x, stream)
        return x


class MidBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.attentions = nn.ModuleList([AttentionBlock(dim)])
        self.resnets = nn.ModuleList([ResidualBlock(dim, dim), ResidualBlock(dim, dim)])

    def forward(self, x: torch.Tensor, stream: Stream | None) -> torch.Tensor:
        x = self.resnets[0](x, stream)
        return self.resnets[1](self.attentions[0](x), stream)


def _avg_down(x: torch.Tensor, out_dim: int, ft: int, fs: int) -> torch.Tensor:
    """Parameter-free shortcut of Wan 2.2's down blocks: space/time-to-channel, then group means."""
    x = F.pad(x, (0, 0, 0, 0, (ft - x.shape[2] % ft) % ft, 0))
    b, c, t, h, w = x.shape
    x = x.reshape(b, c, t // ft, ft, h // fs, fs, w // fs, fs).permute(0, 1, 3, 5, 7, 2, 4, 6)
    return x.reshape(b, out_dim, -1, t // ft, h // fs, w // fs).mean(dim=2)


def _dup_up(x: torch.Tensor, out_dim: int, ft: int, fs: int, first: bool) -> torch.Tensor:
    """Parameter-free shortcut of Wan 2.2's up blocks: repeat channels, channel-to-space/time."""
    b, c, t, h, w = x.shape
    x = x.repeat_interleave(out_dim * ft * fs * fs // c, dim=1).reshape(b, out_dim, ft, fs, fs, t, h, w)
    x = x.permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, out_dim, t * ft, h * fs, w * fs)
    return x[:, :, ft - 1:] if first else x


class ResidualDownBlock(nn.Module):
    """Wan 2.2: resnets, optional resample, plus the average-pooling shortcut."""

    def __init__(self, in_dim: int, out_dim: int, blocks: int, temporal: bool, down: bool) -> None:
        super().__init__()
        self.out_dim, self.ft, self.fs = out_dim, 2 if temporal else 1, 2 if down else 1
        self.resnets = nn.ModuleList([ResidualBlock(in_dim if i == 0 else out_dim, out_dim) for i in range(blocks)])
        self.downsampler = Resample(out_dim, "downsample3d" if temporal else "downsample2d") if down else None

    def forward(self, x: torch.Tensor, stream: Stream | None) -> torch.Tensor:
        shortcut = _avg_down(x, self.out_dim, self.ft, self.fs)
        for resnet in self.resnets:
            x = resnet(x, stream)
        if self.downsampler is not None:
            x = self.downsampler(x, stream)
        return x + shortcut


class UpBlock(nn.Module):
    """Decoder level: ``blocks + 1`` resnets and an optional resample (Wan 2.2: plus a duplicating shortcut)."""

    def __init__(self, in_dim: int, out_dim: int, blocks: int, mode: str | None, residual: bool, temporal: bool):
        super().__init__()
        self.residual, self.out_dim, self.ft = residual, out_dim, 2 if temporal else 1
        self.resnets = nn.ModuleList([ResidualBlock(in_dim if i == 0 else out_dim, out_dim) for i in range(blocks + 1)])
        if residual:
            self.upsampler = Resample(out_dim, mode, upsample_out_dim=out_dim) if mode else None
        else:
            self.upsamplers = nn.ModuleList([Resample(out_dim, mode)]) if mode else None

    def forward(self, x: torch.Tensor, stream: Stream | None) -> torch.Tensor:
        first = _is_first(self, stream)
        if stream is not None and first:
            stream.put(self, x[:, :, :0])
        shortcut = x
        for resnet in self.resnets:
            x = resnet(x, stream)
        up = self.upsampler if self.residual else (self.upsamplers[0] if self.upsamplers is not None else None)
        if up is not None:
            x = up(x, stream)
            if self.residual:
                x = x + _dup_up(shortcut, self.out_dim, self.ft, 2, first)
        return x


class Encoder3d(nn.Module):
    def __init__(self, in_channels: int, dim: int, z_dim: int, dim_mult: Sequence[int], blocks: int,
                 attn_scales: Sequence[float], temporal: Sequence[bool], residual: bool) -> None:
        super().__init__()
        dims = [dim * m for m in (1, *dim_mult)]
        last = len(dim_mult) - 1
        self.conv_in = CausalConv3d(in_channels, dims[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        scale = 1.0
        for i, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
            if residual:
                self.down_blocks.append(ResidualDownBlock(d_in, d_out, blocks, i != last and temporal[i], i != last))
                continue
            for _ in range(blocks):
                self.down_blocks.append(ResidualBlock(d_in, d_out))
                if scale in attn_scales:
                    self.down_blocks.append(AttentionBlock(d_out))
                d_in = d_out
            if i != last:
                self.down_blocks.append(Resample(d_out, "downsample3d" if temporal[i] else "downsample2d"))
                scale /= 2.0
        self.mid_block = MidBlock(dims[-1])
        self.norm_out = RMSNorm(dims[-1], images=False)
        self.conv_out = CausalConv3d(dims[-1], z_dim, 3, padding=1)

    def forward(self, x: torch.Tensor, stream: Stream | None) -> torch.Tensor:
        x = self.conv_in(x, stream)
        for layer in self.down_blocks:
            x = layer(x, stream)
        x = self.mid_block(x, stream)
        return self.conv_out(F.silu(self.norm_out(x)), stream)


class Decoder3d(nn.Module):
    def __init__(self, dim: int, z_dim: int, dim_mult: Sequence[int], blocks: int, attn_scales: Sequence[float],
                 temporal: Sequence[bool], out_channels: int, residual: bool) -> None:
        super().__init__()
        dims = [dim * m for m in (dim_mult[-1], *dim_mult[::-1])]
        last = len(dim_mult) - 1
        self.conv_in = CausalConv3d(z_dim, dims[0], 3, padding=1)
        self.mid_block = MidBlock(dims[0])
        self.up_blocks = nn.ModuleList()
        for i, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
            if i > 0 and not residual:
                d_in //= 2  # the previous level's upsampler halved the channels
            up = i != last
            mode = ("upsample3d" if temporal[i] else "upsample2d") if up else None
            self.up_blocks.append(UpBlock(d_in, d_out, blocks, mode, residual, up and temporal[i]))
        self.norm_out = RMSNorm(dims[-1], images=False)
        self.conv_out = CausalConv3d(dims[-1], out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, stream: Stream | None) -> torch.Tensor:
        x = self.mid_block(self.conv_in(x, stream), stream)
        for block in self.up_blocks:
            x = block(x, stream)
        return self.conv_out(F.silu(self.norm_out(x)), stream)


def patchify(x: torch.Tensor, p: int | None) -> torch.Tensor:
    """``(B, C, T, H, W)`` -> ``(B, C·p², T, H/p, W/p)`` in Wan 2.2's channel order (c, pw, ph)."""
    if not p or p == 1:
        return x
    b, c, t, h, w = x.shape
    if h % p or w % p:
        raise ValueError(f"height {h} and width {w} must be multiples of the VAE patch size {p}")
    x = x.reshape(b, c, t, h // p, p, w // p, p).permute(0, 1, 6, 4, 2, 3, 5)
    return x.reshape(b, c * p * p, t, h // p, w // p)


def unpatchify(x: torch.Tensor, p: int | None) -> torch.Tensor:
    """Inverse of :func:`patchify`."""
    if not p or p == 1:
        return x
    b, cp, t, h, w = x.shape
    x = x.reshape(b, cp // (p * p), p, p, t, h, w).permute(0, 1, 4, 5, 3, 6, 2)
    return x.reshape(b, cp // (p * p), t, h * p, w * p)
