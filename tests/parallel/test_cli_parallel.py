"""``vidiff generate --parallel`` under torchrun: rank 0 alone writes the video and its settings file (which
records the split), the video is the one-process video, and a run that cannot be split fails in one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from vidiff.cli.main import main
from vidiff.io.video import read_video

sys.path.insert(0, str(Path(__file__).parent))
from launch import torchrun

SMALL = ["--num-frames", "5", "--steps", "2", "--height", "64", "--width", "64", "--quiet"]


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "in.png"
    ramp = np.linspace(0, 255, 64 * 64 * 3).reshape(64, 64, 3).astype(np.uint8)
    PIL.Image.fromarray(ramp).save(path)
    return path


def test_parallel_without_a_distributed_launch_fails_in_one_line(image: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out.mp4"
    assert main(["generate", "--image", str(image), "--output", str(out), "--parallel", "frames", *SMALL]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "torchrun --nproc-per-node" in err, err
    assert main(["generate", "--image", str(image), "--output", str(out), "--parallel", "tensor", *SMALL]) == 2
    assert "--parallel must be one of cfg, frames, cfg,frames" in capsys.readouterr().err
    clip = tmp_path / "clip.mp4"
    from vidiff.io.video import write_video

    write_video(np.zeros((4, 3, 64, 64), np.float32), clip, fps=8)
    # video-to-video is not split: refused (--prompt runs are, tests/pipelines/test_wan_pipeline.py)
    assert main(["generate", "--video", str(clip), "--output", str(out), "--parallel", "frames", *SMALL]) == 2
    assert "not --video runs" in capsys.readouterr().err
    assert not out.exists()


def test_frames_on_two_ranks_write_the_one_process_video_once(image: Path, tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "par" / "two"  # png frames: lossless, unlike mp4
    assert main(["generate", "--image", str(image), "--output", f"{one}/", *SMALL]) == 0
    proc = torchrun(2, "-m", "vidiff.cli.main", "generate", "--image", str(image), "--output", f"{two}/",
                    "--parallel", "frames", *SMALL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p.name for p in (tmp_path / "par").iterdir()] == ["two"]  # written once, by rank 0
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    sidecar = json.loads((two / "settings.json").read_text())
    # the bundled model's flow-warp decode is split over the 2 frame ranks too
    assert sidecar["parallel"] == {"mode": "frames", "world_size": 2, "cfg_ranks": 1, "frame_ranks": 2,
                                   "decode_ranks": 2}
    assert json.loads((one / "settings.json").read_text())["parallel"] is None
    # pixels agree to 1e-5 before 8-bit rounding (test_pipeline_parallel), so at most one level after it
    assert float((read_video(one)[0] - read_video(two)[0]).abs().max()) <= 1 / 255 + 1e-6


def test_a_long_video_split_over_ranks_is_the_one_process_video(image: Path, tmp_path: Path) -> None:
    # 20 frames from windows of 14 (keyframes: one keyframe window, then in-between windows of 3 frames, 1 per
    # rank on 3 ranks); every window's UNet calls and decodes split over the ranks. fifo on 2 ranks and chain
    # on 3 were measured bit-exact as well (README); one launch keeps the suite's time down
    nproc, mode = 3, "keyframes"
    long = ["--num-frames", "20", "--long-mode", mode, "--steps", "2", "--height", "64", "--width", "64", "--quiet"]
    one, two = tmp_path / "one", tmp_path / "par" / "two"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank runs (bit-exactness needs equal thread counts: README)
    try:
        assert main(["generate", "--image", str(image), "--output", f"{one}/", *long]) == 0
    finally:
        torch.set_num_threads(threads)
    proc = torchrun(nproc, "-m", "vidiff.cli.main", "generate", "--image", str(image), "--output", f"{two}/",
                    "--parallel", "frames", *long)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p.name for p in (tmp_path / "par").iterdir()] == ["two"]  # written once, by rank 0
    frames = [sorted(d.glob("*.png")) for d in (one, two)]
    assert len(frames[0]) == len(frames[1]) == 20
    for a, b in zip(*frames, strict=True):  # one thread per rank: the same bits as one process (test_pipeline_*)
        assert np.array_equal(np.asarray(PIL.Image.open(a)), np.asarray(PIL.Image.open(b))), b.name
    sidecar = json.loads((two / "settings.json").read_text())
    assert sidecar["long_video"]["long_mode"] == mode and sidecar["settings"]["num_frames"] == 20
    assert sidecar["parallel"] == {"mode": "frames", "world_size": nproc, "cfg_ranks": 1, "frame_ranks": nproc,
                                   "decode_ranks": nproc}


def test_an_impossible_split_fails_on_every_rank_in_one_line(image: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    # three processes cannot hold the two guidance halves (and the bundled model does not guide by default)
    proc = torchrun(3, "-m", "vidiff.cli.main", "generate", "--image", str(image), "--output", str(out),
                    "--parallel", "cfg", *SMALL)
    errors = [line for line in proc.stderr.splitlines() if "vidiff generate: error:" in line]
    assert proc.returncode != 0 and len(errors) == 3, proc.stderr[-3000:]
    assert all("exactly 2 processes, got 3" in line for line in errors)
    assert not out.exists()
