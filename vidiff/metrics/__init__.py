"""vidiff.metrics: video quality measures, each module citing its paper and reference implementation.

Weight-free (import freely):

- :mod:`~vidiff.metrics.frechet` — ``FeatureStats`` (streaming float64 moments), ``frechet_distance``.
- :mod:`~vidiff.metrics.temporal` — VBench's ``temporal_flickering`` and ``dynamic_degree``, Lai et al.'s
  ``warp_error``, ``seam_ratio``, ``colour_drift``; :mod:`~vidiff.metrics.flow` the optical flow they use.
- :mod:`~vidiff.metrics.fidelity` — ``psnr``, ``ssim`` (Wang et al. 2004, skimage's values),
  ``first_frame_fidelity`` against the conditioning image.

With networks whose weights the user supplies (nothing is downloaded; import the module when needed):

- :mod:`~vidiff.metrics.i3d` — ``I3D``, ``load_i3d(path)``, ``convert_i3d_weights(src, dst)``.
- :mod:`~vidiff.metrics.fvd` — ``FVD_VARIANTS`` (StyleGAN-V's ``fvd2048_16f``, ``fvd2048_128f``,
  ``fvd2048_128f_subsample8f``), ``fvd(generated, reference, *, variant, i3d)``, ``fvd_features``,
  ``clip_indices`` / ``sample_clip`` (the clip sampling).
- :mod:`~vidiff.metrics.inception` — ``FIDInception``, ``load_inception(path)``,
  ``convert_inception_weights(src, dst)``, ``frame_fid(generated, reference, inception)``.
- :mod:`~vidiff.metrics.clip_consistency` — ``load_clip(folder)`` (transformers' CLIP image tower),
  ``clip_consistency(video, encoder)`` (VBench's background consistency), ``clip_consistency_curve``,
  ``clip_consistency_set``.

Weights are converted once to safetensors with ``vidiff convert-weights {i3d,inception} SRC DST``
(:mod:`~vidiff.metrics.weights`). Videos are ``(T, C, H, W)`` float tensors in [0, 1]; sets of videos are
tensors ``(N, T, C, H, W)``, mappings name → video or iterables (:mod:`~vidiff.metrics.videos`).
"""

from vidiff.metrics.fidelity import first_frame_fidelity, psnr, ssim
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
    "first_frame_fidelity",
    "frechet_distance",
    "frechet_distance_from_stats",
    "psnr",
    "seam_ratio",
    "ssim",
    "temporal_flickering",
    "warp_error",
]
