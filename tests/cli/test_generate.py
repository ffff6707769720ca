"""``vidiff generate`` end to end: real videos decoded back by PyAV, sidecars that repeat runs, bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import PIL.Image
import pytest

from vidiff.cli.main import main
from vidiff.io.video import read_video

from ..conftest import SKIMAGE_DATA

PHOTO = SKIMAGE_DATA / "coffee.png"  # 600x400, real
REPO = Path(__file__).resolve().parents[2]
SMALL = ["--num-frames", "3", "--steps", "2", "--height", "48", "--width", "64", "--fps", "9", "--quiet"]


def _run(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    code = main(["generate", *map(str, args)])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("ext", ["mp4", "webm", "gif", "webp"])
def test_writes_a_real_video(tiny_svd_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                             ext: str) -> None:
    out = tmp_path / f"clip.{ext}"
    code, err = _run(capsys, "--image", PHOTO, "--model", tiny_svd_folder, "--output", out, *SMALL)
    assert code == 0, err
    if ext == "webp":  # FFmpeg cannot decode animated WebP: Pillow is the independent reader
        with PIL.Image.open(out) as im:
            assert (im.n_frames, im.size) == (3, (64, 48))
            im.load()  # Pillow reports a frame's duration once it is decoded
            assert abs(im.info["duration"] - 1000 / 9) <= 1
    else:
        with av.open(str(out)) as container:
            stream = container.streams.video[0]
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
            rate = float(stream.average_rate or stream.guessed_rate)
        assert len(frames) == 3 and frames[0].shape == (48, 64, 3)
        assert abs(rate - 9) < (0.6 if ext == "gif" else 0.01)  # gif delays are whole centiseconds
    sidecar = json.loads(out.with_name(out.name + ".json").read_text())
    assert sidecar["settings"]["num_frames"] == 3 and sidecar["settings"]["seed"] == 0
    assert sidecar["vidiff_version"] and sidecar["image_sha256"]


def test_sidecar_reproduces_the_frames(tiny_svd_folder: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    first, again = tmp_path / "first", tmp_path / "again"  # png folders: lossless
    code, err = _run(capsys, "--image", PHOTO, "--model", tiny_svd_folder, "--output", str(first) + "/",
                     *SMALL, "--seed", "11", "--motion-bucket-id", "60", "--noise-aug-strength", "0.05")
    assert code == 0, err
    code, err = _run(capsys, "--image", PHOTO, "--model", tiny_svd_folder, "--output", str(again) + "/",
                     "--settings", first / "settings.json", "--quiet")
    assert code == 0, err
    a, fps_a = read_video(first)
    b, fps_b = read_video(again)
    assert a.shape == b.shape == (3, 3, 48, 64) and fps_a == fps_b == 9
    assert np.array_equal(a.numpy(), b.numpy())
    other = tmp_path / "other"
    code, _ = _run(capsys, "--image", PHOTO, "--model", tiny_svd_folder, "--output", str(other) + "/", *SMALL)
    assert code == 0 and not np.array_equal(read_video(other)[0].numpy(), a.numpy())  # the seed matters


def test_speed_switches_keep_the_frames(tiny_svd_folder: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    """Fused projections (the default), channels-last and compiled blocks change how the UNet runs: the
    written frames stay within one 8-bit level of the plain run's, and the sidecar says which ran."""
    plain, fast = tmp_path / "plain", tmp_path / "fast"
    code, err = _run(capsys, "--image", PHOTO, "--model", tiny_svd_folder, "--output", str(plain) + "/", *SMALL,
                     "--no-fuse-projections")
    assert code == 0, err
    code, err = _run(capsys, "--image", PHOTO, "--model", tiny_svd_folder, "--output", str(fast) + "/", *SMALL,
                     "--channels-last")
    assert code == 0, err
    a, b = read_video(plain)[0].numpy().astype(int), read_video(fast)[0].numpy().astype(int)
    assert a.shape == b.shape and np.abs(a - b).max() <= 1
    assert json.loads((plain / "settings.json").read_text())["fast_path"] == "none"
    assert json.loads((fast / "settings.json").read_text())["fast_path"] == "fuse_projections, channels_last"
    with pytest.raises(SystemExit) as exit_info:  # argparse's own error: usage line, exit 2
        main(["generate", "--image", str(PHOTO), "--output", str(tmp_path / "x.mp4"), "--compile", "everything"])
    assert exit_info.value.code == 2 and "'everything'" in capsys.readouterr().err


def test_runs_as_a_real_command(tiny_svd_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "clip.mp4"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "vidiff.cli.main", "generate", "--image", str(PHOTO),
           "--model", str(tiny_svd_folder), "--output", str(out), *SMALL]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert read_video(out)[0].shape[0] == 3


def test_sgm_behaviour_takes_stabilitys_seed_and_the_image_size(tiny_vidiff: Path, tmp_path: Path) -> None:
    """Stability's scripts/sampling/simple_video_sample.py seeds with 23 and renders at the input image's size,
    each side rounded down to a multiple of 64 (150x100 -> 128x64); the device default is auto, recorded as
    the device it resolved to."""
    import torch

    small = tmp_path / "small.png"
    PIL.Image.open(PHOTO).crop((200, 100, 350, 200)).save(small)
    out = tmp_path / "sgm"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "vidiff.cli.main", "generate", "--image", str(small), "--model", str(tiny_vidiff),
           "--output", f"{out}/", "--behaviour", "sgm", "--num-frames", "2", "--steps", "1", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    sidecar = json.loads((out / "settings.json").read_text())
    assert sidecar["settings"]["seed"] == 23
    assert (sidecar["settings"]["width"], sidecar["settings"]["height"]) == (128, 64)
    assert read_video(out)[0].shape == (2, 3, 64, 128)
    assert sidecar["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    helps = subprocess.run([*cmd[:4], "--help"], capture_output=True, text=True, env=env, timeout=60).stdout
    assert "(default auto:" in " ".join(helps.split())


def _bad_cases(tmp_path: Path, model: Path) -> dict[str, tuple[list[str], str]]:
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(os.urandom(2000))
    broken_model = tmp_path / "no_vae"
    shutil.copytree(model, broken_model)
    shutil.rmtree(broken_model / "vae")
    base = ["--model", str(model)]
    return {
        "missing image": (["--image", str(tmp_path / "nope.png"), *base], "nope.png"),
        "corrupt image": (["--image", str(corrupt), *base], "corrupt.png"),
        "unknown extension": (["--image", str(PHOTO), *base, "--output", str(tmp_path / "x.xyz")], ".xyz"),
        "size the VAE cannot take": (["--image", str(PHOTO), *base, "--height", "51"], "height"),
        "zero frames": (["--image", str(PHOTO), *base, "--num-frames", "0"], "num_frames"),
        "zero steps": (["--image", str(PHOTO), *base, "--steps", "0"], "num_inference_steps"),
        "negative guidance": (["--image", str(PHOTO), *base, "--max-guidance", "-1"], "max_guidance_scale"),
        "model missing a component": (["--image", str(PHOTO), "--model", str(broken_model)], "vae"),
        "cuda without a GPU": (["--image", str(PHOTO), *base, "--device", "cuda"], "CUDA"),
    }


BAD_CASES = ["missing image", "corrupt image", "unknown extension", "size the VAE cannot take", "zero frames",
             "zero steps", "negative guidance", "model missing a component", "cuda without a GPU"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_fails_cleanly(tiny_svd_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                 case: str) -> None:
    import torch

    if case == "cuda without a GPU" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the error under test cannot happen here")
    args, needle = _bad_cases(tmp_path, tiny_svd_folder)[case]
    out = tmp_path / "existing.mp4"
    out.write_bytes(b"an earlier video the user wants to keep")
    if "--output" not in args:
        args = [*args, "--output", str(out)]
    # small settings first: the case's own (bad) value comes later and wins
    code, err = _run(capsys, "--num-frames", "2", "--steps", "1", "--height", "48", "--width", "64", *args)
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and needle in lines[0], err
    assert out.read_bytes() == b"an earlier video the user wants to keep"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("existing")) == ["existing.mp4"]


@pytest.mark.parametrize("command", ["generate", "bench"])
def test_short_setting_flags_also_take_the_full_names(command: str) -> None:
    """``--steps``, ``--min-guidance``, ``--max-guidance`` also answer to the settings' full names (diffusers'
    argument names), into the same setting."""
    from vidiff.cli.main import build_parser

    parser = build_parser(command)
    full = parser.parse_args([command, "--num-inference-steps", "7", "--min-guidance-scale", "1.5",
                              "--max-guidance-scale", "2.5"])
    short = parser.parse_args([command, "--steps", "7", "--min-guidance", "1.5", "--max-guidance", "2.5"])
    for args in (full, short):
        assert (args.num_inference_steps, args.min_guidance_scale, args.max_guidance_scale) == (7, 1.5, 2.5)
