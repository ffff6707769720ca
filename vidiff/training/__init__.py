"""vidiff.training: loop, objectives, EMA, checkpoints, stages, distributed, data.

``from vidiff.training import TrainConfig, train`` — the public entry points are imported lazily so that
importing one submodule (e.g. ``vidiff.training.data``) does not pull in the whole loop.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "TrainConfig": "vidiff.training.config",
    "ConfigError": "vidiff.training.config",
    "train": "vidiff.training.loop",
    "TrainResult": "vidiff.training.loop",
    "EMA": "vidiff.training.ema",
    "load_checkpoint": "vidiff.training.checkpoint",
    "latest_checkpoint": "vidiff.training.checkpoint",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vidiff.training' has no attribute {name!r}")
