"""The speed benchmark runs end to end on a CPU (it asserts nothing about speed: that is measured, not tested)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_svd_speed_tiny_runs_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "speed.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "svd_speed.py"), "--config", "tiny", "--device", "cpu",
           "--frames", "2", "--height", "64", "--width", "64", "--repeats", "1", "--warmup", "1", "--skip-pipeline",
           "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())["results"]
    assert {"unet step (s, CFG batch 2)", "unet first call (s)", "unet max rel error vs float32"} <= set(res)
    assert any(k.startswith("decode ") for k in res)
    # same weights, same inputs, float32: vidiff's UNet reproduces diffusers'
    assert res["unet max rel error vs float32"]["vidiff"] <= 1e-4
