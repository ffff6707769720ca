"""``vidiff generate --batch``: resumable after ``kill -9`` (only missing jobs run, partial outputs never count),
a bad line fails only its job, and two ranks under torchrun (gloo) write the files one process writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from vidiff.cli.main import main
from vidiff.io.video import read_video

from ..conftest import SKIMAGE_DATA

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
SMALL = ["--num-frames", "4", "--steps", "2", "--height", "64", "--width", "64", "--quiet"]
PHOTOS = ["coffee.png", "astronaut.png", "chelsea.png", "rocket.jpg"]


def _manifest(folder: Path, n: int, bad_line: int | None = None) -> Path:
    """``n`` jobs over real photographs, different seeds; line ``bad_line`` names a missing image."""
    lines = []
    for i in range(n):
        image = str(SKIMAGE_DATA / PHOTOS[i % len(PHOTOS)]) if i + 1 != bad_line else "no/such/photo.png"
        lines.append(json.dumps({"image": image, "output": f"out/job{i:02d}.mp4", "settings": {"seed": i}}))
    path = folder / "jobs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _summary(manifest: Path) -> dict:
    return json.loads(manifest.with_name(manifest.name + ".summary.json").read_text())


def _outputs(folder: Path) -> dict[str, bytes]:
    """The videos, and the sidecars without their timing, by name."""
    files = {}
    for p in sorted((folder / "out").iterdir()):
        if p.suffix == ".json":
            sidecar = json.loads(p.read_text())
            sidecar.pop("generation_seconds")
            files[p.name] = json.dumps(sidecar, sort_keys=True).encode()
        else:
            files[p.name] = p.read_bytes()
    return files


def test_kill_9_then_rerun_runs_only_the_missing_jobs_and_a_bad_line_fails_alone(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, 6, bad_line=4)
    cmd = [sys.executable, "-m", "vidiff.cli.main", "generate", "--batch", str(manifest), *SMALL]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = tmp_path / "out" / "job01.mp4.json"
    deadline = time.monotonic() + 120
    while not second.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # mid-way: two jobs finished, the third under way
    proc.wait()
    done_before = sorted(p.name for p in (tmp_path / "out").glob("*.mp4.json"))
    assert 2 <= len(done_before) < 5, done_before  # the manifest's bad line 4 never makes a sidecar
    # a job killed between its video and its sidecar: the video alone never counts as done
    (tmp_path / "out" / "job00.mp4.json").unlink()
    done_before.remove("job00.mp4.json")
    mtimes = {n: (tmp_path / "out" / n).stat().st_mtime_ns for n in done_before}
    video0 = (tmp_path / "out" / "job00.mp4").stat().st_mtime_ns

    assert main(["generate", "--batch", str(manifest), *SMALL]) == 1  # one job failed
    summary = _summary(manifest)
    by_line = {r["line"]: r for r in summary["results"]}
    assert summary["skipped"] == len(done_before) and summary["failed"] == 1
    assert summary["done"] == 5 - len(done_before)  # only the missing good jobs ran
    assert by_line[4]["status"] == "failed" and "no/such/photo.png" in by_line[4]["detail"]
    assert all(by_line[i]["status"] != "failed" for i in (1, 2, 3, 5, 6))
    assert {n: (tmp_path / "out" / n).stat().st_mtime_ns for n in done_before} == mtimes  # not redone
    assert (tmp_path / "out" / "job00.mp4").stat().st_mtime_ns != video0  # redone
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == sorted(f"job{i:02d}.mp4{s}" for i in (0, 1, 2, 4, 5) for s in ("", ".json"))  # no debris
    frames, _ = read_video(tmp_path / "out" / "job05.mp4")
    assert frames.shape == (4, 3, 64, 64)


def test_two_ranks_under_torchrun_write_the_files_one_process_writes(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    for folder in (one, two):
        folder.mkdir()
        _manifest(folder, 6, bad_line=3)
    single = [sys.executable, "-m", "vidiff.cli.main", "generate", "--batch", str(one / "jobs.jsonl"), *SMALL]
    assert subprocess.run(single, env=ENV, capture_output=True, timeout=300).returncode == 1  # line 3 fails
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "vidiff.cli.main", "generate", "--batch", str(two / "jobs.jsonl"), *SMALL]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    summary = _summary(two / "jobs.jsonl")
    assert summary["ranks"] == 2 and summary["done"] == 5 and summary["failed"] == 1, proc.stderr[-2000:]
    assert {r["rank"] for r in summary["results"]} == {0, 1}  # both ranks worked
    assert {r["line"]: r["rank"] for r in summary["results"]} == {i + 1: i % 2 for i in range(6)}
    assert _outputs(two) == {k: v.replace(b"/one/", b"/two/") for k, v in _outputs(one).items()}
