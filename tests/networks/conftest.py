"""Shared fixtures for the network tests: random weights that leave no layer trivially zero or identity."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import nn


@dataclass(frozen=True)
class SimpleCond:
    """Minimal object satisfying ``vidiff.networks.unet_st.VideoCond`` (networks may not import Cond)."""

    crossattn: torch.Tensor
    vector: torch.Tensor
    concat: torch.Tensor | None = None


def _randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Re-draw every parameter and float buffer: weights ~ N(0, 1/fan_in), norm scales 1 + N(0, 0.2²),
    biases ~ N(0, 0.1²), mix factors ~ N(0, 1) (α away from 0.5 and different per layer)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        tensors = list(module.named_parameters()) + [
            (n, b) for n, b in module.named_buffers() if b.is_floating_point()
        ]
        for name, p in sorted(tensors, key=lambda item: item[0]):
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("mix_factor"):
                p.copy_(noise)
            elif p.ndim >= 2:
                fan_in = math.prod(p.shape[1:])
                p.copy_(noise / math.sqrt(fan_in))
            elif name.endswith("weight"):  # GroupNorm / LayerNorm scale
                p.copy_(1 + 0.2 * noise)
            else:
                p.copy_(0.1 * noise)
    return module


@pytest.fixture
def randomize() -> Callable[..., nn.Module]:
    return _randomize


@pytest.fixture
def cond_cls() -> type[SimpleCond]:
    return SimpleCond
