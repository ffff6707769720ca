"""The FID Inception-v3 (Szegedy et al. 2016) and per-frame FID (Heusel et al. 2017).

The network is pytorch-fid's port of the TensorFlow graph FID was defined with (``pt_inception-2015-12-05``):
torchvision's Inception-v3 layout (module names ``Conv2d_1a_3x3`` … ``Mixed_7c``, ``fc`` with 1008 classes,
no auxiliary head) with the blocks pytorch-fid swaps in to match TensorFlow:

- ``FIDInceptionA`` / ``FIDInceptionC`` / ``FIDInceptionE_1``: the pooling branch averages without counting
  the zero padding (``count_include_pad=False``);
- ``FIDInceptionE_2`` (``Mixed_7c``): the pooling branch takes the *max* (TensorFlow's graph has a max-pool
  there).

BasicConv2d = Conv2d (no bias) → BatchNorm2d(eps=1e-3) → ReLU. Features are the 2048-d global average pool
after ``Mixed_7c``; the input, images in [0, 1], is resized to 299×299 (bilinear, half-pixel centres) and
scaled to [−1, 1] (pytorch-fid's ``resize_input`` and ``normalize_input``).

:func:`frame_fid` treats every frame of every video as an image: the Fréchet distance between the Gaussians
fitted to the frames' features (so frame order does not matter). Weights come from the user
(:func:`convert_inception_weights`, ``vidiff convert-weights inception SRC DST``); nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vidiff.metrics.frechet import FeatureStats, frechet_distance_from_stats
from vidiff.metrics.videos import Videos, named_videos, resize_frames, to_rgb
from vidiff.metrics.weights import convert_network_weights, load_network_weights

__all__ = [
    "INCEPTION_NUM_FEATURES",
    "FIDInception",
    "convert_inception_weights",
    "frame_fid",
    "inception_features",
    "load_inception",
]

INCEPTION_NUM_FEATURES = 2048
INCEPTION_RESOLUTION = (299, 299)
_NETWORK = "Inception"
_Size = int | tuple[int, int]


class BasicConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: _Size, stride: int = 1, padding: _Size = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg3(x: torch.Tensor) -> torch.Tensor:
    """3×3 stride-1 average over the valid pixels only (TensorFlow's SAME average pool)."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg3(x))], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, stride=2)], 1)


class FIDInceptionC(nn.Module):
    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for i in range(1, 6):
            bd = getattr(self, f"branch7x7dbl_{i}")(bd)
        return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(_avg3(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = x
        for i in range(1, 5):
            b7 = getattr(self, f"branch7x7x3_{i}")(b7)
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class FIDInceptionE(nn.Module):
    """``FIDInceptionE_1`` (average pool without padding) or, with ``max_pool``, ``FIDInceptionE_2``."""

    def __init__(self, cin: int, *, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        pool = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg3(x)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pool)], 1)


class FIDInception(nn.Module):
    """pytorch-fid's FID Inception-v3; ``forward`` maps images ``(B, 3, H, W)`` in [0, 1] to ``(B, 2048)``."""

    def __init__(self, num_classes: int = 1008) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = FIDInceptionA(192, 32)
        self.Mixed_5c = FIDInceptionA(256, 64)
        self.Mixed_5d = FIDInceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = FIDInceptionC(768, 128)
        self.Mixed_6c = FIDInceptionC(768, 160)
        self.Mixed_6d = FIDInceptionC(768, 160)
        self.Mixed_6e = FIDInceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = FIDInceptionE(1280, max_pool=False)
        self.Mixed_7c = FIDInceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, num_classes)  # in the weight files; the FID features come before it

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"the FID Inception takes images (B, 3, H, W), got {tuple(images.shape)}")
        x = resize_frames(images, INCEPTION_RESOLUTION) * 2 - 1  # (B, 3, 299, 299) in [−1, 1]
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # (B, 64, 147, 147)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, stride=2)))  # (B, 192, 71, 71)
        x = F.max_pool2d(x, 3, stride=2)  # (B, 192, 35, 35)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)  # → (B, 768, 17, 17) → (B, 2048, 8, 8)
        return x.mean((2, 3))  # (B, 2048)


def load_inception(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> FIDInception:
    """The FID Inception in the safetensors file ``path`` (see :func:`convert_inception_weights`), eval mode;
    a missing file, a pickle or another network's weights raise ``ValueError`` naming ``path``."""
    return load_network_weights(FIDInception(), path, _NETWORK).to(device)  # type: ignore[return-value]


def convert_inception_weights(src: str | os.PathLike, dst: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Convert pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (read with ``weights_only=True``) to
    safetensors at ``dst``."""
    return convert_network_weights(FIDInception, _NETWORK, src, dst, overwrite=overwrite)


@torch.no_grad()
def inception_features(videos: Videos, inception: FIDInception, *, batch_size: int = 32,
                       what: str = "video") -> FeatureStats:
    """Streaming statistics of the 2048-d features of every frame of every video."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    param = next(inception.parameters())
    stats = FeatureStats(INCEPTION_NUM_FEATURES)
    for _, video in named_videos(videos, what):
        for chunk in to_rgb(video).split(batch_size):
            stats.update(inception(chunk.to(param.device, param.dtype)).double().cpu())
    if stats.count == 0:
        raise ValueError(f"no {what}s to compute FID on")
    return stats


def frame_fid(generated: Videos, reference: Videos, inception: FIDInception, *, batch_size: int = 32,
              reference_stats: FeatureStats | None = None) -> float:
    """Per-frame FID: the Fréchet distance between Inception features of all generated and all reference
    frames (module docstring); ``reference_stats`` replaces the reference videos when given."""
    gen = inception_features(generated, inception, batch_size=batch_size, what="generated video")
    ref = reference_stats if reference_stats is not None else inception_features(
        reference, inception, batch_size=batch_size, what="reference video")
    return frechet_distance_from_stats(gen, ref)
