"""LR warm-up + cosine, EMA warm-up, stage spans and name patterns."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from vidiff.training.config import StageConfig
from vidiff.training.ema import EMA
from vidiff.training.schedule import WarmupCosineSchedule, lr_at
from vidiff.training.stages import apply_trainable, matches, stage_at, stage_spans, unmatched_patterns


def test_lr_warmup_then_cosine() -> None:
    kw = {"base_lr": 1.0, "max_steps": 10, "warmup_steps": 2, "min_lr_ratio": 0.1}
    assert lr_at(0, **kw) == pytest.approx(0.5)
    assert lr_at(1, **kw) == pytest.approx(1.0)
    assert lr_at(2, **kw) == pytest.approx(1.0)  # cosine starts at the peak
    mid = 2 + 4  # half way through the 8 decay steps
    assert lr_at(mid, **kw) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(10, **kw) == pytest.approx(0.1)
    lrs = [lr_at(s, **kw) for s in range(2, 11)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))


def test_schedule_state_round_trip() -> None:
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    s = WarmupCosineSchedule(opt, base_lr=1.0, max_steps=10, warmup_steps=3)
    for _ in range(4):
        s.step()
    opt2 = torch.optim.SGD([p], lr=1.0)
    s2 = WarmupCosineSchedule(opt2, base_lr=1.0, max_steps=10, warmup_steps=3)
    s2.load_state_dict(s.state_dict())
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == lr_at(4, base_lr=1.0, max_steps=10,
                                                                            warmup_steps=3)


def test_ema_tracks_average() -> None:
    m = nn.Linear(2, 2)
    ema = EMA(m, decay=0.5, warmup=False)
    with torch.no_grad():
        m.weight.fill_(1.0)
    init = ema.shadow["weight"].clone()
    ema.update(m)
    torch.testing.assert_close(ema.shadow["weight"], 0.5 * init + 0.5)
    ema2 = EMA(m, decay=0.999, warmup=True)
    assert ema2.current_decay() == pytest.approx(0.1)  # (1+0)/(10+0): follows the weights early on


def test_patterns_and_spans() -> None:
    assert matches("unet.down_blocks.0.resnets.0.temporal_res_block.conv1.weight", ["*temporal*"])
    assert not matches("unet.conv_in.weight", ["*temporal*"])
    assert matches("unet.time_mixer.mix_factor", [r"re:.*time_mixer\..*"])
    net = nn.ModuleDict({"spatial": nn.Linear(2, 2), "temporal": nn.Linear(2, 2)})
    params = apply_trainable(net, ["temporal.*"])
    assert len(params) == 2 and not net.spatial.weight.requires_grad and net.temporal.weight.requires_grad
    assert unmatched_patterns(net, ["temporal.*", "motion_head.*"]) == ["motion_head.*"]
    with pytest.raises(ValueError, match="match no parameter"):
        apply_trainable(net, ["nothing*"])
    spans = stage_spans([StageConfig("a", ("x",), 3), StageConfig("b", ("*",), None)], 10)
    assert [(s.name, s.start, s.end) for s in spans] == [("a", 0, 3), ("b", 3, 10)]
    assert stage_at(spans, 2).name == "a" and stage_at(spans, 3).name == "b"
    assert [s.name for s in stage_spans([], 5)] == ["all"]
