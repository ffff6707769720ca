"""The Conditioner: an image and micro-conditioning values in, ``(cond, uncond)`` out.

It composes the CLIP embedder (cross-attention token), the VAE encoding of the noise-augmented image
(concat latent; the encoder is injected by the pipeline, so conditioning never imports autoencoders) and
the scalar embedders (vector). The unconditional branch zeroes the token and the latent and keeps the
vector (sgm's ``force_uc_zero_embeddings``, diffusers' zero negative embeddings).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from vidiff.conditioning.clip import CLIPImageEmbedder
from vidiff.conditioning.cond import Cond
from vidiff.conditioning.embedders import SVD_SCALARS, embed_scalars, noise_augment, scalar_values
from vidiff.utils import Generators

Encode = Callable[[Tensor], Tensor]


class Conditioner:
    """SVD-style conditioning.

    ``clip``: image embedder, or None for models without cross-attention conditioning (a zero token of
    ``crossattn_dim`` is used); ``encode``: pixels ``(B, 3, H, W)`` in [-1, 1] -> unscaled latent
    ``(B, C, h, w)``; ``scalar_keys``: the embedded scalars in checkpoint order.
    """

    def __init__(self, clip: CLIPImageEmbedder | None, encode: Encode, *,
                 scalar_keys: Sequence[str] = SVD_SCALARS, scalar_dim: int = 256,
                 crossattn_dim: int | None = None) -> None:
        if clip is None and crossattn_dim is None:
            raise ValueError("a Conditioner without a CLIP embedder needs crossattn_dim for its zero token")
        self.clip = clip
        self.encode = encode
        self.scalar_keys = tuple(scalar_keys)
        self.scalar_dim = scalar_dim
        self.crossattn_dim = crossattn_dim

    def vector(self, batch: int, *, dtype: torch.dtype | None = None,
               device: torch.device | str | None = None, **values: float | Tensor) -> Tensor:
        """The embedded scalars ``(B, K·scalar_dim)``; values are first rounded to ``dtype`` (as diffusers
        passes them in the model's dtype) and embedded in float32."""
        raw = scalar_values(values, self.scalar_keys, batch, device)
        if dtype is not None:
            raw = raw.to(dtype).float()
        return embed_scalars(raw, self.scalar_dim)

    @torch.no_grad()
    def __call__(self, image: Tensor, *, num_frames: int, fps: float = 7, motion_bucket_id: float = 127,
                 noise_aug_strength: float = 0.02, generator: Generators = None,
                 clip_image: Tensor | None = None, dtype: torch.dtype | None = None) -> tuple[Cond, Cond]:
        """``image (B, 3, H, W)`` in [-1, 1] at the model's resolution -> ``(cond, uncond)``.

        ``clip_image`` is what CLIP sees (diffusers: the original-resolution image; sgm: ``image``).
        Draw order as diffusers: CLIP (no draw), noise augmentation, VAE encoding (posterior mode).
        """
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"conditioning image must be (B, 3, H, W), got {tuple(image.shape)}")
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        b = image.shape[0]
        if self.clip is not None:
            crossattn = self.clip(image if clip_image is None else clip_image)
        else:
            crossattn = torch.zeros(b, 1, self.crossattn_dim, device=image.device)
        noisy = noise_augment(image, noise_aug_strength, generator)
        concat = self.encode(noisy)  # (B, C, h, w), unscaled: SVD concatenates the raw posterior mode
        vector = self.vector(b, dtype=dtype, device=image.device, fps=fps, motion_bucket_id=motion_bucket_id,
                             noise_aug_strength=noise_aug_strength)
        cond = Cond(crossattn=crossattn, vector=vector, concat=concat).to(dtype=dtype)
        return cond, cond.zeros_like()


def drop_conditions(cond: Cond, keep: Tensor) -> Cond:
    """Classifier-free guidance dropout (Ho & Salimans 2022): the samples with ``keep (B,)`` = 0 get
    :meth:`Cond.zeros_like`'s unconditional token and concat latent (vector kept), the others are unchanged.

    ``keep`` is a Bernoulli(1 − ``ucg_rate``) draw per sample (sgm's ``ucg_rate``); training draws it per
    sample from its keyed generators (``vidiff.training.objectives.sample_draws``)."""
    if keep.shape != (cond.batch_size,):
        raise ValueError(f"keep must have shape ({cond.batch_size},), got {tuple(keep.shape)}")
    if not bool(((keep == 0) | (keep == 1)).all()):
        raise ValueError("keep must hold only 0 and 1")

    def apply(t: Tensor | None) -> Tensor | None:
        if t is None:
            return None
        return t * keep.to(t.device, t.dtype).view(-1, *([1] * (t.ndim - 1)))

    return Cond(crossattn=apply(cond.crossattn), vector=cond.vector, concat=apply(cond.concat))
