"""Sinusoidal embeddings of continuous scalars (noise level, fps, motion bucket, camera angles)."""

from __future__ import annotations

import math

import torch


def timestep_embedding(
    t: torch.Tensor, dim: int, *, max_period: float = 10000.0, flip_sin_to_cos: bool = True
) -> torch.Tensor:
    """Embed scalars ``t`` of shape ``(N,)`` as ``(N, dim)`` sinusoids, computed in float32.

    Transformer positional encoding (Vaswani et al. 2017, Sec. 3.5) applied to continuous values:
    frequencies ``f_k = max_period^(-k/half)`` for ``k < half = dim // 2``; the output is
    ``[cos(t f), sin(t f)]`` (``flip_sin_to_cos``, as SVD/sgm use) or ``[sin, cos]``; an odd ``dim``
    gets one zero column.
    """
    if t.ndim != 1:
        raise ValueError(f"timestep_embedding expects a 1-D tensor of scalars, got shape {tuple(t.shape)}")
    half = dim // 2
    k = torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(-math.log(max_period) * k / half)
    args = t.float()[:, None] * freqs[None]
    first, second = (torch.cos(args), torch.sin(args)) if flip_sin_to_cos else (torch.sin(args), torch.cos(args))
    emb = torch.cat([first, second], dim=-1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb
