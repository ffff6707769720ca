"""Staged training through the real loop: stage 1 leaves every spatial parameter bit-identical."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from vidiff.training.config import TrainConfig
from vidiff.training.loop import train
from vidiff.training.model import build_models
from vidiff.training.stages import TEMPORAL_PATTERNS, matches

from .conftest import TINY_CONFIG


def test_stage1_trains_only_temporal(tmp_path: Path) -> None:
    stage1 = 3
    cfg = TrainConfig.from_yaml(TINY_CONFIG, [
        f"output_dir={tmp_path}", "progress=false", "data.num_samples=8", "schedule.max_steps=4",
        "checkpoint.every_steps=3", "checkpoint.keep_last=3", "loss.flow_weight=0.1",
        "stages=[{name: temporal, steps: 3, trainable: ['*temporal*', '*time_mixer*', '*time_pos_embed*']},"
        " {name: motion, trainable: ['*temporal*', '*time_mixer*', '*time_pos_embed*', 'motion_head.*']}]",
    ])
    result = train(cfg)
    assert len(result.losses) == 4 and all(torch.isfinite(torch.tensor(result.losses)))

    init = build_models(cfg.model, cfg.data, seed=cfg.seed, flow=True)
    init_state = {f"unet.{k}": v for k, v in init.unet.state_dict().items()}
    init_state |= {f"motion_head.{k}": v for k, v in init.motion_head.state_dict().items()}
    after1 = load_file(str(tmp_path / "checkpoints" / f"step-{stage1:08d}" / "model.safetensors"))
    after2 = load_file(str(tmp_path / "checkpoints" / "step-00000004" / "model.safetensors"))
    assert set(after1) == set(init_state)

    temporal_changed = 0
    n_spatial = 0
    for name, v0 in init_state.items():
        if name.startswith("motion_head."):
            assert torch.equal(after1[name], v0), f"{name} trained in stage 1"
        elif matches(name, TEMPORAL_PATTERNS):
            temporal_changed += int(not torch.equal(after1[name], v0))
        else:
            n_spatial += 1
            assert torch.equal(after1[name], v0), f"spatial {name} changed in the temporal-only stage"
            assert torch.equal(after2[name], v0), f"spatial {name} changed in the motion stage"
    assert n_spatial > 50
    # temporal weights did train (some get no gradient: the dead q/k of one-token cross-attention)
    assert temporal_changed > 20
    # stage 2 adds the motion head: it moves away from its (zero-initialised) output layer
    assert not torch.equal(after2["motion_head.conv_out.weight"], init_state["motion_head.conv_out.weight"])
