"""vidiff.pipelines: inference that composes conditioning, networks, diffusion and autoencoders.

Exports are resolved lazily so that light modules (settings, memory planning) import without torch
models being built or optional dependencies (transformers) being loaded.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "ImageToVideoPipeline": "vidiff.pipelines.image_to_video",
    "ImageToVideoOutput": "vidiff.pipelines.image_to_video",
    "bundled_model_path": "vidiff.pipelines.image_to_video",
    "GenerationSettings": "vidiff.pipelines.settings",
    "generate_long_video": "vidiff.pipelines.long_video_pipeline",
    "LongVideoResult": "vidiff.pipelines.long_video_pipeline",
    "MemoryPlan": "vidiff.pipelines.memory",
    "plan_for_budget": "vidiff.pipelines.memory",
    "load_model": "vidiff.pipelines.loading",
    "LoadedModel": "vidiff.pipelines.loading",
    "TextToVideoPipeline": "vidiff.pipelines.text_to_video",
    "SV3DPipeline": "vidiff.pipelines.sv3d",
    "sv3d_orbit": "vidiff.pipelines.sv3d",
    "SV4DPipeline": "vidiff.pipelines.sv4d",
    "SV4DOutput": "vidiff.pipelines.sv4d",
    "SV4DVariant": "vidiff.pipelines.sv4d_schedule",
    "sv4d_model_type": "vidiff.pipelines.sv4d",
    "load_wan_pipeline": "vidiff.pipelines.wan_loading",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vidiff.pipelines' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
