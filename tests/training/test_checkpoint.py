"""Checkpoint files: exact round trip of model / optimizer / RNG state, atomic pointer, pruning."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vidiff.training.checkpoint import (
    capture_rng,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)


def _trained() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    for _ in range(2):
        m(torch.randn(5, 3)).square().mean().backward()
        opt.step()
        opt.zero_grad()
    return m, opt


def test_round_trip_is_exact(tmp_path: Path) -> None:
    m, opt = _trained()
    g = torch.Generator().manual_seed(5)
    torch.randn(3, generator=g)
    rng = capture_rng({"data": g})
    path = save_checkpoint(tmp_path, 7, model=m.state_dict(), optimizer=opt.state_dict(),
                           state={"epoch": 1, "index": 4}, rng=[rng], ema=m.state_dict())
    assert path.name == "step-00000007" and latest_checkpoint(tmp_path) == path
    expected = (torch.randn(4), random.random(), np.random.rand(), torch.randn(2, generator=g))
    ck = load_checkpoint(tmp_path)
    assert ck.step == 7 and ck.state == {"epoch": 1, "index": 4}
    for k, v in m.state_dict().items():
        assert torch.equal(ck.model[k], v) and torch.equal(ck.ema[k], v)

    # RNG states come back: the same draws follow
    g2 = torch.Generator()
    restore_rng(ck.rng[0], {"data": g2})
    got = (torch.randn(4), random.random(), np.random.rand(), torch.randn(2, generator=g2))
    assert torch.equal(expected[0], got[0]) and expected[1] == got[1] and expected[2] == got[2]
    assert torch.equal(expected[3], got[3])

    # the optimizer continues bit-identically after loading into a fresh copy
    m2 = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    m2.load_state_dict(ck.model)
    opt2 = torch.optim.AdamW(m2.parameters(), lr=1e-2)
    opt2.load_state_dict(ck.optimizer)
    x = torch.randn(5, 3)
    for model, o in ((m, opt), (m2, opt2)):
        model(x).square().mean().backward()
        o.step()
    for a, b in zip(m.parameters(), m2.parameters()):
        assert torch.equal(a, b)


def test_keep_last_and_stale_temp(tmp_path: Path) -> None:
    m, opt = _trained()
    (tmp_path / ".tmp-step-00000099.12345").mkdir()  # debris of a killed writer
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model=m.state_dict(), optimizer=opt.state_dict(), state={},
                        rng=[capture_rng()], keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000002", "step-00000003"]
    assert not (tmp_path / ".tmp-step-00000099.12345").exists()
    assert (tmp_path / "latest").read_text().strip() == "step-00000003"
