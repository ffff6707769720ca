"""CLIP image conditioning: antialiased resize to the encoder's input size and the projected image embedding.

SVD conditions its cross-attention on one token: the projected pooled CLIP ViT-H/14 embedding of the
input image (Radford et al. 2021), computed on the image blurred and resized to 224x224 without keeping
the aspect ratio (the resize of sgm's ``FrozenOpenCLIPImageEmbedder`` and diffusers' SVD pipeline).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _gaussian_kernel(size: int, sigma: Tensor) -> Tensor:
    """Normalised 1-D Gaussian of odd ``size`` centred on the middle tap."""
    x = torch.arange(size, dtype=sigma.dtype, device=sigma.device) - size // 2
    k = torch.exp(-x.pow(2) / (2 * sigma.pow(2)))
    return k / k.sum()


def _blur_axis(x: Tensor, kernel: Tensor, axis: int) -> Tensor:
    """Depthwise convolution along ``axis`` (-1: width, -2: height) with reflect padding."""
    c = x.shape[1]
    k = kernel.numel()
    pad = (k - 1) // 2
    if axis == -1:
        x = F.pad(x, (pad, k - 1 - pad, 0, 0), mode="reflect")
        weight = kernel.view(1, 1, 1, k)
    else:
        x = F.pad(x, (0, 0, pad, k - 1 - pad), mode="reflect")
        weight = kernel.view(1, 1, k, 1)
    return F.conv2d(x, weight.expand(c, 1, *weight.shape[2:]).to(x.dtype), groups=c)


def resize_antialiased(x: Tensor, size: Sequence[int]) -> Tensor:
    """Resize ``(B, C, H, W)`` to ``size`` with a Gaussian pre-blur, then bicubic (align_corners=True).

    The blur's standard deviation per axis is ``max((factor − 1)/2, 0.001)`` for a downscale ``factor``
    (skimage's anti-aliasing rule) with a kernel of ``max(4σ, 3)`` taps made odd: kornia's
    ``resize(antialias=True)``, which sgm's CLIP embedder uses.
    """
    h, w = x.shape[-2:]
    out_h, out_w = int(size[0]), int(size[1])
    sigmas = [max((h / out_h - 1.0) / 2.0, 0.001), max((w / out_w - 1.0) / 2.0, 0.001)]
    taps = [int(max(4.0 * s, 3)) for s in sigmas]
    taps = [t + 1 if t % 2 == 0 else t for t in taps]
    sig = torch.tensor(sigmas, dtype=x.dtype, device=x.device)
    x = _blur_axis(x, _gaussian_kernel(taps[1], sig[1]), axis=-1)
    x = _blur_axis(x, _gaussian_kernel(taps[0], sig[0]), axis=-2)
    return F.interpolate(x, size=(out_h, out_w), mode="bicubic", align_corners=True)


class CLIPImageEmbedder(nn.Module):
    """``(B, 3, H, W)`` pixels in [-1, 1] -> ``(B, 1, D)`` projected CLIP image embeddings.

    Wraps a transformers ``CLIPVisionModelWithProjection`` (or any module returning an object with
    ``image_embeds``); ``mean``/``std`` come from the checkpoint's feature extractor.
    """

    def __init__(self, encoder: nn.Module, *, mean: Sequence[float] = OPENAI_CLIP_MEAN,
                 std: Sequence[float] = OPENAI_CLIP_STD, image_size: int | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        cfg = getattr(encoder, "config", None)
        self.image_size = int(image_size or getattr(cfg, "image_size", 224))
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("mean", mean_t, persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.encoder.parameters()).dtype

    def preprocess(self, pixels: Tensor) -> Tensor:
        """Resize in [-1, 1] (as the references do), back to [0, 1], then normalise with CLIP's mean/std."""
        x = resize_antialiased(pixels.float(), (self.image_size, self.image_size))
        x = (x + 1.0) / 2.0
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def forward(self, pixels: Tensor) -> Tensor:
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"CLIPImageEmbedder expects (B, 3, H, W) pixels, got {tuple(pixels.shape)}")
        x = self.preprocess(pixels).to(self.dtype)
        out = self.encoder(pixel_values=x)
        embeds = out.image_embeds if hasattr(out, "image_embeds") else out
        return embeds[:, None]  # (B, 1, D): one cross-attention token
