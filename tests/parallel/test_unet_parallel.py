"""Frame and CFG parallelism of the spatio-temporal UNet (gloo, real processes): the single-process output
to float32 tolerance, the same result on every rank, and bytes sent per call equal to the closed form."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from vidiff.parallel import Comm, parse_mode, split_sizes
from vidiff.parallel.network import temporal_layers, unet_call_bytes

sys.path.insert(0, str(Path(__file__).parent))
from cases import TINY, tiny_unet_case
from launch import max_diff, run_workers


def _reference(case: dict) -> torch.Tensor:
    unet, calls = tiny_unet_case(**case)
    with torch.no_grad():
        return torch.stack([unet(x, c, cond, image_only_indicator=i) for x, c, cond, i in calls])


def test_modes_and_splits() -> None:
    assert parse_mode("cfg") == (True, False) and parse_mode("frames,cfg") == (True, True)
    for bad in ("", "cfg,cfg", "tensor", "cfg,sequence"):
        with pytest.raises(ValueError, match="--parallel must be one of"):
            parse_mode(bad)
    assert split_sizes(25, 2) == [13, 12] and split_sizes(7, 3) == [3, 2, 2] and split_sizes(4, 4) == [1] * 4
    alone = Comm([0])
    x = torch.randn(2, 3)
    assert alone.all_gather(x)[0] is x and alone.sent == 0  # a group of one sends nothing
    resnets, attentions = temporal_layers(TINY, 8, 8)  # 2 levels, 1 layer: 1+1 down, 2 mid, 2+2 up
    assert len(resnets) == 8 and len(attentions) == 1 + 1 + 2
    assert unet_call_bytes(TINY, batch=1, frames=5, h=8, w=8, frame_ranks=1, rank=0) == 0


# (world size, mode, frames): uneven 25 on 2 and 7 on 3, and both kinds at once on 4 ranks
SETUPS = [(2, "frames", 25), (3, "frames", 7), (4, "cfg,frames", 7)]


@pytest.mark.parametrize(("nproc", "mode", "frames"), SETUPS, ids=[f"{m}-{n}ranks-{t}frames" for n, m, t in SETUPS])
def test_parallel_unet_matches_one_process(tmp_path: Path, nproc: int, mode: str, frames: int) -> None:
    case = {"frames": frames, "batch": 2}
    (result,) = run_workers(tmp_path, nproc, [{"kind": "unet", "mode": mode, "case": case}])
    diff = max_diff(result["outs"], _reference(case))
    assert diff <= 1e-5, f"{mode} on {nproc} ranks: max |Δ| = {diff:.3g}"
    cfg = mode.startswith("cfg")
    frame_ranks = nproc // (2 if cfg else 1)
    for rank, per_call in enumerate(result["sent"]):
        # the batch of 2 is taken as a guidance pair under cfg: one video per branch
        expected = unet_call_bytes(TINY, batch=1 if cfg else 2, frames=frames, h=8, w=8, frame_ranks=frame_ranks,
                                   rank=rank % frame_ranks, cfg_parallel=cfg)
        assert per_call == [expected] * 2, f"rank {rank}"


def test_a_call_of_fewer_frames_than_ranks_runs_whole_on_every_rank(tmp_path: Path) -> None:
    # a long video's in-between windows can be shorter than the frame ranks (keyframes holding both ends): such
    # a call is not split (no rank would be left without a frame); every rank computes it whole, sending nothing
    case = {"frames": 2, "batch": 2}
    (result,) = run_workers(tmp_path, 3, [{"kind": "unet", "mode": "frames", "case": case}])
    diff = max_diff(result["outs"], _reference(case))
    assert diff <= 1e-5, f"2 frames on 3 ranks: max |Δ| = {diff:.3g}"
    assert result["sent"] == [[0, 0]] * 3
