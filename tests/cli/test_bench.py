"""``vidiff bench`` on the bundled model: the report counts what one generation does (network calls, their
batch, the settings resolved as ``vidiff generate`` resolves them), its phases add up, and bad options fail in
one line without writing anything. No speed is asserted: speed is measured, not tested."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vidiff.cli.main import main

SMALL = ["--num-frames", "4", "--height", "64", "--width", "64", "--repeats", "2", "--warmup", "1"]


@pytest.mark.parametrize(("steps", "guidance"), [(2, []), (3, ["--min-guidance-scale", "1", "--max-guidance-scale",
                                                                "2.5"])])
def test_report_counts_the_calls_of_one_generation(tmp_path: Path, capsys: pytest.CaptureFixture, steps: int,
                                                   guidance: list[str]) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench", *SMALL, "--steps", str(steps), *guidance, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    # Euler: one network call per step; with guidance the conditional and unconditional halves are one
    # batch of 2 (the bundled model guides not at all by default: a batch of 1)
    assert report["network_calls_per_video"] == steps and [r["network_calls"] for r in report["runs"]] == [steps] * 2
    assert report["network_batch"] == (2 if guidance else 1)
    assert report["repeats"] == 2 and report["first_video_s"] > 0
    s = report["settings"]
    assert (s["num_frames"], s["height"], s["width"], s["num_inference_steps"]) == (4, 64, 64, steps)
    for r in report["runs"]:  # the phases are parts of the video's wall time
        assert r["network_s"] > 0 and r["decode_s"] > 0 and r["network_s"] + r["decode_s"] <= r["video_s"]
    assert report["frames_per_s"] == pytest.approx(4 / report["video_s"])
    assert report["peak_memory_bytes"] > 10 * 2**20  # the model alone is 10.6 MB on disk
    printed = capsys.readouterr().out
    assert f"{steps} calls of batch {report['network_batch']}" in printed and "VAE decode" in printed


@pytest.mark.parametrize(("args", "message"), [
    (["--repeats", "0"], "--repeats must be >= 1, got 0"),
    (["--warmup", "-1"], "--warmup must be >= 0, got -1"),
    (["--num-frames", "0"], "--num-frames"),
    (["--image", "missing.png"], "--image"),
    (["--model", "no/such/model"], "no/such/model"),
])
def test_bad_options_fail_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str],
                                      message: str) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench", *args, "--json", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("vidiff bench: error:") and message in err, err
    assert not out.exists()
