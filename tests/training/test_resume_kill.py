"""A run killed with SIGKILL after a checkpoint and resumed with --resume ends bit-identical to an
uninterrupted run (CPU, deterministic settings): every tensor of the model, the EMA and the optimizer."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import TINY_CONFIG, assert_sigkill_resume_is_exact

STEPS = 24


def _overrides(out: Path) -> list[str]:
    return [f"--output_dir={out}", "--progress=false", "--deterministic=true", "--data.num_samples=6",
            "--data.batch_size=2", "--optim.grad_accum=2", f"--schedule.max_steps={STEPS}",
            "--schedule.warmup_steps=3", "--checkpoint.every_steps=2", "--checkpoint.keep_last=2",
            "--loss.noise_aug=lognormal", "--ema.decay=0.9"]


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(tmp_path: Path) -> None:
    assert_sigkill_resume_is_exact(tmp_path, TINY_CONFIG, _overrides, STEPS, kill_after=4)
    assert not (tmp_path / "run").exists()
