"""Exponential moving average of model weights (Polyak averaging; as in DDPM/EDM/SVD training).

``ema ← d·ema + (1 − d)·θ`` after each optimizer step, with the warm-up ``d_t = min(decay, (1+t)/(10+t))``
so early averages are not dominated by the random initialisation. Shadow tensors are float32 copies
keyed by the model's ``state_dict`` names (buffers are copied, not averaged).
"""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """EMA of a module's floating-point parameters (shadow in float32, on the parameters' device)."""

    def __init__(self, module: nn.Module, decay: float = 0.999, *, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.shadow: dict[str, torch.Tensor] = {
            name: _full(t).detach().to(torch.float32).clone() for name, t in _named_state(module).items()
        }

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        t = self.num_updates
        return min(self.decay, (1.0 + t) / (10.0 + t))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        d = self.current_decay()
        params = dict(module.named_parameters())
        for name, t in _named_state(module).items():
            s = self.shadow[name]
            t = _full(t)  # FSDP2 DTensor shard: average the full weight (collective)
            if name in params and t.is_floating_point():
                s.mul_(d).add_(t.detach().to(torch.float32), alpha=1.0 - d)
            else:
                s.copy_(t.detach())
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Load the averaged weights into ``module`` (cast to its dtypes)."""
        for name, t in _named_state(module).items():
            t.copy_(self.shadow[name].to(t.dtype))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor], num_updates: int) -> None:
        missing = sorted(set(self.shadow) - set(state))
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} tensors, e.g. {missing[:3]}")
        for name, s in self.shadow.items():
            s.copy_(state[name])
        self.num_updates = int(num_updates)


def _named_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: t for n, t in module.state_dict(keep_vars=True).items() if t.is_floating_point()}


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t
