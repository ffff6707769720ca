"""Long videos on the bundled model: the CLI run and its sidecar, frames streamed window by window, and the
bad inputs refused (one line, exit 2, nothing written). The statistics of the modes are checked exactly
against a Gaussian prior in ``tests/diffusion/test_long_video_oracle.py``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from vidiff.io.video import probe_video
from vidiff.pipelines.image_to_video import ImageToVideoPipeline, bundled_model_path
from vidiff.pipelines.long_video_pipeline import generate_long_video
from vidiff.pipelines.settings import GenerationSettings

from ..conftest import SKIMAGE_DATA

REPO = Path(__file__).resolve().parents[2]
PHOTO = SKIMAGE_DATA / "coffee.png"  # 600x400, real
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def vidiff(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vidiff.cli.main", *map(str, args)], capture_output=True,
                          text=True, env=ENV, timeout=300)


def refused(proc: subprocess.CompletedProcess, needle: str) -> None:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and lines and lines[-1].startswith("vidiff ") and "Traceback" not in proc.stderr, \
        proc.stderr
    assert needle in lines[-1], lines[-1]


@pytest.fixture(scope="module")
def pipe() -> ImageToVideoPipeline:
    path = bundled_model_path()
    if path is None:
        pytest.skip("the bundled model is not installed")
    return ImageToVideoPipeline.from_pretrained(path)


@pytest.mark.parametrize("mode", ["chain", "keyframes", "fifo"])
def test_frames_stream_in_order_window_by_window(pipe: ImageToVideoPipeline, mode: str) -> None:
    """The sink gets every frame once, in order, in runs no longer than about one window, and each run
    before the next window is sampled (memory stays that of one window)."""
    runs: list[torch.Tensor] = []
    steps_at_run: list[int] = []
    steps = [0]

    def sink(frames: torch.Tensor) -> None:
        runs.append(frames)
        steps_at_run.append(steps[0])

    s = GenerationSettings(num_inference_steps=2, num_frames=6, height=96, width=96)
    image = PIL.Image.open(PHOTO).convert("RGB")
    result = generate_long_video(pipe, image, 17, sink, mode=mode, overlap=2, settings=s, progress=False,
                                 partitions=1)
    assert sum(r.shape[0] for r in runs) == 17
    assert all(r.dtype == torch.uint8 and r.shape[1:] == (3, 96, 96) for r in runs)
    assert len(runs) >= 2 and max(r.shape[0] for r in runs) <= 2 * 6
    assert result.record["long_mode"] == mode and result.record["num_frames"] == 17
    # frame 0 of a flow-warp model is the image itself, in every mode
    first = torch.from_numpy(np.asarray(image.resize((96, 96), PIL.Image.LANCZOS))).permute(2, 0, 1)
    assert (runs[0][0].int() - first.int()).abs().float().mean() < 2


def test_cli_long_run_writes_video_and_sidecar(tmp_path: Path) -> None:
    out = tmp_path / "new" / "folder" / "long.mp4"  # made as for one clip (the frames stream beside it)
    proc = vidiff("generate", "--image", PHOTO, "--output", out, "--num-frames", 20, "--steps", 1,
                  "--height", 64, "--width", 64, "--long-mode", "chain", "--overlap", 4, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert probe_video(out).num_frames == 20
    side = json.loads(out.with_name("long.mp4.json").read_text())
    assert side["settings"]["num_frames"] == 20
    assert side["long_video"]["long_mode"] == "chain" and side["long_video"]["window"] == 14
    # windows of 14 every 14 − 4 frames; the last one is moved back to end on frame 19
    assert side["long_video"]["segments"] == [[0, 13], [6, 19]]


def test_cli_long_run_with_deflicker_equals_deflicker_of_the_raw_run(tmp_path: Path) -> None:
    """``--deflicker`` on a long video streams the frames to a lossless temporary folder and deflickers that:
    the result is `vidiff deflicker` of the same run written without it (png frames: no codec in between)."""
    from vidiff.io.video import read_video

    base = ["generate", "--image", PHOTO, "--num-frames", 18, "--steps", 1, "--height", 64, "--width", 64,
            "--long-mode", "chain", "--quiet"]
    raw, ref, post = tmp_path / "raw/", tmp_path / "ref/", tmp_path / "post/"
    for args in ([*base, "--output", raw], ["deflicker", raw, ref, "--quiet"],
                 [*base, "--output", post, "--deflicker"]):
        proc = vidiff(*args)
        assert proc.returncode == 0, proc.stderr
    (a, _), (b, _), (c, _) = read_video(raw), read_video(ref), read_video(post)
    assert c.shape == (18, 3, 64, 64) and torch.equal(b, c) and not torch.equal(a, c)
    from vidiff.cli.generate import sidecar_path

    side = json.loads(sidecar_path(post).read_text())
    assert "deflicker" in side and side["long_video"]["long_mode"] == "chain"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["post", "raw", "ref"]  # no temporary frames left


def test_cli_bad_long_inputs_are_refused(tmp_path: Path) -> None:
    small = PIL.Image.open(PHOTO).convert("RGB").resize((300, 200))
    end = tmp_path / "end.png"
    small.save(end)
    out = tmp_path / "never.mp4"
    base = ["generate", "--image", PHOTO, "--output", out, "--steps", 1, "--height", 64, "--width", 64, "--quiet"]
    refused(vidiff(*base, "--num-frames", 30, "--end-image", end), "--end-image")
    refused(vidiff(*base, "--num-frames", 30, "--overlap", 14), "--overlap 14")
    refused(vidiff(*base, "--num-frames", 0), "num-frames")
    assert list(tmp_path.iterdir()) == [end]  # nothing written


def test_end_image_is_reached(pipe: ImageToVideoPipeline) -> None:
    """A first-and-last-frame clip over a known 8-pixel pan ends on the end image (the flow-warp model holds
    the end frame's flow to the start image and draws the frames from both images) and starts on the start
    image."""
    from vidiff.cli.generate_long import end_latent

    big = PIL.Image.open(PHOTO).convert("RGB").resize((112, 104), PIL.Image.LANCZOS)
    start_img, end_img = big.crop((4, 4, 100, 100)), big.crop((12, 4, 108, 100))
    start, end = (torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255 for im in (start_img, end_img))
    runs: list[torch.Tensor] = []
    s = GenerationSettings(num_inference_steps=2, num_frames=6, height=96, width=96)
    result = generate_long_video(pipe, start_img, 6, runs.append, mode="keyframes", end_image=end,
                                 end_latent=end_latent(pipe, start, end, 96, 96), settings=s, progress=False)
    video = torch.cat(runs).float() / 255
    assert result.record["end_frame_held"] and video.shape[0] == 6

    def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
        return -10 * torch.log10(((a - b) ** 2).mean()).item()

    assert psnr(video[0], start) > 40
    # the end image itself, within one 8-bit level (warping the start image alone reached 25-28 dB here: the
    # strip the pan reveals is not in the start image)
    assert (video[-1] - end).abs().max().item() <= 1 / 255 + 1e-6
    # the frames between go the pan's way all along (they start on the line between the held ends: without
    # that, the frame before the last stayed near the start, 12.5 dB from the end, and jumped onto it)
    assert psnr(video[-2], end) > psnr(video[-2], start)
    from vidiff.metrics.flow import estimate_flow

    steps = estimate_flow(video[:-1], video[1:])[:, 0].mean(dim=(1, 2))  # x flow of each step
    assert (steps < 0).all(), steps  # the end crop lies 8 px to the right: content moves left


def test_a_window_holding_both_ends_starts_on_the_line_between_them() -> None:
    """``bridge_sigma``: the free frames of a window whose two ends are held start at ``lerp(a, b, t) + σ_b·ε``
    and are sampled from ``σ_b`` down. With a denoiser that returns its input (so the sampler moves nothing),
    the frames come out as that start: on the line, within a few ``σ_b``; from pure noise they are not."""
    from vidiff.diffusion import karras_sigmas
    from vidiff.pipelines.long_video import WindowModel, sample_window

    levels: list[torch.Tensor] = []

    def identity(x: torch.Tensor, sigma: torch.Tensor, cond: object) -> torch.Tensor:
        levels.append(sigma.detach().clone())
        return x

    a, b = torch.zeros(1, 2, 4, 4), torch.full((1, 2, 4, 4), 3.0)
    frames = [0, 2, 4, 6, 8]
    line = torch.stack([torch.lerp(a, b, f / 8) for f in frames], 1)
    for bridge in (0.01, None):
        levels.clear()
        model = WindowModel(denoiser=identity, cond=lambda f: None, sigmas=karras_sigmas(6, 0.002, 40.0, 7.0),
                            shape=(1, 2, 4, 4), window=5, generator=torch.Generator().manual_seed(0),
                            bridge_sigma=bridge)
        x = sample_window(model, frames, {0: a, 4: b})
        assert torch.equal(x[:, 0], a) and torch.equal(x[:, -1], b)  # the held ends
        off = (x - line).abs().max().item()
        if bridge is not None:
            assert off < 6 * bridge, off
            assert levels[0][0, 1].item() == pytest.approx(bridge)  # the first level of a free frame
        else:
            assert off > 10, off  # pure noise at sigma_max = 40
            assert levels[0][0, 1].item() == pytest.approx(40.0)


def test_an_svd_layout_model_ends_on_its_end_image_without_the_bridge(tiny_svd_folder: Path) -> None:
    """A model with a KL VAE (diffusers' tiny SVD layout, CLIP included) is conditioned on the end image itself
    (time-reversed windows, TRF): its end latent is the VAE's encoding of the image, nothing is bridged, and the
    last frame decodes near the end image, not near the start (a ramp and its mirror, far apart)."""
    pipe = ImageToVideoPipeline.from_pretrained(str(tiny_svd_folder))
    ramp = torch.linspace(0, 1, 64).view(1, 1, 64).expand(3, 64, 64).contiguous()
    start, end = ramp, ramp.flip(-1)
    runs: list[torch.Tensor] = []
    s = GenerationSettings(num_inference_steps=2, num_frames=5, height=64, width=64)
    result = generate_long_video(pipe, start, 5, runs.append, mode="keyframes", end_image=end, settings=s,
                                 progress=False)
    video = torch.cat(runs).float() / 255
    assert video.shape == (5, 3, 64, 64) and result.record["end_frame_held"]
    assert "bridge_sigma" not in result.record
    with torch.no_grad():  # what the held end latent decodes to alone: the VAE's round trip of the end image
        alone = (pipe.vae.decode_latents(pipe._image_latents(end[None] * 2 - 1)[:, None].float()) / 2 + 0.5)
    alone = alone[0, 0].clamp(0, 1)
    assert (video[-1] - alone).abs().mean() < (video[-1] - start).abs().mean()
