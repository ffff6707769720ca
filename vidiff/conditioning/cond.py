"""The typed conditioning every video network in vidiff reads: ``Cond(crossattn, vector, concat)``."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor


@dataclass(frozen=True)
class Cond:
    """Conditioning of a batch of B videos (sgm's ``crossattn`` / ``vector`` / ``concat`` keys).

    - ``crossattn``: ``(B, N, D)`` cross-attention tokens (SVD: one CLIP image token);
    - ``vector``: ``(B, D)`` or per-frame ``(B, T, D)`` embedded scalars (SVD: sinusoids of fps−1,
      motion bucket and noise-augmentation strength, 3 × 256);
    - ``concat``: ``(B, T, C, h, w)`` or per-video ``(B, C, h, w)`` latents concatenated to the noisy input
      on the channel axis (SVD: the unscaled VAE latent of the noise-augmented image).
    """

    crossattn: Tensor | None = None
    vector: Tensor | None = None
    concat: Tensor | None = None

    def __post_init__(self) -> None:
        sizes = {f.name: t.shape[0] for f in fields(self) if (t := getattr(self, f.name)) is not None}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"Cond tensors disagree on the batch size: {sizes}")

    @property
    def batch_size(self) -> int:
        for f in fields(self):
            t = getattr(self, f.name)
            if t is not None:
                return int(t.shape[0])
        return 0

    def _map(self, fn) -> Cond:
        return type(self)(**{f.name: None if (t := getattr(self, f.name)) is None else fn(t) for f in fields(self)})

    def cat(self, other: Cond) -> Cond:
        """Batch two conditionings (``[self, other]``), as classifier-free guidance evaluates them."""
        out = {}
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if (a is None) != (b is None):
                raise ValueError(f"cannot batch Cond: {f.name} is set in one and None in the other")
            out[f.name] = None if a is None else torch.cat([a, b.to(a.dtype)])
        return type(self)(**out)  # subclasses (TextCond) keep their type and fields

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Cond:
        """Move every tensor (floating-point ones are cast to ``dtype`` when given)."""
        return self._map(lambda t: t.to(device=device, dtype=dtype if t.is_floating_point() else None))

    def zeros_like(self, *, keep_vector: bool = True) -> Cond:
        """The unconditional counterpart: zero tokens and zero concat latent; the vector is kept
        (sgm's ``force_uc_zero_embeddings`` for SVD; diffusers' zero negative embeddings)."""
        return Cond(
            crossattn=None if self.crossattn is None else torch.zeros_like(self.crossattn),
            vector=self.vector if self.vector is None or keep_vector else torch.zeros_like(self.vector),
            concat=None if self.concat is None else torch.zeros_like(self.concat),
        )


@dataclass(frozen=True)
class SV4DCond(Cond):
    """:class:`Cond` plus ``cond_view (B, V, C, h, w)``: the unscaled latents of the V reference views
    (SV4D, Xie et al. 2024; SV4D 2.0, Yao et al. 2025), which the network's motion blocks attend to.

    For SV4D, ``crossattn (B, T, D)`` holds one CLIP token per time, ``vector (B, T·V, D)`` and ``concat
    (B, T·V, C, h, w)`` one row per latent, flattened time-major (latent ``t·V + v``).
    """

    cond_view: Tensor | None = None

    def zeros_like(self, *, keep_vector: bool = True, vector: Tensor | None = None) -> SV4DCond:
        """sgm's unconditional branch for SV4D: CLIP tokens, concat latents and reference views zeroed
        (``cond_frames_without_noise``, ``cond_frames``, ``cond_view``). sgm's zeroing of ``cond_frames`` also
        zeroes that embedder's second output, the cond-σ columns ``[:256]`` of the vector, while the camera
        columns are kept: pass that unconditional ``vector`` (otherwise the vector is kept, or zeroed with
        ``keep_vector=False``)."""
        base = super().zeros_like(keep_vector=keep_vector)
        return SV4DCond(crossattn=base.crossattn, vector=base.vector if vector is None else vector, concat=base.concat,
                        cond_view=None if self.cond_view is None else torch.zeros_like(self.cond_view))
