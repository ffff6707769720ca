"""CFG and sequence (DeepSpeed-Ulysses) parallelism of the Wan DiT (gloo, real processes): the single-process
output to float32 tolerance, the same result on every rank, and bytes sent per call equal to the closed form;
and a tiny Wan text-to-video pipeline under --parallel cfg and frames giving the pixels of one process."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from vidiff.networks.dit_wan import WAN_PRESETS
from vidiff.parallel import Comm, ParallelLayout, parallelize
from vidiff.parallel.network import dit_call_bytes
from vidiff.parallel.sequence import SequenceParallelDiT, token_split

sys.path.insert(0, str(Path(__file__).parent))
from cases import TINY_DIT, TINY_VIDEO_DIT, tiny_dit_case, wan_pipeline_frames
from launch import max_diff, run_workers


def _reference(case: dict) -> torch.Tensor:
    network, calls = tiny_dit_case(**case)
    with torch.no_grad():
        return torch.stack([network(x, c, cond) for x, c, cond, _ in calls])


def test_token_split_and_refusals() -> None:
    assert token_split(TINY_DIT, 7, 4, 3) == (1, [3, 2, 2])  # latent frames when there are enough
    assert token_split(TINY_DIT, 1, 6, 3) == (3, [2, 2, 2])  # else patch rows (patch height 2)
    with pytest.raises(ValueError, match="at least 3 latent frames or patch rows"):
        token_split(TINY_DIT, 2, 4, 3)
    dit, _ = tiny_dit_case(frames=1)
    with pytest.raises(ValueError, match="num_attention_heads=6 does not divide over 4 ranks"):
        SequenceParallelDiT(dit, Comm([0, 1, 2, 3]))
    unet_like = torch.nn.Linear(2, 2)
    layout = ParallelLayout(1, 2, Comm([0, 1]), Comm([0]), Comm([0, 1]))
    with pytest.raises(ValueError, match="neither"):
        parallelize(unet_like, layout)
    assert dit_call_bytes(TINY_DIT, batch=1, frames=3, h=4, w=4, frame_ranks=1, rank=0) == 0


def _runs(mode: str, cases: list[dict]) -> list[dict]:
    return [{"kind": "dit", "mode": mode, "case": case} for case in cases]


# (world size, [(mode, case)]): even and uneven latent frames, too few frames (split by patch rows), VideoDiT
SETUPS = [
    (2, [("cfg", {"frames": 3}), ("frames", {"frames": 3}), ("frames", {"frames": 1}),
         ("frames", {"frames": 3, "video_dit": True})]),
    (3, [("frames", {"frames": 7})]),
    (4, [("cfg,frames", {"frames": 3})]),
]


@pytest.mark.parametrize(("nproc", "runs"), SETUPS, ids=[f"{n}ranks" for n, _ in SETUPS])
def test_parallel_dit_matches_one_process(tmp_path: Path, nproc: int, runs: list) -> None:
    results = run_workers(tmp_path, nproc, [r for mode, case in runs for r in _runs(mode, [case])])
    torch.set_num_threads(1)
    for (mode, case), result in zip(runs, results):
        diff = max_diff(result["outs"], _reference(case))
        print(f"{mode} on {nproc} ranks, {case}: max |Δ| = {diff:.3g}")
        assert diff <= 1e-5, f"{mode} on {nproc} ranks, {case}: max |Δ| = {diff:.3g}"
        cfg = mode.startswith("cfg")
        frame_ranks = nproc // (2 if cfg else 1)
        wan = TINY_VIDEO_DIT.wan() if case.get("video_dit") else TINY_DIT
        for rank, per_call in enumerate(result["sent"]):
            # the batch of 2 is taken as a guidance pair under cfg: one video per branch
            expected = [dit_call_bytes(wan, batch=1 if cfg else 2, frames=f, h=h, w=w, frame_ranks=frame_ranks,
                                       rank=rank % frame_ranks, cfg_parallel=cfg)
                        for _, f, _, h, w in result["shapes"]]
            assert per_call == expected, f"{mode} {case}: rank {rank}"


def test_wan_pipeline_cfg_and_frames_match_one_process(tmp_path: Path) -> None:
    modes = ("cfg", "frames")
    results = run_workers(tmp_path, 2, [{"kind": "wan_pipeline", "mode": mode} for mode in modes])
    torch.set_num_threads(1)
    reference = wan_pipeline_frames()
    config = WAN_PRESETS["tiny-t2v"]
    for mode, result in zip(modes, results):
        diff = max_diff(result["outs"], reference)
        print(f"Wan text-to-video --parallel {mode} on 2 ranks: max |Δ| on pixels = {diff:.3g}")
        assert diff <= 1e-5, f"--parallel {mode}: max |Δ| on pixels = {diff:.3g}"
        assert [s[0] for s in result["shapes"]] == [2, 2]  # guided: [uncond, cond], one call per Euler step
        cfg = mode == "cfg"
        for rank, per_call in enumerate(result["sent"]):
            expected = [dit_call_bytes(config, batch=1 if cfg else 2, frames=f, h=h, w=w, frame_ranks=1 if cfg else 2,
                                       rank=0 if cfg else rank, cfg_parallel=cfg) for _, f, _, h, w in result["shapes"]]
            assert per_call == expected, f"{mode}: rank {rank}"

