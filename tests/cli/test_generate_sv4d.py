"""``vidiff generate --video IN --model SV4D`` (SV4D, Xie et al. 2024; SV4D 2.0, Yao et al. 2025).

Bad input is one line on stderr naming the problem, exit code 2, nothing written: an image given to SV4D, a
video given to SV3D, camera lists of the wrong length, elevations outside [-90, 90], a video too short, SV4D
without its SV3D model. The model type is read from the file header alone, so those checks use header-only
files named as the released ones. The end-to-end run loads real tiny single files in the released layout (sgm's
tiny SV4D network, a tiny SV3D_u) and checks the grid video, the per-view videos and the sidecar.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vidiff.cli.main import main
from vidiff.io.video import probe_video, write_video
from vidiff.pipelines.memory import parse_memory
from vidiff.pipelines.sv4d import sv4d_model_type

from ..conftest import SKIMAGE_DATA
from ..pipelines.test_sv3d import write_tiny_sv3d_p
from ..pipelines.test_sv4d import DATA, write_released_layout

UNET = "model.diffusion_model."


def _header_file(path: Path, camera_embedding: bool) -> Path:
    """An sgm single file with just the tensors that tell the SV4D models apart (a 64-wide time embedding;
    the view embedding reads it in SV4D 2.0, a level's 32 channels in SV4D)."""
    tensors = {UNET + "time_embed.0.weight": torch.zeros(64, 16),
               UNET + "input_blocks.1.1.motion_blocks.0.norm1.weight": torch.zeros(32),
               UNET + "input_blocks.1.1.time_mix_time_embed.0.weight": torch.zeros(32, 64 if camera_embedding else 32)}
    save_file(tensors, str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sv4d_models")
    return {"sv4d": _header_file(root / "sv4d.safetensors", False),
            "sv4d2": _header_file(root / "sv4d2.safetensors", True),
            "sv4d2_8views": _header_file(root / "sv4d2_8views.safetensors", True)}


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 12-frame mp4 (random frames), written with PyAV through vidiff.io."""
    path = tmp_path_factory.mktemp("sv4d_video") / "in.mp4"
    write_video(torch.rand(12, 3, 32, 32, generator=torch.Generator().manual_seed(0)), path, fps=8)
    return path


def _run(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, str]:
    code = main(["generate", *map(str, args)])
    return code, capsys.readouterr().err


def test_model_type_from_the_header(models: dict[str, Path]) -> None:
    assert {kind: sv4d_model_type(path) for kind, path in models.items()} == {k: k for k in models}
    assert sv4d_model_type(DATA.parent / "sv3d" / "tiny_sv3d_p.safetensors") is None


@pytest.mark.parametrize(("kind", "args", "message"), [
    ("sv4d2", ["--azimuths", "0,90"], "--azimuths: 2 values given for 5 cameras of sv4d2"),
    ("sv4d2_8views", ["--azimuths", "0,90,180"], "--azimuths: 3 values given for 9 cameras of sv4d2_8views"),
    ("sv4d2", ["--elevation", "1,2,3"], "--elevation: 3 values given for 5 cameras of sv4d2"),
    ("sv4d", ["--elevation", "1,2,3,4,5", "--sv3d-model", "x"], "--elevation: 5 values given for 21 cameras of sv4d"),
    ("sv4d2", ["--elevation", "95"], "--elevation: elevation 95 is outside [-90, 90] degrees"),
    ("sv4d2", ["--elevation=-91"], "--elevation: elevation -91 is outside"),
    ("sv4d2", ["--orbit", "--azimuths", "1,2,3,4,5"], "--orbit and --azimuths both set"),
    ("sv4d", [], "give --sv3d-model"),
    ("sv4d2", ["--num-frames", "11"], "needs at least 12 frames"),
    ("sv4d2", ["--num-frames", "30"], "the input video has 12 frame(s): it needs at least 15"),
    ("sv4d2", ["--strength", "0.5"], "--strength: not for SV4D runs"),
    ("sv4d2", ["--offload", "model"], "--offload: not for SV4D runs"),
    ("sv4d2", ["--max-memory", "lots"], "--max-memory: cannot parse memory size 'lots'"),
])  # fmt: skip
def test_bad_input_is_one_line_exit_2_nothing_written(models: dict[str, Path], clip: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture, kind: str, args: list[str],
                                                      message: str) -> None:
    code, err = _run(capsys, "--video", clip, "--model", models[kind], "--output", tmp_path / "x.mp4", *args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert not list(tmp_path.iterdir())


def test_an_image_given_to_sv4d_is_refused(models: dict[str, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    code, err = _run(capsys, "--image", SKIMAGE_DATA / "coffee.png", "--model", models["sv4d2"], "--output",
                     tmp_path / "x.mp4")
    assert code == 2 and "is an sv4d2 model, which renders novel views of a video: give --video" in err, err
    assert len(err.strip().splitlines()) == 1 and not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def tiny_sv4d_files(tiny_svd_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A real tiny SV4D single file in the released layout (sgm's tiny SV4D network of the sampling golden,
    whose vector is the recipe's 1280 wide) and a tiny SV3D_u single file for its reference views."""
    root = tmp_path_factory.mktemp("sv4d_tiny")
    net = load_file(str(DATA / "sampling_golden_unet.safetensors"))
    network = {UNET + k[len("unet."):]: v.float() for k, v in net.items() if k.startswith("unet.")}
    sv4d = write_released_layout(root / "sv4d.safetensors", network, tiny_svd_folder)
    sv3d_u = write_tiny_sv3d_p(root / "sv3d_u.safetensors", "single-file", tiny_svd_folder, camera=False)
    return sv4d, sv3d_u


@pytest.mark.filterwarnings("ignore:16x16 is far from")
def test_grid_views_and_sidecar(tiny_sv4d_files: tuple[Path, Path], clip: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture) -> None:
    """The whole run on real files: SV3D_u renders the orbit of frame 0, the SV4D network the 8 views of the
    21 frames (anchor pass, then the dense windows); the grid, the view videos and a replayable sidecar."""
    sv4d, sv3d_u = tiny_sv4d_files
    out = tmp_path / "views.mp4"
    code, err = _run(capsys, "--video", clip, "--model", sv4d, "--sv3d-model", sv3d_u, "--output", out,
                     "--steps", "1", "--height", "16", "--width", "16", "--quiet")
    assert code == 0, err
    grid = probe_video(out)
    assert (grid.num_frames, grid.width, grid.height, grid.fps) == (21, 9 * 16, 16, 10)
    for k in range(1, 9):
        view = probe_video(tmp_path / f"views_view{k}.mp4")
        assert (view.num_frames, view.width, view.height) == (21, 16, 16)
    sidecar = json.loads((tmp_path / "views.mp4.json").read_text())
    assert sidecar["views"] == [str(tmp_path / f"views_view{k}.mp4") for k in range(1, 9)]
    assert sidecar["settings"]["num_inference_steps"] == 1 and sidecar["settings"]["num_frames"] == 21
    assert sidecar["windows"] == [[4, 8, 12, 16, 20], *[list(range(t, t + 5)) for t in (0, 4, 8, 12, 16)]]
    assert sidecar["sv4d"]["model_type"] == "sv4d" and sidecar["sv3d_model"] == str(sv3d_u)
    assert len(sidecar["sv4d"]["azimuths_deg"]) == 21
    again = tmp_path / "again.mp4"  # the sidecar's settings replay the run
    code, err = _run(capsys, "--video", clip, "--model", sv4d, "--sv3d-model", sv3d_u, "--output", again,
                     "--settings", tmp_path / "views.mp4.json", "--quiet")
    assert code == 0, err
    assert json.loads((tmp_path / "again.mp4.json").read_text())["settings"] == sidecar["settings"]


@pytest.mark.filterwarnings("ignore:16x16 is far from")
def test_max_memory_plan_in_the_sidecar_and_too_small_a_budget(tiny_sv4d_files: tuple[Path, Path], clip: Path,
                                                                tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``--max-memory`` chooses the VAE chunks (the SV3D orbit counted too) and records them; a budget below the
    most frugal plan is one line, exit 2, before any sampling, nothing written."""
    sv4d, sv3d_u = tiny_sv4d_files
    args = ["--video", clip, "--model", sv4d, "--sv3d-model", sv3d_u, "--steps", "1", "--height", "16", "--width",
            "16", "--quiet"]
    code, err = _run(capsys, *args, "--output", tmp_path / "small.mp4", "--max-memory", "1MiB")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "max_memory=1.00 MiB is too small: the most frugal controls need about" in err
    assert "for 21 frames x 8 views at 16x16" in err and not list(tmp_path.iterdir())
    out = tmp_path / "planned.mp4"
    code, err = _run(capsys, *args, "--output", out, "--max-memory", "16GiB")
    assert code == 0, err
    sidecar = json.loads((tmp_path / "planned.mp4.json").read_text())
    assert sidecar["max_memory"] == "16GiB" and sidecar["memory_plan"] == "encode_chunk_size=all, decode_chunk_size=all"
    assert 0 < sidecar["predicted_peak_bytes"] <= parse_memory("16GiB")
    assert sidecar["encode_chunk_size"] is None and sidecar["settings"]["decode_chunk_size"] is None
