"""Frame-by-frame video reading and writing, for work whose memory must not grow with the clip's length.

The same decoders, encoders, colour handling and atomic output as :mod:`vidiff.io.video` (this module
feeds its readers and writers one frame at a time instead of a whole ``(T, C, H, W)`` tensor):

* :func:`iter_video` yields ``(3, H, W)`` float frames in [0, 1], decoding one at a time;
* :func:`write_video_stream` pulls frames from an iterator and encodes each as it arrives (mp4, webm and
  png folders); :class:`VideoStreamWriter` is the same for a producer that pushes frames (a sampler's
  callback), encoding on a background thread. GIF (one palette computed from all frames) and animated WebP
  (Pillow saves a list) cannot be encoded incrementally: for those the frames are gathered first.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vidiff.io.atomic import atomic_file
from vidiff.io.video import (
    VideoError,
    _as_fraction,
    _check_exists,
    _check_target,
    _format_of,
    _is_folder,
    _is_webp,
    _pil_frames,
    _to_uint8_hwc,
    _write_av,
    _write_folder,
    av_frames,
    write_video,
)

__all__ = ["STREAMED_FORMATS", "VideoStreamWriter", "iter_video", "write_video_stream"]

STREAMED_FORMATS = ("mp4", "webm", "png")  # encoded one frame at a time; gif and webp are gathered first


def _uint8_frames(path: Path) -> Iterator[np.ndarray]:
    if _is_folder(path) or _is_webp(path):
        for load in _pil_frames(path):
            yield load()
        return
    count = 0
    for arr in av_frames(path):
        count += 1
        yield arr
    if not count:
        raise VideoError(f"{path}: no frames")


def iter_video(path: str | os.PathLike) -> Iterator[torch.Tensor]:
    """Decode ``path`` one frame at a time: ``(3, H, W)`` float frames in [0, 1], as :func:`read_video`
    returns them stacked. Raises :class:`VideoError` naming the path (missing, corrupt, no frames)."""
    p = Path(path)
    _check_exists(p)
    for arr in _uint8_frames(p):
        yield torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float().div_(255)


class _FrameSource:
    """What the writers of :mod:`vidiff.io.video` read from a ``(T, H, W, 3)`` uint8 array — its length,
    shape and iteration — backed by an iterator, so each frame is converted only when it is encoded."""

    def __init__(self, frames: Iterator[Any], num_frames: int) -> None:
        self._frames = frames
        self._first = _to_uint8_hwc(next(frames)[None])[0]
        self.shape = (num_frames, *self._first.shape)
        self._seen = 0

    def __len__(self) -> int:
        return self.shape[0]

    def __iter__(self) -> Iterator[np.ndarray]:
        for frame in self._chain():
            self._seen += 1
            if self._seen > len(self):
                raise ValueError(f"the stream holds more than the {len(self)} frames announced")
            yield frame
        if self._seen != len(self):
            raise ValueError(f"the stream ended after {self._seen} of the {len(self)} frames announced")

    def _chain(self) -> Iterator[np.ndarray]:
        yield self._first
        for frame in self._frames:
            arr = _to_uint8_hwc(frame[None])[0]
            if arr.shape != self._first.shape:
                raise ValueError(f"frame of shape {arr.shape} in a stream of {self._first.shape} frames")
            yield arr


def write_video_stream(frames: Iterable[Any], path: str | os.PathLike, fps: float, num_frames: int, *,
                       format: str | None = None) -> Path:
    """Write ``num_frames`` frames (``(C, H, W)`` float [0, 1] tensors or uint8, one at a time) atomically.

    mp4, webm and png folders are encoded as the frames arrive; gif and webp gather them first (see the
    module docstring). A stream that holds another number of frames raises ``ValueError`` and writes
    nothing; so does any error raised by the iterator.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    fmt = _format_of(path, format)
    out = Path(path)
    _check_target(out, fmt)
    it = iter(frames)
    if fmt not in STREAMED_FORMATS:
        gathered = [f for f, _ in zip(it, range(num_frames + 1))]
        if len(gathered) != num_frames:
            raise ValueError(f"the stream holds {len(gathered)} frames, not the {num_frames} announced")
        return write_video(torch.stack([torch.as_tensor(f) for f in gathered]), out, fps, format=fmt)
    rate = _as_fraction(fps)
    source = _FrameSource(it, num_frames)
    if fmt == "png":
        _write_folder(source, out, rate)  # type: ignore[arg-type]
    else:
        with atomic_file(out) as tmp:
            _write_av(source, str(tmp), rate, fmt, None, None, {})  # type: ignore[arg-type]
    return out


class _Abort(Exception):
    """Raised inside the encoder's frame iterator when the producer gives up: nothing is written."""


_END = object()


class VideoStreamWriter:
    """Push ``num_frames`` frames into :func:`write_video_stream` as a producer makes them.

    ``push`` takes ``(n, C, H, W)`` frames (uint8, or float in [0, 1]); an encoder thread writes each as it
    arrives, so memory holds at most ``buffer`` frames, not the clip. Use as a context manager: a clean exit
    waits for the file (raising the encoder's error, if any); an exception, or fewer frames than announced,
    writes nothing and leaves an existing file at ``path`` as it was.
    """

    def __init__(self, path: str | os.PathLike, fps: float, num_frames: int, *, buffer: int = 32,
                 format: str | None = None) -> None:
        fmt = _format_of(path, format)
        _check_target(Path(path), fmt)  # refuse a bad target before any frame is made
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, buffer))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._encode, args=(path, fps, num_frames, fmt), daemon=True)
        self._thread.start()

    def _frames(self) -> Iterator[Any]:
        while (item := self._queue.get()) is not _END:
            if isinstance(item, _Abort):
                raise item
            yield item

    def _encode(self, path: str | os.PathLike, fps: float, num_frames: int, fmt: str) -> None:
        try:
            write_video_stream(self._frames(), path, fps, num_frames, format=fmt)
        except BaseException as e:  # handed to the producer at its next push or at close
            self._error = e
            while not self._queue.empty():
                self._queue.get_nowait()  # unblock a producer waiting on a full queue

    def _put(self, item: Any) -> None:
        while True:
            if self._error is not None:
                raise self._error
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                if not self._thread.is_alive():
                    raise RuntimeError("the video encoder stopped") from self._error

    def push(self, frames: Any) -> None:
        """Queue each frame of ``frames`` (``(n, C, H, W)``) for encoding; raises the encoder's error."""
        for frame in frames:
            self._put(frame)

    def close(self) -> None:
        """Finish the file: wait for the encoder and raise its error (a frame count short of the one announced
        is a ``ValueError`` and writes nothing)."""
        if self._thread.is_alive():
            self._put(_END)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        """Give up: the encoder stops and removes its temporary output; ``path`` keeps what it held."""
        while self._thread.is_alive():
            try:
                self._queue.put(_Abort(), timeout=0.2)
                break
            except queue.Full:
                continue  # the encoder is still taking frames: it will make room
        self._thread.join()

    def __enter__(self) -> VideoStreamWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
