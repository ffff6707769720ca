"""The memory planner for SV4D / SV4D 2.0 (:mod:`vidiff.pipelines.memory_sv4d`): its predictions bound the
peaks measured on the CPU in fresh processes (``benchmarks/memory_sv4d.py``: a tiny SV4D network, SD VAEs of
two depths, whole runs) and stay within 3x of them; ``max_memory`` picks the VAE's encode and decode chunks,
its plan stays within the budget when measured, and a budget below the most frugal plan is an error naming the
need (the CLI's: ``tests/cli/test_generate_sv4d.py``). The chunks change no pixel beyond float32 rounding."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from vidiff.pipelines.memory import SAFETY_MARGIN, parse_memory
from vidiff.pipelines.memory_sv4d import (
    SV4DMemoryPlan,
    sv4d_candidate_plans,
    sv4d_estimate_peak,
    sv4d_plan_for_budget,
)

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
import memory_sv4d  # noqa: E402


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's VmHWM reset")
def test_predictions_bound_the_measured_peaks() -> None:
    results = {r["setting"]: r for r in memory_sv4d.measure(memory_sv4d.SETTINGS)}
    for name, r in results.items():
        assert "error" not in r, r
        assert r["predicted"] >= r["peak"], (name, r)
        # the CPU allocator's retention moves a measurement by up to ~30% from run to run and machine to machine
        # (the same chunk-1 run: 90 and 107 MiB here; the whole run: 313 MiB on CI, 427-444 MiB here)
        assert r["predicted"] <= 3 * r["peak"], (name, r)
    budget = parse_memory(memory_sv4d.BUDGET)
    chosen, whole = results["vae32-64-64 5f 192x192 max_memory"], results["vae32-64-64 5f 192x192 all"]
    assert whole["peak"] > budget  # without chunks this run does not fit: the budget binds
    assert chosen["plan"] != whole["plan"]
    assert chosen["predicted"] * SAFETY_MARGIN <= budget and chosen["peak"] <= budget


def test_planner_chooses_vae_chunks_and_tightens_with_the_budget() -> None:
    pipe = memory_sv4d.tiny_pipeline((32, 64, 64))
    fp, run = pipe.footprint(), pipe.memory_run(5, 192, 192, False)
    assert fp.unet_attention == (False, True)  # the tiny network: attention in the middle block only
    assert len(sv4d_candidate_plans(run)) == 4 * 4  # all, 4, 2, 1 images (5 frames, 6 latents: 8 is no chunk)
    peaks = {c: sv4d_estimate_peak(fp, run, SV4DMemoryPlan(c, c)) for c in (None, 2, 1)}
    assert peaks[None]["peak"] > peaks[2]["peak"] > peaks[1]["peak"]
    assert peaks[None]["denoise"] == peaks[1]["denoise"]  # the chunks bound the VAE stages only
    assert sv4d_plan_for_budget(fp, run, "64GiB")[0] == SV4DMemoryPlan()  # roomy: all at once, fastest
    tight, predicted = sv4d_plan_for_budget(fp, run, int(peaks[1]["peak"] * SAFETY_MARGIN) + 1)
    assert tight == SV4DMemoryPlan(1, 1) and predicted <= peaks[1]["peak"] * SAFETY_MARGIN + 1
    with pytest.raises(ValueError, match=r"max_memory=.* too small: .* need about .* for 5 frames x 2 views "
                                         r"at 192x192"):
        sv4d_plan_for_budget(fp, run, "20MiB")


def test_a_plan_changes_no_pixel_and_is_recorded() -> None:
    pipe = memory_sv4d.tiny_pipeline((32, 64))
    video = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    kwargs = {"num_frames": 5, "num_inference_steps": 1, "elevations": 0.0}
    whole = pipe(video, **kwargs, encode_chunk_size=None, decode_chunk_size=None)
    planned = pipe(video, **kwargs, max_memory=int(sv4d_estimate_peak(
        pipe.footprint(), pipe.memory_run(5, 32, 32, False), SV4DMemoryPlan(1, 1))["peak"] * SAFETY_MARGIN) + 1)
    assert planned.run["memory_plan"] == "encode_chunk_size=1, decode_chunk_size=1"
    assert (planned.run["encode_chunk_size"], planned.run["decode_chunk_size"]) == (1, 1)
    assert planned.run["predicted_peak_bytes"] > 0
    assert (planned.frames - whole.frames).abs().max() <= 1e-4  # float32 rounding of batched convolutions
    with pytest.raises(ValueError, match="too small"):
        pipe(video, **kwargs, max_memory="1MiB")
