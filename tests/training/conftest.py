"""Helpers for the training tests: tiny configs and running the real CLI in a subprocess."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
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
