"""CLIP temporal consistency: VBench's ``background_consistency`` (Huang et al. 2024, ``vbench/
background_consistency.py``) with transformers' CLIP image tower and weights the user points to.

Each frame is embedded by CLIP's image encoder (the projected embedding, ``encode_image``) and L2-normalised;
for every frame t ≥ 1

    c_t = ( max(0, cos(e_t, e_{t−1})) + max(0, cos(e_t, e_0)) ) / 2,

the video's score is the mean of ``c_t`` (1.0 for a one-frame video), and a set's score is the sum of ``c_t``
over all its frames divided by their count (VBench's ``sim / cnt``, frame-weighted). VBench runs this with
CLIP ViT-B/32 for the background and DINO ViT-B/16 for the subject; any CLIP checkpoint loads here (a
transformers folder of ``CLIPVisionModelWithProjection`` or a full ``CLIPModel``, safetensors only).

Frames go through VBench's ``clip_transform``: resize the shorter side to the model's image size (bicubic,
antialiased, rounded to uint8 levels as torchvision resizes uint8 frames), centre crop, scale to [0, 1] and
normalise with CLIP's mean and standard deviation.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from vidiff.metrics.videos import Videos, check_video, named_videos, to_rgb

__all__ = ["CLIPImageEncoder", "clip_consistency", "clip_consistency_curve", "clip_consistency_set",
           "load_clip"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class CLIPImageEncoder:
    """A ``CLIPVisionModelWithProjection`` with VBench's preprocessing: frames → unit-norm embeddings."""

    def __init__(self, model: Any) -> None:
        self.model = model.eval().requires_grad_(False)
        self.image_size = int(model.config.image_size)

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` in [0, 1] → ``(N, 3, S, S)`` normalised CLIP input (module docstring)."""
        x = to_rgb(frames).float() * 255
        h, w = x.shape[-2:]
        n = self.image_size
        size = (n, int(n * w / h)) if h <= w else (int(n * h / w), n)  # torchvision's Resize(int)
        if (h, w) != size:
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
            x = x.round().clamp(0, 255)  # torchvision resizes uint8 frames to uint8
        top, left = round((size[0] - n) / 2), round((size[1] - n) / 2)
        x = x[..., top:top + n, left:left + n] / 255
        mean = torch.tensor(CLIP_MEAN, dtype=x.dtype).view(3, 1, 1)
        std = torch.tensor(CLIP_STD, dtype=x.dtype).view(3, 1, 1)
        return (x - mean) / std

    def to(self, device: str | torch.device) -> CLIPImageEncoder:
        """Move the model to ``device``; returns ``self``."""
        self.model.to(device)
        return self

    @torch.no_grad()
    def __call__(self, frames: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """Unit-norm image embeddings ``(N, D)`` (float32, on the CPU) of frames ``(N, C, H, W)`` in [0, 1]."""
        device = next(self.model.parameters()).device
        out = [self.model(pixel_values=self.preprocess(chunk).to(device)).image_embeds.float().cpu()
               for chunk in frames.split(batch_size)]
        return F.normalize(torch.cat(out), dim=-1)


def load_clip(folder: str | os.PathLike, *, device: str | torch.device = "cpu") -> CLIPImageEncoder:
    """The CLIP image encoder saved in the transformers folder ``folder`` (nothing is downloaded).

    A missing folder, a folder without a CLIP vision config or safetensors weights, or weights that leave
    parameters of the image tower unset raise ``ValueError`` naming ``folder``.
    """
    path = Path(folder)
    if not path.is_dir():
        raise ValueError(f"{path}: CLIP folder not found")
    if not (path / "config.json").is_file():
        raise ValueError(f"{path}: not a transformers folder (no config.json)")
    try:
        model_type = json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
        raise ValueError(f"{path / 'config.json'}: not a valid config ({e})") from None
    if model_type not in ("clip", "clip_vision_model"):
        raise ValueError(f"{path}: config.json says model_type {model_type!r}, not a CLIP image encoder "
                         "('clip' or 'clip_vision_model')")
    from transformers import CLIPVisionModelWithProjection

    try:
        model, info = CLIPVisionModelWithProjection.from_pretrained(
            str(path), local_files_only=True, use_safetensors=True, output_loading_info=True)
    except Exception as e:  # transformers raises OSError, ValueError, KeyError... for unusable folders
        msg = " ".join(str(e).split())[:300] or type(e).__name__
        raise ValueError(f"{path}: cannot load a CLIP image encoder ({msg})") from None
    missing = sorted(info.get("missing_keys", ())) + [str(k) for k in info.get("mismatched_keys", ())]
    if missing:
        shown = ", ".join(missing[:3]) + (f", ... ({len(missing) - 3} more)" if len(missing) > 3 else "")
        raise ValueError(f"{path}: not CLIP image-encoder weights; {len(missing)} missing or mismatched: {shown}")
    return CLIPImageEncoder(model.to(device))


def _pair_scores(emb: torch.Tensor) -> torch.Tensor:
    prev = (emb[1:] * emb[:-1]).sum(-1).clamp_min(0)  # cos(e_t, e_{t−1}), unit vectors
    first = (emb[1:] * emb[:1]).sum(-1).clamp_min(0)  # cos(e_t, e_0)
    return (prev + first) / 2


def clip_consistency_curve(video: torch.Tensor, encoder: CLIPImageEncoder, *, batch_size: int = 32) -> torch.Tensor:
    """``c_t`` for t = 1…T−1 (module docstring): ``(T − 1,)`` float64."""
    check_video(video, "video")
    return _pair_scores(encoder(video, batch_size).double())


def clip_consistency(video: torch.Tensor, encoder: CLIPImageEncoder, *, batch_size: int = 32) -> float:
    """The video's CLIP temporal consistency, the mean of ``c_t`` (1.0 for a single frame)."""
    curve = clip_consistency_curve(video, encoder, batch_size=batch_size)
    return float(curve.mean()) if curve.numel() else 1.0


def clip_consistency_set(videos: Videos, encoder: CLIPImageEncoder, *, batch_size: int = 32) -> float:
    """VBench's dimension score over a set: all ``c_t`` of all videos summed, over their count."""
    total, count = 0.0, 0
    for _, video in named_videos(videos):
        curve = clip_consistency_curve(video, encoder, batch_size=batch_size)
        total, count = total + float(curve.sum()), count + curve.numel()
    return total / count if count else 1.0
