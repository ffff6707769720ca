"""Exact resume of a staged run from every one of its checkpoints, including those written at a stage
boundary (their optimizer is the previous stage's: the new stage's starts at the next step): the resumed
run's losses and its final model, EMA and optimizer are bit-identical to the uninterrupted run's."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from vidiff.training.checkpoint import list_checkpoints
from vidiff.training.config import TrainConfig
from vidiff.training.loop import train

from .conftest import TINY_CONFIG, load_ckpt_tensors

STEPS = 6
# stage boundaries after steps 2 and 4 (as configs/finetune_skvideo.yaml: a checkpoint lands on each)
STAGES = ("stages=[{name: temporal, steps: 2, trainable: ['*temporal*', '*time_mixer*']},"
          " {name: convs, steps: 2, trainable: ['*conv*']}, {name: all}]")


def _config(out: Path, *extra: str) -> TrainConfig:
    return TrainConfig.from_yaml(TINY_CONFIG, [
        f"output_dir={out}", "progress=false", "deterministic=true", "data.num_samples=4", "data.batch_size=1",
        "data.height=8", "data.width=8", f"schedule.max_steps={STEPS}", "schedule.warmup_steps=1",
        "checkpoint.every_steps=1", f"checkpoint.keep_last={STEPS}", "checkpoint.export=false", "ema.decay=0.9",
        STAGES, *extra])


def test_resume_from_every_checkpoint_of_a_staged_run(tmp_path: Path) -> None:
    ref = train(_config(tmp_path / "ref"))
    ckpts = list_checkpoints(tmp_path / "ref" / "checkpoints")
    assert [c.name for c in ckpts] == [f"step-{s:08d}" for s in range(1, STEPS + 1)]
    expected = load_ckpt_tensors(ckpts[-1])
    for k in range(1, STEPS):  # resume from step k's checkpoint alone, in a fresh folder
        out = tmp_path / f"from-{k}"
        shutil.copytree(ckpts[k - 1], out / "checkpoints" / ckpts[k - 1].name)
        resumed = train(_config(out), resume=True)
        assert resumed.resumed_from == k
        assert resumed.losses == ref.losses[k:], k  # float equality: bit for bit
        got = load_ckpt_tensors(out / "checkpoints" / ckpts[-1].name)
        for part in ("model", "ema", "optimizer"):
            assert got[part].keys() == expected[part].keys(), (k, part)
            for name, t in expected[part].items():
                assert torch.equal(got[part][name], t), f"resumed from step {k}: {part}/{name} differs"


def test_resume_refuses_a_checkpoint_of_another_stage_layout(tmp_path: Path) -> None:
    train(_config(tmp_path / "ref", "schedule.max_steps=2"))
    ckpt = list_checkpoints(tmp_path / "ref" / "checkpoints")[-1]  # step 2: the last step of "temporal"
    out = tmp_path / "other"
    shutil.copytree(ckpt, out / "checkpoints" / ckpt.name)
    with pytest.raises(ValueError, match=r"stage 'temporal'.* stage 'convs'"):
        train(_config(out, "stages=[{name: convs, trainable: ['*conv*']}]"), resume=True)
