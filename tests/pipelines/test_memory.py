"""The memory planner: parsing budgets, predictions that respond to each control, cheapest-fitting choice."""

from __future__ import annotations

import pytest

from vidiff.pipelines.memory import (
    MemoryPlan,
    ModelFootprint,
    RunShape,
    candidate_plans,
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
    roomy, _ = plan_for_budget(SVD_XT, RUN, "80GiB")
    assert roomy == MemoryPlan()  # nothing needed: no slow-down
    costs = []
    for budget in ("80GiB", "16GiB", "8GiB", "6GiB"):
        plan, peak = plan_for_budget(SVD_XT, RUN, budget)
        assert peak <= parse_memory(budget)
        costs.append(plan)
    assert costs[-1] != MemoryPlan()
    # any plan cheaper than the chosen one does not fit
    plan, _ = plan_for_budget(SVD_XT, RUN, "8GiB")
    assert plan in candidate_plans(RUN.num_frames)


def test_too_small_a_budget_is_an_error_naming_it() -> None:
    with pytest.raises(ValueError, match=r"max_memory=.*too small"):
        plan_for_budget(SVD_XT, RUN, "100MiB")


def test_plan_validation() -> None:
    with pytest.raises(ValueError, match="offload"):
        MemoryPlan(offload="disk")
    with pytest.raises(ValueError, match="decode_chunk_size"):
        MemoryPlan(decode_chunk_size=0)
