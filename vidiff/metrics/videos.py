"""Video sets as the network metrics take them: tensors ``(T, C, H, W)`` in [0, 1], each with a name.

FVD, per-frame FID and the CLIP measures accept a 5-D tensor ``(N, T, C, H, W)``, a mapping name → video, or
any iterable of videos or ``(name, video)`` pairs (e.g. a generator that decodes files one at a time, so a
set never has to fit in memory). :func:`named_videos` turns each form into ``(name, video)`` pairs and
checks every video as it arrives; errors name the video (its file name when the caller gave one).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import torch
import torch.nn.functional as F

__all__ = ["Videos", "check_video", "named_videos", "resize_frames", "to_rgb"]

Videos = torch.Tensor | Mapping[str, torch.Tensor] | Iterable[torch.Tensor | tuple[str, torch.Tensor]]


def check_video(video: torch.Tensor, name: str) -> torch.Tensor:
    """``video`` if it is float ``(T, C, H, W)`` with C in {1, 3}; else ``ValueError`` naming it."""
    if not isinstance(video, torch.Tensor) or video.ndim != 4 or video.shape[1] not in (1, 3) \
            or not video.is_floating_point():
        got = f"{video.dtype} {tuple(video.shape)}" if isinstance(video, torch.Tensor) else type(video).__name__
        raise ValueError(f"{name}: expected a float video (T, C, H, W) in [0, 1] with 1 or 3 channels, got {got}")
    if video.shape[0] < 1:
        raise ValueError(f"{name}: the video has no frames")
    return video


def named_videos(videos: Videos, what: str = "video") -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, video)`` for each video of ``videos`` (module docstring), checked by :func:`check_video`.

    Unnamed videos are called ``"{what} {i}"`` (i counting from 0).
    """
    if isinstance(videos, torch.Tensor):
        if videos.ndim != 5:
            raise ValueError(f"{what}s: a tensor of videos must be (N, T, C, H, W), got {tuple(videos.shape)}")
        items: Iterable = iter(videos)
    elif isinstance(videos, Mapping):
        items = videos.items()
    else:
        items = videos
    for i, item in enumerate(items):
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            name, video = item
        else:
            name, video = f"{what} {i}", item
        yield name, check_video(video, name)


def to_rgb(frames: torch.Tensor) -> torch.Tensor:
    """``(..., C, H, W)`` with C = 1 repeated to 3 channels (as StyleGAN-V feeds grey videos)."""
    return frames.expand(*frames.shape[:-3], 3, *frames.shape[-2:]) if frames.shape[-3] == 1 else frames


def resize_frames(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``(N, C, H, W)`` to ``size`` with PyTorch's half-pixel centres
    (``align_corners=False``) and no antialiasing, the resize of StyleGAN-V, cd-fvd and pytorch-fid."""
    if tuple(frames.shape[-2:]) == tuple(size):
        return frames
    return F.interpolate(frames, size=size, mode="bilinear", align_corners=False)
