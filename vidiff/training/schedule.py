"""Learning-rate schedule: linear warm-up, then cosine decay (Loshchilov & Hutter 2017, SGDR) or constant.

The schedule is a pure function of the optimizer step, so its whole state is that step: checkpoints store
it as JSON and a resumed run continues on the same curve.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def lr_at(step: int, *, base_lr: float, max_steps: int, warmup_steps: int = 0, decay: str = "cosine",
          min_lr_ratio: float = 0.0) -> float:
    """LR for optimizer step ``step`` (0-based: the LR used by the update that makes ``step + 1``).

    Warm-up: ``lr · (step + 1) / warmup_steps`` for ``step < warmup_steps``; then cosine from ``lr`` to
    ``min_lr_ratio · lr`` at ``max_steps``: ``min + (lr − min)·½(1 + cos(π·p))``, ``p`` the decay progress.
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if decay == "constant":
        return base_lr
    if decay != "cosine":
        raise ValueError(f"unknown decay {decay!r}")
    span = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    floor = base_lr * min_lr_ratio
    return floor + (base_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosineSchedule:
    """Sets every param group's ``lr`` from :func:`lr_at`; ``step()`` advances by one optimizer step."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, base_lr: float, max_steps: int,
                 warmup_steps: int = 0, decay: str = "cosine", min_lr_ratio: float = 0.0,
                 last_step: int = 0) -> None:
        self.optimizer = optimizer
        self.base_lr = base_lr
        self.max_steps = max_steps
        self.warmup_steps = warmup_steps
        self.decay = decay
        self.min_lr_ratio = min_lr_ratio
        self.step_count = last_step
        self._apply()

    def get_lr(self) -> float:
        return lr_at(self.step_count, base_lr=self.base_lr, max_steps=self.max_steps,
                     warmup_steps=self.warmup_steps, decay=self.decay, min_lr_ratio=self.min_lr_ratio)

    def _apply(self) -> None:
        lr = self.get_lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        return {"step_count": self.step_count, "base_lr": self.base_lr, "max_steps": self.max_steps,
                "warmup_steps": self.warmup_steps, "decay": self.decay, "min_lr_ratio": self.min_lr_ratio}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = int(state["step_count"])
        self._apply()
