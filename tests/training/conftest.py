"""Helpers for the training tests: tiny configs and running the real CLI in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "configs" / "tiny_moving_shapes.yaml"


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def train_cmd(config: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "vidiff.cli.main", "train", str(config), *overrides]


def run_cli(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def read_metrics(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def load_ckpt_tensors(ckpt: Path) -> dict[str, dict]:
    return {name: load_file(str(ckpt / f"{name}.safetensors")) for name in ("model", "ema", "optimizer")}


@pytest.fixture
def tiny_overrides(tmp_path: Path) -> list[str]:
    """A very small from-scratch run (pixel space, 4 frames of 16 px)."""
    return [f"output_dir={tmp_path / 'run'}", "progress=false", "data.num_samples=8", "data.batch_size=2",
            "schedule.max_steps=6", "schedule.warmup_steps=1", "checkpoint.every_steps=0"]


def assert_sigkill_resume_is_exact(tmp_path: Path, config: Path, overrides: Callable[[Path], list[str]], steps: int,
                                   kill_after: int) -> None:
    """Train ``config`` uninterrupted, and again killed with SIGKILL once checkpoint ``kill_after`` (or later)
    exists, then ``--resume``: the final model, EMA and optimizer tensors and the losses logged after the resume
    point are bit-identical to the uninterrupted run's."""
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    done = run_cli(train_cmd(config, *overrides(ref)))
    assert done.returncode == 0, done.stderr[-3000:]

    proc = subprocess.Popen(train_cmd(config, *overrides(killed)), cwd=REPO, env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pointer = killed / "checkpoints" / "latest"
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if pointer.is_file() and pointer.read_text().strip() >= f"step-{kill_after:08d}":
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    killed_at = int(pointer.read_text().strip().split("-")[1])
    assert kill_after <= killed_at < steps

    resumed = run_cli(train_cmd(config, *overrides(killed), "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["resumed_from"] == killed_at

    final = f"step-{steps:08d}"
    a, b = load_ckpt_tensors(ref / "checkpoints" / final), load_ckpt_tensors(killed / "checkpoints" / final)
    for part in ("model", "ema", "optimizer"):
        assert a[part].keys() == b[part].keys(), part
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}/{k} differs after resume"  # bitwise
    # the logged trajectory after the resume point is the same too
    ra = {r["step"]: r["loss"] for r in read_metrics(ref)}
    rb = {r["step"]: r["loss"] for r in read_metrics(killed)}
    assert all(ra[s] == rb[s] for s in range(killed_at + 1, steps + 1))
