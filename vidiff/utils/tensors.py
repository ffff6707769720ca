"""Broadcasting helpers: the one place where per-sample scalars are reshaped against data."""

from __future__ import annotations

import torch


def append_dims(x: torch.Tensor, target_ndim: int) -> torch.Tensor:
    """Append trailing singleton dims so a per-sample tensor broadcasts against ``target_ndim`` data.

    ``sigma`` of shape ``(B,)`` against ``x`` of shape ``(B, T, C, H, W)`` becomes ``(B, 1, 1, 1, 1)``.
    """
    missing = target_ndim - x.ndim
    if missing < 0:
        raise ValueError(f"cannot append dims: input has {x.ndim} dims, target has {target_ndim}")
    return x.reshape(*x.shape, *([1] * missing))
