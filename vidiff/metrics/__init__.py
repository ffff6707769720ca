"""vidiff.metrics"""

from vidiff.metrics.frechet import FeatureStats, frechet_distance, frechet_distance_from_stats
from vidiff.metrics.temporal import (
    colour_drift,
    dynamic_degree,
    seam_ratio,
    temporal_flickering,
    warp_error,
)

__all__ = [
    "FeatureStats",
    "colour_drift",
    "dynamic_degree",
    "frechet_distance",
    "frechet_distance_from_stats",
    "seam_ratio",
    "temporal_flickering",
    "warp_error",
]
