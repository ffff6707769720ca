"""A run killed with SIGKILL after a checkpoint and resumed with --resume ends bit-identical to an
uninterrupted run (CPU, deterministic settings): every tensor of the model, the EMA and the optimizer."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from .conftest import REPO, TINY_CONFIG, cli_env, load_ckpt_tensors, read_metrics, run_cli, train_cmd

STEPS = 24


def _overrides(out: Path) -> list[str]:
    return [f"--output_dir={out}", "--progress=false", "--deterministic=true", "--data.num_samples=6",
            "--data.batch_size=2", "--optim.grad_accum=2", f"--schedule.max_steps={STEPS}",
            "--schedule.warmup_steps=3", "--checkpoint.every_steps=2", "--checkpoint.keep_last=2",
            "--loss.noise_aug=lognormal", "--ema.decay=0.9"]


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(tmp_path: Path) -> None:
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    done = run_cli(train_cmd(TINY_CONFIG, *_overrides(ref)))
    assert done.returncode == 0, done.stderr[-3000:]

    proc = subprocess.Popen(train_cmd(TINY_CONFIG, *_overrides(killed)), cwd=REPO, env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pointer = killed / "checkpoints" / "latest"
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if pointer.is_file() and pointer.read_text().strip() >= "step-00000004":
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
    assert 4 <= killed_at < STEPS

    resumed = run_cli(train_cmd(TINY_CONFIG, *_overrides(killed), "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["resumed_from"] == killed_at

    final = f"step-{STEPS:08d}"
    a, b = load_ckpt_tensors(ref / "checkpoints" / final), load_ckpt_tensors(killed / "checkpoints" / final)
    for part in ("model", "ema", "optimizer"):
        assert a[part].keys() == b[part].keys(), part
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}/{k} differs after resume"  # bitwise
    # the logged trajectory after the resume point is the same too
    ra = {r["step"]: r["loss"] for r in read_metrics(ref)}
    rb = {r["step"]: r["loss"] for r in read_metrics(killed)}
    assert all(ra[s] == rb[s] for s in range(killed_at + 1, STEPS + 1))
