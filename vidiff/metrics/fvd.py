"""Fréchet Video Distance (Unterthiner et al. 2018) with StyleGAN-V's protocol (Skorokhodov et al. 2022).

FVD is the Fréchet distance (:mod:`vidiff.metrics.frechet`) between Gaussians fitted to I3D features
(:mod:`vidiff.metrics.i3d`: the 400 time-averaged Kinetics logits) of clips of the generated and the reference
videos. The clip length changes the value, so the number is reported with its variant, named as StyleGAN-V
registers them (``src/metrics/metric_main.py``):

=============================  ======  ===========  =========  ==================
variant                        videos  clip frames  subsample  frames spanned
=============================  ======  ===========  =========  ==================
``fvd2048_16f``                2048    16           1          16
``fvd2048_128f``               2048    128          1          128
``fvd2048_128f_subsample8f``   2048    16           8          128 (every 8th)
=============================  ======  ===========  =========  ==================

Clip sampling (``src/metrics/frechet_video_distance.py``, ``src/training/dataset.py``), with ``n`` the clip
frames, ``s`` the subsample factor and ``L`` a video's frame count:

- a clip is the frames ``start, start + s, …, start + (n − 1)·s``;
- a video needs ``L ≥ n·s`` frames (StyleGAN-V's ``discard_short_videos`` bound, although the last frame read
  is ``start + (n − 1)·s``); a shorter one is a ``ValueError`` naming it (StyleGAN-V silently drops short
  reference videos and fails on short generated ones);
- generated videos: ``start = 0`` (StyleGAN-V samples its generator at ``t = 0, s, …, (n − 1)·s`` and reads
  generated sets without a random offset);
- reference videos: ``start`` uniform in ``{0, …, L − n·s + s − 1}`` (StyleGAN-V's
  ``random.randint(0, L − n·s + s − 1)``), drawn here from ``torch.Generator().manual_seed(seed)`` in video
  order so that a run is reproducible; ``random_offset=False`` takes ``start = 0`` instead;
- one clip per video; the first 2048 videos of each set are used (StyleGAN-V: ``min(len(dataset), 2048)``
  real videos, 2048 generated ones); fewer give a warning, since FVD is biased for small sets.

Each clip is quantised to the 256 levels of uint8 frames as StyleGAN-V feeds its detector
(``floor(255·x + 0.5)``, its ``(img·127.5 + 128).to(uint8)`` for [−1, 1] images), resized per frame to
224×224 (bilinear, half-pixel centres, aspect ratio not kept), and scaled to [−1, 1] (``2·q/255 − 1``): the
detector's ``rescale=True, resize=True`` path. Grey videos are repeated to three channels. Features stream
batch by batch into :class:`~vidiff.metrics.frechet.FeatureStats` (float64), so sets of any size fit.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from vidiff.metrics.frechet import FeatureStats, frechet_distance_from_stats
from vidiff.metrics.i3d import I3D
from vidiff.metrics.videos import Videos, named_videos, resize_frames, to_rgb

__all__ = ["FVD_VARIANTS", "FVDVariant", "clip_indices", "fvd", "fvd_features", "i3d_preprocess",
           "sample_clip"]

I3D_RESOLUTION = (224, 224)


@dataclass(frozen=True)
class FVDVariant:
    """One of StyleGAN-V's FVD protocols: how many videos, clip frames and the temporal subsample factor."""

    num_videos: int
    num_frames: int
    subsample: int = 1

    @property
    def min_frames(self) -> int:
        """Frames a video needs (``n·s``, StyleGAN-V's bound)."""
        return self.num_frames * self.subsample


FVD_VARIANTS: dict[str, FVDVariant] = {
    "fvd2048_16f": FVDVariant(2048, 16),
    "fvd2048_128f": FVDVariant(2048, 128),
    "fvd2048_128f_subsample8f": FVDVariant(2048, 16, 8),
}


def _variant(variant: str | FVDVariant) -> FVDVariant:
    if isinstance(variant, FVDVariant):
        return variant
    if variant not in FVD_VARIANTS:
        raise ValueError(f"unknown FVD variant {variant!r}; choose from {', '.join(FVD_VARIANTS)}")
    return FVD_VARIANTS[variant]


def clip_indices(length: int, variant: str | FVDVariant, start: int = 0, *, name: str = "video") -> list[int]:
    """The frame indices of the clip starting at ``start`` of a ``length``-frame video (module docstring)."""
    v = _variant(variant)
    if length < v.min_frames:
        raise ValueError(f"{name}: has {length} frames; {variant if isinstance(variant, str) else 'FVD'} needs "
                         f"at least {v.min_frames} ({v.num_frames} frames, every {v.subsample})")
    last_start = length - v.min_frames + v.subsample - 1
    if not 0 <= start <= last_start:
        raise ValueError(f"{name}: clip start {start} outside 0..{last_start}")
    return [start + k * v.subsample for k in range(v.num_frames)]


def sample_clip(video: torch.Tensor, variant: str | FVDVariant, *, random_offset: bool,
                generator: torch.Generator | None = None, name: str = "video") -> torch.Tensor:
    """The clip ``(n, C, H, W)`` of ``video`` that FVD measures: from frame 0, or from a start drawn uniformly
    from ``{0, …, L − n·s + s − 1}`` with ``generator`` when ``random_offset``."""
    v = _variant(variant)
    length = video.shape[0]
    clip_indices(length, variant, 0, name=name)  # checks the length
    start = 0
    if random_offset:
        start = int(torch.randint(0, length - v.min_frames + v.subsample, (), generator=generator))
    return video[clip_indices(length, variant, start, name=name)]


def i3d_preprocess(clips: torch.Tensor) -> torch.Tensor:
    """Clips ``(B, T, C, H, W)`` in [0, 1] → I3D input ``(B, 3, T, 224, 224)`` in [−1, 1] (module docstring)."""
    b, t = clips.shape[:2]
    q = torch.floor(clips.float() * 255 + 0.5).clamp(0, 255)  # the uint8 levels StyleGAN-V's detector sees
    frames = resize_frames(to_rgb(q).reshape(b * t, -1, *q.shape[-2:]), I3D_RESOLUTION)
    return (frames * (2 / 255) - 1).reshape(b, t, 3, *I3D_RESOLUTION).transpose(1, 2)


def _batches(clips: Iterator[torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
    batch: list[torch.Tensor] = []
    for clip in clips:
        if batch and clip.shape != batch[0].shape:  # another frame size: stack what came before
            yield torch.stack(batch)
            batch = []
        batch.append(clip)
        if len(batch) == batch_size:
            yield torch.stack(batch)
            batch = []
    if batch:
        yield torch.stack(batch)


@torch.no_grad()
def fvd_features(videos: Videos, *, variant: str | FVDVariant, i3d: I3D, random_offset: bool, seed: int = 0,
                 batch_size: int = 4, what: str = "video") -> FeatureStats:
    """Streaming I3D feature statistics of one clip of each of the first ``num_videos`` videos.

    ``random_offset``: False for generated videos, True for reference ones (module docstring); ``seed``
    seeds the offsets. ``what`` names unnamed videos in errors.
    """
    v = _variant(variant)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    gen = torch.Generator().manual_seed(seed)
    param = next(i3d.parameters())
    count = [0]

    def clips() -> Iterator[torch.Tensor]:
        for name, video in named_videos(videos, what):
            if count[0] == v.num_videos:
                return
            count[0] += 1
            yield sample_clip(video, variant, random_offset=random_offset, generator=gen, name=name)

    stats = FeatureStats()
    for batch in _batches(clips(), batch_size):
        stats.update(i3d(i3d_preprocess(batch).to(param.device, param.dtype)).double().cpu())
    if stats.count == 0:
        raise ValueError(f"no {what}s to compute FVD on")
    if stats.count < v.num_videos:
        warnings.warn(f"FVD over {stats.count} {what}s instead of {v.num_videos}: small sets bias FVD upwards",
                      stacklevel=2)
    return stats


def fvd(generated: Videos, reference: Videos, *, variant: str | FVDVariant, i3d: I3D, seed: int = 0,
        batch_size: int = 4, reference_stats: FeatureStats | None = None) -> float:
    """FVD between ``generated`` and ``reference`` videos ((T, C, H, W) in [0, 1]) under ``variant``.

    Generated clips start at frame 0, reference clips at seeded random offsets (module docstring).
    ``reference_stats`` (e.g. cached with :meth:`FeatureStats.state_dict`) replaces the reference videos.
    """
    gen_stats = fvd_features(generated, variant=variant, i3d=i3d, random_offset=False, seed=seed,
                             batch_size=batch_size, what="generated video")
    if reference_stats is None:
        reference_stats = fvd_features(reference, variant=variant, i3d=i3d, random_offset=True, seed=seed,
                                       batch_size=batch_size, what="reference video")
    return frechet_distance_from_stats(gen_stats, reference_stats)
