"""Video and image reading/writing: PyAV (FFmpeg) for mp4/webm/gif, Pillow for webp, png folders and images.

Tensors here are single clips ``(T, C, H, W)`` float in [0, 1] (images ``(C, H, W)``); the library's
``(B, T, C, H, W)`` in [-1, 1] layout is converted by the caller.

Formats written (chosen by the path's extension, or ``format=``):

* ``.mp4`` — H.264 (``libx264``), ``yuv420p``. H.264 4:2:0 cannot code odd widths/heights (its SPS
  cropping works in 2-pixel units), so for odd sizes the default ``pix_fmt=None`` switches to ``yuv444p``
  (High 4:4:4 profile): the file decodes to exactly the requested size. Passing ``pix_fmt="yuv420p"``
  with an odd size instead pads the frames by edge replication to even size (with a warning).
* ``.webm`` — VP9 (``libvpx-vp9``), ``yuv420p`` at constant quality; odd sizes are native to VP9.
* ``.gif`` — FFmpeg's GIF encoder with one global 256-colour palette (median cut, no dithering). GIF
  stores delays in centiseconds, so frame times are rounded to 10 ms (the average rate is kept).
* ``.webp`` — animated WebP through Pillow (FFmpeg cannot decode animated WebP), delays in whole ms.
* a folder (path without extension or ending in ``/``) — ``frame_0000.png``, … plus ``video.json``
  holding ``fps``.

Every write goes to a temporary file (or folder) in the destination directory and is renamed into place,
so a failed write leaves an existing output untouched.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from av.video.reformatter import ColorRange, Colorspace, Interpolation, VideoReformatter
from PIL import Image, ImageOps

from vidiff.io.atomic import atomic_dir, atomic_file, check_writable

__all__ = [
    "IMAGE_EXTENSIONS",
    "VIDEO_FORMATS",
    "ImageError",
    "VideoError",
    "VideoInfo",
    "av_frames",
    "check_video_output",
    "is_frames_folder",
    "probe_video",
    "read_image",
    "read_video",
    "video_format_for",
    "write_image",
    "write_video",
]

VIDEO_FORMATS = ("mp4", "webm", "gif", "webp", "png")  # "png" = a folder of png frames
_EXT_TO_FORMAT = {".mp4": "mp4", ".webm": "webm", ".gif": "gif", ".webp": "webp"}
IMAGE_EXTENSIONS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP",
                    ".tif": "TIFF", ".tiff": "TIFF"}
FOLDER_META = "video.json"
# swscale's default yuv420p<->rgb24 fast path replicates chroma (nearest), costing ~10 dB PSNR on smooth
# colour; full chroma interpolation with accurate rounding is used both ways instead. Conversions run on one
# thread (swscale's slice threads gave different pixels at slice edges when the machine was loaded), each video
# through its own VideoReformatter (with PyAV's shared one, encoding a video changed the bytes of the next).
_SWS_FLAGS = (Interpolation.BICUBIC | Interpolation.FULL_CHR_H_INT | Interpolation.FULL_CHR_H_INP
              | Interpolation.ACCURATE_RND)
_BT601 = 6  # AVCOL_SPC / AVCOL_PRI / AVCOL_TRC value of SMPTE 170M (BT.601), tagged on what we encode
DEFAULT_FOLDER_FPS = 30.0  # a png folder without video.json


class VideoError(ValueError):
    """A video that cannot be read (missing, corrupt, no video stream, no frames)."""


class ImageError(ValueError):
    """An image that cannot be read (missing or not an image)."""


@dataclass(frozen=True)
class VideoInfo:
    """Cheap metadata of a video. ``duration = num_frames / fps`` in seconds."""

    num_frames: int
    fps: float
    width: int
    height: int
    duration: float


# -- frames in -----------------------------------------------------------------------------------------
def _to_uint8_hwc(frames: Any) -> np.ndarray:
    """``(T, C, H, W)`` float [0, 1] / uint8 tensor or array, or PIL images → ``(T, H, W, 3)`` uint8."""
    if isinstance(frames, (list, tuple)):
        if not frames:
            raise ValueError("frames is empty")
        if all(isinstance(f, Image.Image) for f in frames):
            arrs = [np.asarray(f.convert("RGB")) for f in frames]
            if len({a.shape for a in arrs}) != 1:
                raise ValueError(f"all frames must have one size, got {sorted({a.shape for a in arrs})}")
            return np.stack(arrs)
        frames = torch.stack([torch.as_tensor(np.asarray(f)) for f in frames])
    x = torch.as_tensor(frames) if not isinstance(frames, torch.Tensor) else frames
    if x.ndim != 4:
        raise ValueError(f"frames must be (T, C, H, W), got shape {tuple(x.shape)} "
                         "(index one video of a batch)")
    if x.shape[0] == 0:
        raise ValueError("frames is empty (T = 0)")
    if x.shape[1] not in (1, 3, 4):
        raise ValueError(f"frames must be (T, C, H, W) with C in (1, 3, 4), got shape {tuple(x.shape)}")
    x = x.detach().cpu()
    if x.dtype != torch.uint8:
        if not x.is_floating_point():
            raise ValueError(f"frames must be float in [0, 1] or uint8, got {x.dtype}")
        if not torch.isfinite(x).all():
            raise ValueError("frames contain NaN or infinite values")
        x = (x.float().clamp(0, 1) * 255).round().to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return np.ascontiguousarray(x[:, :3].permute(0, 2, 3, 1).numpy())


def _as_fraction(fps: float) -> Fraction:
    if not (isinstance(fps, (int, float, Fraction)) and np.isfinite(float(fps)) and float(fps) > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    return Fraction(fps).limit_denominator(1001) if not isinstance(fps, Fraction) else fps


def _format_of(path: str | os.PathLike, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in VIDEO_FORMATS:
            raise ValueError(f"format {fmt!r} is not one of {list(VIDEO_FORMATS)}")
        return fmt
    s = os.fspath(path)
    ext = Path(s).suffix.lower()
    if s.endswith(("/", os.sep)) or not ext:
        return "png"
    if ext not in _EXT_TO_FORMAT:
        raise ValueError(f"unsupported video extension {ext!r} for {s}; supported: "
                         f"{sorted(_EXT_TO_FORMAT)} or a folder (no extension) of png frames")
    return _EXT_TO_FORMAT[ext]


# -- writers -------------------------------------------------------------------------------------------
def _write_av(arr: np.ndarray, dst: str, fps: Fraction, fmt: str, crf: int | None, pix_fmt: str | None,
              options: dict[str, str]) -> None:
    h, w = arr.shape[1:3]
    if fmt == "mp4":
        codec, container_fmt = "libx264", "mp4"
        odd = h % 2 or w % 2
        pix_fmt = pix_fmt or ("yuv444p" if odd else "yuv420p")
        if odd and pix_fmt in ("yuv420p", "yuvj420p", "nv12"):
            warnings.warn(f"{pix_fmt} needs even sizes: padding {w}x{h} by edge replication to "
                          f"{w + w % 2}x{h + h % 2}", stacklevel=3)
            arr = np.pad(arr, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
            h, w = arr.shape[1:3]
        # the same frames give the same bytes in any process, however loaded the machine: one x264 thread (with
        # frame threads the stream differed under load) and no MB-tree (its SIMD propagation made the bytes
        # depend on what the process had encoded before: 3 different files from 5 encodes of the same frames)
        opts = {"crf": str(18 if crf is None else crf), "preset": "medium", "threads": "1",
                "x264-params": "mbtree=0"}
    elif fmt == "webm":
        codec, container_fmt, pix_fmt = "libvpx-vp9", "webm", pix_fmt or "yuv420p"
        opts = {"crf": str(30 if crf is None else crf), "b": "0", "row-mt": "1", "deadline": "good",
                "cpu-used": "4"}
    else:  # gif
        codec, container_fmt, pix_fmt = "gif", "gif", "pal8"
        opts = {}
    opts.update(options)
    with av.open(dst, "w", format=container_fmt) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        stream.options = opts
        if fmt == "gif":
            frames = _gif_frames(arr)
        else:
            cc = stream.codec_context
            cc.colorspace = cc.color_primaries = cc.color_trc = _BT601
            cc.color_range = int(ColorRange.MPEG)
            sws = VideoReformatter()  # this video's own conversion context: nothing carried from another video
            frames = (sws.reformat(av.VideoFrame.from_ndarray(a, format="rgb24"), format=pix_fmt,
                                   dst_colorspace=Colorspace.ITU601, dst_color_range=ColorRange.MPEG,
                                   interpolation=_SWS_FLAGS, threads=1) for a in arr)
        for frame in frames:
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def _gif_frames(arr: np.ndarray) -> Any:
    """pal8 frames sharing one median-cut palette computed from (a subsample of) all frames."""
    t, h, w, _ = arr.shape
    step = max(1, int(np.ceil(np.sqrt(t * h * w / 2**20))))  # ~1 Mpixel of samples at most
    sample = arr[:: max(1, t // 16), ::step, ::step].reshape(-1, w // step + (w % step > 0), 3)
    pal_img = Image.fromarray(np.ascontiguousarray(sample)).quantize(256, method=Image.Quantize.MEDIANCUT)
    pal = np.zeros((256, 3), np.uint8)
    p = np.asarray(pal_img.getpalette(), np.uint8).reshape(-1, 3)[:256]
    pal[: len(p)] = p
    argb = np.concatenate([np.full((256, 1), 255, np.uint8), pal], axis=1)
    for a in arr:
        idx = Image.fromarray(a).quantize(palette=pal_img, dither=Image.Dither.NONE)
        yield av.VideoFrame.from_ndarray((np.asarray(idx), argb), format="pal8")


def _write_webp(arr: np.ndarray, dst: str, fps: Fraction, quality: int, lossless: bool) -> None:
    ms = [round(i * 1000 / fps) for i in range(len(arr) + 1)]  # cumulative rounding keeps the mean rate
    durations = [b - a for a, b in itertools.pairwise(ms)]
    imgs = [Image.fromarray(a) for a in arr]
    imgs[0].save(dst, format="WEBP", save_all=True, append_images=imgs[1:], duration=durations, loop=0,
                 quality=quality, lossless=lossless, method=4)


FRAME_PATTERN = re.compile(r"frame_\d{4,}\.png")
SIDECAR_NAME = "settings.json"  # what ``vidiff generate`` writes into a frames folder


def is_frames_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder :func:`write_video` wrote (``video.json``, ``frame_NNNN.png`` and the
    sidecar, nothing else): the only kind of existing folder a frames output may replace."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink() or not (path / FOLDER_META).is_file():
        return False
    return all(p.name in (FOLDER_META, SIDECAR_NAME) or FRAME_PATTERN.fullmatch(p.name) for p in path.iterdir())


def _check_target(path: Path, fmt: str) -> None:
    """What an output may replace: a png-frames output only an earlier one (never a folder of the user's
    files), a video file only a file."""
    if fmt == "png":
        if (path.exists() or path.is_symlink()) and not path.is_dir():
            raise ValueError(f"{path} exists and is not a folder")
        if path.exists() and not is_frames_folder(path):
            raise ValueError(f"{path} is a folder that vidiff did not write (not only frame_NNNN.png and "
                             f"{FOLDER_META}); refusing to replace it: choose a new folder")
    elif path.is_dir():
        raise ValueError(f"{path} is a folder: name a video file, or end the path with / for png frames")


def check_video_output(path: str | os.PathLike, format: str | None = None) -> str:
    """The format :func:`write_video` would use for ``path``, once checked that the write can succeed (see
    ``vidiff.io.atomic.check_writable``) and would replace nothing but an earlier output: call it before
    expensive work. ``ValueError`` names the path and the problem."""
    fmt = _format_of(path, format)
    _check_target(Path(path), fmt)
    check_writable(path)
    return fmt


def _write_folder(arr: np.ndarray, path: Path, fps: Fraction) -> None:
    with atomic_dir(path) as tmp:
        digits = max(4, len(str(len(arr) - 1)))
        for i, a in enumerate(arr):
            Image.fromarray(a).save(tmp / f"frame_{i:0{digits}d}.png", format="PNG")
        meta = {"fps": float(fps), "num_frames": len(arr), "width": arr.shape[2], "height": arr.shape[1]}
        (tmp / FOLDER_META).write_text(json.dumps(meta))


def _atomic_file(path: Path, write: Any) -> None:
    with atomic_file(path) as tmp:
        write(str(tmp))


def video_format_for(path: str | os.PathLike) -> str:
    """The format ``write_video`` would use for ``path`` (``ValueError`` naming an unknown extension)."""
    return _format_of(path, None)


def write_video(frames: Any, path: str | os.PathLike, fps: float, *, format: str | None = None,
                crf: int | None = None, quality: int = 95, lossless: bool = False, pix_fmt: str | None = None,
                codec_options: dict[str, str] | None = None) -> Path:
    """Write a clip atomically and return its path.

    ``frames``: ``(T, C, H, W)`` float tensor/array in [0, 1] (clamped; NaN/inf rejected) or uint8, or a
    list of PIL images; C = 1 is repeated to RGB, C = 4 drops alpha. ``crf`` is the constant-quality level
    of mp4 (libx264, default 18) and webm (VP9, default 30); ``quality``/``lossless`` apply to webp;
    ``pix_fmt`` overrides the mp4/webm pixel format; ``codec_options`` are passed to the FFmpeg encoder.
    """
    fmt = _format_of(path, format)
    arr = _to_uint8_hwc(frames)
    rate = _as_fraction(fps)
    out = Path(path)
    _check_target(out, fmt)
    if fmt == "png":
        _write_folder(arr, out, rate)
    elif fmt == "webp":
        _atomic_file(out, lambda tmp: _write_webp(arr, tmp, rate, quality, lossless))
    else:
        opts = {str(k): str(v) for k, v in (codec_options or {}).items()}
        _atomic_file(out, lambda tmp: _write_av(arr, tmp, rate, fmt, crf, pix_fmt, opts))
    return out


# -- readers -------------------------------------------------------------------------------------------
def _is_folder(path: Path) -> bool:
    return path.is_dir()


def _folder_frames(path: Path) -> tuple[list[Path], float]:
    files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith("."))
    if not files:
        raise VideoError(f"{path}: folder holds no png frames")
    fps = DEFAULT_FOLDER_FPS
    meta = path / FOLDER_META
    if meta.is_file():
        try:
            fps = float(json.loads(meta.read_text())["fps"])
        except (ValueError, KeyError, TypeError) as e:
            raise VideoError(f"{meta}: unreadable metadata ({e})") from e
    return files, fps


def _open_av(path: Path) -> tuple[Any, Any]:
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        raise VideoError(f"{path}: cannot open as a video ({e})") from e
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: no video stream")
    return container, container.streams.video[0]


def _is_webp(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(12)
    return head[:4] == b"RIFF" and head[8:12] == b"WEBP"


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise VideoError(f"{path}: no such file or folder")


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Frame count, fps and size without decoding (packets are demuxed when the stream lacks a count)."""
    p = Path(path)
    _check_exists(p)
    if _is_folder(p):
        files, fps = _folder_frames(p)
        w, h = _pil_size(files[0])
        return VideoInfo(len(files), fps, w, h, len(files) / fps)
    if _is_webp(p):
        with _open_pil(p) as im:
            n = getattr(im, "n_frames", 1)
            im.seek(n - 1)
            im.load()  # Pillow fills the frame's timestamp/duration (ms) when it decodes it
            total_ms = im.info.get("timestamp", 0) + im.info.get("duration", 0)
            fps = n * 1000 / total_ms if total_ms > 0 else DEFAULT_FOLDER_FPS
            return VideoInfo(n, fps, im.width, im.height, n / fps)
    container, stream = _open_av(p)
    with container:
        try:
            n = stream.frames
            pts = None
            if n <= 0 or stream.codec_context.name == "gif":
                pts = [pk.pts for pk in container.demux(stream) if pk.size]
                n = len(pts)
        except av.error.FFmpegError as e:
            raise VideoError(f"{p}: corrupt video ({e})") from e
        fps = _fps(stream, pts)
        if n <= 0:
            raise VideoError(f"{p}: no frames")
        return VideoInfo(n, fps, stream.width, stream.height, n / fps)


def _fps(stream: Any, pts: list[int | None] | None) -> float:
    if stream.codec_context.name == "gif" and pts and len(pts) > 1 and None not in pts:
        span = (pts[-1] - pts[0]) * stream.time_base  # per-frame delays: use the mean frame interval
        if span > 0:
            return float((len(pts) - 1) / span)
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return float(rate)
    raise VideoError("video stream has no frame rate")


def _pil_size(path: Path) -> tuple[int, int]:
    with _open_pil(path) as im:
        return im.size


def _open_pil(path: Path) -> Image.Image:
    try:
        return Image.open(path)
    except (OSError, Image.DecompressionBombError) as e:
        raise VideoError(f"{path}: cannot open ({e})") from e


def read_video(path: str | os.PathLike, *, max_frames: int | None = None, stride: int = 1,
               start: int = 0) -> tuple[torch.Tensor, float]:
    """Decode frames ``start, start+stride, …`` (at most ``max_frames``) as ``(T, 3, H, W)`` float in [0, 1].

    Returns ``(frames, fps)`` where ``fps`` is the rate of the returned clip, ``source fps / stride``.
    Decoding stops as soon as enough frames are read. Raises :class:`VideoError` naming the path.
    """
    if stride < 1 or start < 0 or (max_frames is not None and max_frames < 1):
        raise ValueError(f"need stride >= 1, start >= 0, max_frames >= 1; "
                         f"got {stride}, {start}, {max_frames}")
    p = Path(path)
    _check_exists(p)
    last = None if max_frames is None else start + (max_frames - 1) * stride

    def wanted(i: int) -> bool:
        return i >= start and (i - start) % stride == 0

    out: list[np.ndarray] = []
    if _is_folder(p) or _is_webp(p):
        src_fps = probe_video(p).fps
        for i, frame in enumerate(_pil_frames(p)):
            if last is not None and i > last:
                break
            if wanted(i):
                out.append(frame())
    else:
        container, stream = _open_av(p)
        with container:
            src_fps = probe_video(p).fps if stream.codec_context.name == "gif" else _fps(stream, None)
        for i, frame in enumerate(av_frames(p)):
            if last is not None and i > last:
                break
            if wanted(i):
                out.append(frame)
    if not out:
        raise VideoError(f"{p}: no frames at start={start} (stride={stride})")
    video = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float().div_(255)
    return video, src_fps / stride


def av_frames(path: Path) -> Any:
    """Decode an FFmpeg-readable file one frame at a time, ``(H, W, 3)`` uint8 RGB. ``VideoError`` when no
    frame decodes; a decoding error after some frames ends the stream with a warning."""
    container, stream = _open_av(path)
    with container:
        stream.thread_type = "AUTO"
        count, sws = 0, VideoReformatter()  # this video's own conversion context
        try:
            for frame in container.decode(stream):
                count += 1
                yield _to_rgb(frame, sws)
        except av.error.FFmpegError as e:
            if not count:
                raise VideoError(f"{path}: corrupt video ({e})") from e
            warnings.warn(f"{path}: decoding stopped early ({e})", stacklevel=3)


def _to_rgb(frame: Any, sws: VideoReformatter) -> np.ndarray:
    if frame.format.name in ("rgb24", "pal8", "gray"):
        return frame.to_ndarray(format="rgb24")
    rng = frame.color_range if frame.color_range in (ColorRange.MPEG, ColorRange.JPEG) else None
    if frame.format.name in ("yuv420p", "yuvj420p"):
        # Decoders tag H.264 frames with left/top-left chroma siting, which FFmpeg 8's swscale honours;
        # what we (and swscale) encode is centre-sited. A plain copy drops the tag: chroma is read as
        # centred, exact for our files and at most a half-pixel chroma offset for left-sited sources.
        copy = av.VideoFrame(frame.width, frame.height, frame.format.name)
        for src, dst in zip(frame.planes, copy.planes):
            rows = np.frombuffer(src, np.uint8).reshape(-1, src.line_size)[: dst.height, : dst.width]
            buf = np.zeros((dst.height, dst.line_size), np.uint8)
            buf[:, : dst.width] = rows
            dst.update(buf)
        copy.colorspace = frame.colorspace
        frame = copy
    return sws.reformat(frame, format="rgb24", interpolation=_SWS_FLAGS, src_color_range=rng,
                        threads=1).to_ndarray()


def _pil_frames(path: Path) -> Any:
    """Lazy frame loaders for a png folder or an animated webp (each call returns ``(H, W, 3)`` uint8)."""
    if path.is_dir():
        for f in _folder_frames(path)[0]:
            yield lambda f=f: np.asarray(_load_pil_rgb(f, VideoError))
        return
    with _open_pil(path) as im:
        for i in range(getattr(im, "n_frames", 1)):
            im.seek(i)
            rgb = np.asarray(im.convert("RGB"))
            yield lambda rgb=rgb: rgb


# -- images --------------------------------------------------------------------------------------------
def _load_pil_rgb(path: Path, error: type[ValueError] = ValueError) -> Image.Image:
    """RGB image with EXIF orientation applied; alpha is composited on white; 16-bit is scaled."""
    if path.is_dir():
        raise error(f"{path}: is a folder, not an image file")
    if not path.is_file():
        raise error(f"{path}: no such file")
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            im.load()
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise error(f"{path}: not a readable image ({e})") from e
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        im = Image.fromarray(np.round(a / (65535.0 if a.max() > 255 else 255.0) * 255).astype(np.uint8))
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, rgba)
    return im.convert("RGB")


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """Read an image as ``(3, H, W)`` float in [0, 1].

    EXIF orientation is applied; transparent pixels are composited on white; grayscale is repeated to
    RGB. Raises :class:`ImageError` naming the path for missing or non-image files.
    """
    im = _load_pil_rgb(Path(path), ImageError)
    return torch.from_numpy(np.array(im)).permute(2, 0, 1).float().div_(255)


def write_image(image: Any, path: str | os.PathLike, *, quality: int = 95) -> Path:
    """Write ``(C, H, W)`` float [0, 1] / uint8 tensor or array, or a PIL image, atomically.

    The format follows the extension (png, jpg/jpeg, webp, bmp, tif/tiff); ``quality`` for jpeg/webp.
    """
    out = Path(path)
    ext = out.suffix.lower()
    if ext not in IMAGE_EXTENSIONS:
        raise ValueError(f"unsupported image extension {ext!r} for {out}; "
                         f"supported: {sorted(IMAGE_EXTENSIONS)}")
    if isinstance(image, Image.Image):
        pil = image.convert("RGBA" if image.mode in ("RGBA", "LA") and ext in (".png", ".webp") else "RGB")
    else:
        x = torch.as_tensor(image) if not isinstance(image, torch.Tensor) else image
        if x.ndim != 3:
            raise ValueError(f"image must be (C, H, W), got shape {tuple(x.shape)}")
        pil = Image.fromarray(_to_uint8_hwc(x[None])[0])
    fmt = IMAGE_EXTENSIONS[ext]
    kwargs: dict[str, Any] = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
    _atomic_file(out, lambda tmp: pil.save(tmp, format=fmt, **kwargs))
    return out

