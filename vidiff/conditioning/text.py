"""Text conditioning through a UMT5 encoder (Wan 2.x), and CLIP image tokens for Wan 2.1 image-to-video.

The encoder and tokenizer are transformers objects (``UMT5EncoderModel`` and the model folder's tokenizer),
imported lazily. Prompts are cleaned as Wan's reference does (HTML entities unescaped, whitespace collapsed),
tokenised to a fixed ``max_sequence_length`` and encoded with the padding masked; the embeddings of the
padding positions are then set to zero, so every prompt is a ``(max_sequence_length, d_model)`` matrix.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from vidiff.conditioning.cond import Cond

__all__ = ["TextCond", "UMT5TextEncoder", "clean_prompt", "clip_image_tokens"]


@dataclass(frozen=True)
class TextCond(Cond):
    """:class:`Cond` plus ``image (B, N, D_img)``: CLIP image tokens attended through separate keys and
    values (Wan 2.1 I2V). ``crossattn`` holds the text-encoder tokens ``(B, L, D_text)``."""

    image: Tensor | None = None


def clean_prompt(text: str) -> str:
    """Unescape HTML entities (twice, as the reference) and collapse runs of whitespace."""
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


class UMT5TextEncoder:
    """Prompts -> ``(B, max_sequence_length, d_model)`` token embeddings, zero beyond each prompt's length."""

    def __init__(self, tokenizer: Any, text_encoder: torch.nn.Module) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder

    @property
    def dtype(self) -> torch.dtype:
        return next(self.text_encoder.parameters()).dtype

    @torch.no_grad()
    def __call__(self, prompts: str | list[str], max_sequence_length: int = 512,
                 device: torch.device | str | None = None) -> Tensor:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not all(isinstance(p, str) for p in prompts):
            raise TypeError(f"prompts must be strings, got {[type(p).__name__ for p in prompts]}")
        tokens = self.tokenizer([clean_prompt(p) for p in prompts], padding="max_length",
                                max_length=max_sequence_length, truncation=True, add_special_tokens=True,
                                return_attention_mask=True, return_tensors="pt")
        param = next(self.text_encoder.parameters())
        mask = tokens.attention_mask.to(param.device)
        hidden = self.text_encoder(tokens.input_ids.to(param.device), mask).last_hidden_state
        hidden = hidden * (torch.arange(hidden.shape[1], device=hidden.device)[None] < mask.gt(0).sum(1, keepdim=True))[
            ..., None].to(hidden.dtype)  # zero the padding positions
        return hidden.to(device or param.device)


@torch.no_grad()
def clip_image_tokens(image_encoder: torch.nn.Module, image_processor: Any, images: Any) -> Tensor:
    """CLIP vision tokens of the penultimate layer ``(B, 1 + patches, D)`` (Wan 2.1 I2V's image context;
    ``image_processor`` is the checkpoint's ``CLIPImageProcessor``: resize, centre crop, normalise)."""
    param = next(image_encoder.parameters())
    pixels = image_processor(images=images, return_tensors="pt").pixel_values.to(param.device, param.dtype)
    return image_encoder(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
