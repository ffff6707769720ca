"""Motion predictor: a small convolutional head predicting optical flow between consecutive frames.

Trained beside motion-consistency training (``vidiff.training.objectives``): the head reads the *clean*
training clip ``x₀ (B, T, C, H, W)`` (latents or pixels) and predicts, for every pair of consecutive frames
``(x_i, x_{i+1})``, a backward flow ``f_i (B, T−1, 2, H, W)`` in pixels, channel 0 the horizontal (x, width)
and channel 1 the vertical (y, height) displacement, such that ``x_i(p) ≈ x_{i+1}(p + f_i(p))``. It is
supervised by the endpoint error against the fixed estimator's flow of that clip
(``objectives.reference_flow``), as FlowNet is trained (Dosovitskiy et al. 2015), and never judges the
denoiser's prediction: a flow read from the prediction by a head that starts at zero makes a still
prediction the cheapest one (``benchmarks/flow_consistency.py`` measures it). Pair-wise
correlation-free design in the spirit of FlowNetSimple, scaled down to a few 3×3 convolutions; the last
layer starts at zero (zero flow at initialisation).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class MotionPredictorConfig:
    """``in_channels``: channels of one frame (4 for SVD latents, 3 for pixels)."""

    in_channels: int = 4
    hidden_channels: int = 32
    num_layers: int = 3
    groups: int = 8

    def __post_init__(self) -> None:
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {self.in_channels}")
        if self.hidden_channels < 1 or self.hidden_channels % self.groups:
            raise ValueError(f"hidden_channels ({self.hidden_channels}) must be a positive multiple of "
                             f"groups ({self.groups})")
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class MotionPredictor(nn.Module):
    """``forward(x (B, T, C, H, W)) -> flow (B, T−1, 2, H, W)`` (pixels; x then y)."""

    def __init__(self, config: MotionPredictorConfig | None = None) -> None:
        super().__init__()
        self.config = config or MotionPredictorConfig()
        c, h = self.config.in_channels, self.config.hidden_channels
        layers: list[nn.Module] = [nn.Conv2d(2 * c, h, 3, padding=1)]
        for _ in range(self.config.num_layers - 1):
            layers += [nn.GroupNorm(self.config.groups, h), nn.SiLU(), nn.Conv2d(h, h, 3, padding=1)]
        self.body = nn.Sequential(*layers)
        self.norm_out = nn.GroupNorm(self.config.groups, h)
        self.conv_out = nn.Conv2d(h, 2, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # identity warp at initialisation
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise ValueError(f"MotionPredictor expects (B, T, C, H, W), got shape {tuple(x.shape)}")
        b, t, c, hh, ww = x.shape
        if t < 2:
            raise ValueError(f"MotionPredictor needs at least 2 frames, got {t}")
        if c != self.config.in_channels:
            raise ValueError(f"MotionPredictor built for {self.config.in_channels} channels, got {c}")
        pairs = torch.cat([x[:, :-1], x[:, 1:]], dim=2)  # (B, T-1, 2C, H, W)
        h = self.body(pairs.flatten(0, 1).to(self.conv_out.weight.dtype))  # (B(T-1), hidden, H, W)
        flow = self.conv_out(nn.functional.silu(self.norm_out(h)))  # (B(T-1), 2, H, W)
        return flow.reshape(b, t - 1, 2, hh, ww)
