"""vidiff.postprocess: filters applied to finished videos (deflickering), streaming over frames.

Imports ``utils``, ``io`` and ``metrics`` (for optical flow) only; the CLI and pipelines' callers use it.
"""

from vidiff.postprocess.deflicker import (
    DeflickerConfig,
    DeflickerPlan,
    apply_deflicker,
    deflicker_frames,
    deflicker_video,
    plan_deflicker,
)

__all__ = ["DeflickerConfig", "DeflickerPlan", "apply_deflicker", "deflicker_frames", "deflicker_video",
           "plan_deflicker"]
