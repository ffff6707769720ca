"""The memory planner: parsing budgets, predictions that respond to each control, cheapest-fitting choice; its
predictions against peaks measured on the CPU, each control in a fresh process (``benchmarks/memory_controls.py``):
predicted >= measured and within a factor of 2, and ``max_memory``'s plan within the budget when measured; sizes
that cannot fit the device refused with the estimate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from vidiff.pipelines.memory import (
    SAFETY_MARGIN,
    MemoryPlan,
    ModelFootprint,
    RunShape,
    _plan_cost,
    candidate_plans,
    check_fits,
    estimate_peak,
    parse_memory,
    plan_for_budget,
)

# SVD-XT's real widths and parameter counts (UNet 1.52 B, VAE encoder 34 M / decoder 63 M, CLIP ViT-H 632 M)
SVD_XT = ModelFootprint(
    unet_params=1_524_623_082, vae_decoder_params=63_000_000, vae_encoder_params=34_000_000,
    clip_params=632_000_000, unet_channels=(320, 640, 1280, 1280), unet_heads=(5, 10, 20, 20),
    vae_channels=(128, 256, 512, 512), largest_layer_params=13_000_000,
)  # fmt: skip
RUN = RunShape(batch=1, num_frames=25, height=576, width=1024, guidance=True, bytes_per_element=2)


@pytest.mark.parametrize(("text", "expected"), [("8GiB", 8 * 2**30), ("7.5 GB", 7_500_000_000), ("512MiB", 2**29),
                                                ("1024", 1024), (2048, 2048)])
def test_parse_memory(text: str | int, expected: int) -> None:
    assert parse_memory(text) == expected


@pytest.mark.parametrize("bad", ["eight gigs", "8 parsecs", "-1GiB", "0", ""])
def test_parse_memory_rejects_nonsense_naming_it(bad: str) -> None:
    with pytest.raises(ValueError, match="memory size"):
        parse_memory(bad)


def test_each_control_lowers_its_stage() -> None:
    base = estimate_peak(SVD_XT, RUN, MemoryPlan())
    chunked = estimate_peak(SVD_XT, RUN, MemoryPlan(decode_chunk_size=2))
    assert chunked["decode"] < base["decode"] and chunked["denoise"] == base["denoise"]
    tiled = estimate_peak(SVD_XT, RUN, MemoryPlan(decode_chunk_size=2, vae_tiling=True))
    assert tiled["decode"] < chunked["decode"]
    attn = estimate_peak(SVD_XT, RUN, MemoryPlan(attention_chunk=2))
    assert attn["denoise"] < base["denoise"]
    model = estimate_peak(SVD_XT, RUN, MemoryPlan(offload="model"))
    assert model["denoise"] < base["denoise"] and model["peak"] < base["peak"]
    seq = estimate_peak(SVD_XT, RUN, MemoryPlan(offload="sequential"))
    assert seq["denoise"] < model["denoise"]


def test_planner_picks_cheapest_fitting_and_tightens_with_the_budget() -> None:
    # decoding all 25 frames at once in float32 is the largest stage (a 256-channel 1024x576 map is 15 GB)
    roomy, _ = plan_for_budget(SVD_XT, RUN, "160GiB")
    assert roomy == MemoryPlan()  # nothing needed: no slow-down
    costs = []
    for budget in ("160GiB", "32GiB", "16GiB", "9GiB"):
        plan, peak = plan_for_budget(SVD_XT, RUN, budget)
        assert peak <= parse_memory(budget)
        costs.append(plan)
    assert costs[-1] != MemoryPlan()
    # every plan cheaper than the chosen one is predicted not to fit (with the safety margin)
    plan, _ = plan_for_budget(SVD_XT, RUN, "9GiB")
    cheaper = [p for p in candidate_plans(RUN.num_frames) if _plan_cost(p, RUN.num_frames) < _plan_cost(plan, 25)]
    assert cheaper
    for p in cheaper:
        assert estimate_peak(SVD_XT, RUN, p)["peak"] * SAFETY_MARGIN > parse_memory("9GiB"), p


def test_no_offloading_on_the_cpu() -> None:
    """On the CPU the weights are always resident: offloading saves nothing, so it is neither predicted to
    save memory nor chosen."""
    cpu = replace(RUN, device_type="cpu")
    assert {p.offload for p in candidate_plans(25, "cpu")} == {"none"}
    assert estimate_peak(SVD_XT, cpu, MemoryPlan(offload="sequential"))["peak"] == estimate_peak(
        SVD_XT, cpu, MemoryPlan())["peak"]


def test_too_small_a_budget_is_an_error_naming_it() -> None:
    with pytest.raises(ValueError, match=r"max_memory=.*too small"):
        plan_for_budget(SVD_XT, RUN, "100MiB")


def test_plan_validation() -> None:
    with pytest.raises(ValueError, match="offload"):
        MemoryPlan(offload="disk")
    with pytest.raises(ValueError, match="decode_chunk_size"):
        MemoryPlan(decode_chunk_size=0)


# --- predictions against measurements ------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
BUDGET = "250MiB"
MEASURED = ["decode", "decode_chunk_size=4", "chunk=4,overlap=1", "vae_tiling,tile=16", "unet", "attention_chunk=2",
            "pipeline"]


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Every setting measured once, each in its own subprocess, on a random model of SVD's architecture
    (8x VAE) at small width: 8 frames at 192x128, float32, the CPU."""
    out = tmp_path_factory.mktemp("memory") / "memory.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "memory_controls.py"), "--tiny", "--height", "128", "--width",
           "192", "--num-frames", "8", "--steps", "1", "--max-memory", BUDGET, "--json", str(out),
           "--settings", *MEASURED, "max_memory"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.is_file(), proc.stderr[-2000:]
    return {r["setting"]: r for r in json.loads(out.read_text())["results"]}


@pytest.mark.slow
@pytest.mark.parametrize("setting", MEASURED)
def test_prediction_bounds_the_measured_peak_within_2x(measured: dict[str, dict], setting: str) -> None:
    res = measured[setting]
    assert "error" not in res, res
    assert res["predicted"] >= res["peak"], res
    assert res["predicted"] <= 2 * res["peak"], res


@pytest.mark.slow
def test_max_memory_plan_stays_within_the_budget(measured: dict[str, dict]) -> None:
    budget = parse_memory(BUDGET)
    chosen, default = measured["max_memory"], measured["pipeline"]
    assert "error" not in chosen, chosen
    assert default["peak"] > budget  # without controls this generation does not fit: the budget binds
    assert chosen["plan"] != default["plan"]
    assert chosen["peak"] <= budget, chosen
    assert chosen["predicted"] <= budget




@pytest.mark.parametrize(("height", "width", "frames"), [(16384, 1024, 25), (576, 1024, 100_000)])
def test_sizes_that_cannot_fit_are_refused_with_the_estimate(height: int, width: int, frames: int) -> None:
    run = RunShape(batch=1, num_frames=frames, height=height, width=width, guidance=True)
    smallest = (estimate_peak(SVD_XT, run, MemoryPlan(offload="sequential", decode_chunk_size=1,
                                                         attention_chunk=1, vae_tiling=True))["peak"])
    assert smallest > 80 * 2**30  # the most frugal plan alone needs more than an 80 GiB GPU
    with pytest.raises(ValueError, match=rf"{frames} frames at {width}x{height} needs about .* GiB .* of device"):
        check_fits(SVD_XT, run, 80 * 2**30, "device cuda:0")
    check_fits(SVD_XT, RunShape(batch=1, num_frames=25, height=576, width=1024, guidance=True), 80 * 2**30,
               "device cuda:0")  # SVD-XT's own size fits


def test_cli_refuses_an_unfittable_size_before_generating(tmp_path: Path) -> None:
    image = tmp_path / "in.png"
    import PIL.Image

    PIL.Image.new("RGB", (64, 64), (120, 30, 200)).save(image)
    out = tmp_path / "out.mp4"
    cmd = [sys.executable, "-m", "vidiff.cli.main", "generate", "--image", str(image), "--output", str(out),
           "--height", "8192", "--width", "8192", "--quiet"]  # frames beyond the clip make a long video
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "8192x8192" in last and "needs about" in last, proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()
