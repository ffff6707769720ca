"""The memory planner for the Wan pipeline (causal 3D VAE + Wan transformer): predictions bound the peaks measured
on the CPU in fresh processes (``benchmarks/memory_wan.py``) for three sizes and two VAE widths; ``max_memory``
picks the decode chunk (latent frames), and its plan stays within the budget; a budget below the minimum is a
error naming the memory needed (the CLI's: ``tests/pipelines/test_wan_pipeline.py``); chunked decoding
is exact."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from vidiff.autoencoders.wan_vae import WAN_VAE_PRESETS, WanVAE
from vidiff.networks.dit_wan import WAN_PRESETS, WanTransformer3D
from vidiff.pipelines.memory import MemoryPlan, RunShape, candidate_plans, estimate_peak, parse_memory
from vidiff.pipelines.text_to_video import TextToVideoPipeline

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
import memory_wan  # noqa: E402

MEASURED = [s for s in memory_wan.SETTINGS if s[0] in ("vae16 9f 96x96 decode all", "vae16 17f 128x128 decode 2",
                                                       "vae24 13f 128x160 decode all", "vae16 17f 128x128 max_memory")]


def _pipe(base: int = 16) -> TextToVideoPipeline:
    torch.manual_seed(0)
    vae = WanVAE(WAN_VAE_PRESETS["tiny-2.1"].replace(base_dim=base)).eval()
    return TextToVideoPipeline(WanTransformer3D(WAN_PRESETS["tiny-t2v"]).eval(), vae)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's VmHWM reset")
def test_predictions_bound_the_measured_peaks() -> None:
    results = {r["setting"]: r for r in memory_wan.measure(MEASURED)}
    for name, r in results.items():
        assert "error" not in r, r
        assert r["predicted"] >= r["peak"], (name, r)
        assert r["predicted"] <= 2.5 * r["peak"], (name, r)
    chosen = results["vae16 17f 128x128 max_memory"]
    assert "decode_chunk_size=all" not in chosen["plan"]  # the budget binds: decoding all at once does not fit
    assert chosen["predicted"] <= parse_memory(memory_wan.BUDGET) and chosen["peak"] <= parse_memory(memory_wan.BUDGET)


def test_planner_chooses_decode_chunks_only_and_tightens_with_the_budget() -> None:
    pipe = _pipe()
    fp = pipe.footprint()
    assert fp.causal_vae is not None and fp.dit is not None
    assert {(p.offload, p.attention_chunk, p.vae_tiling) for p in candidate_plans(5, "cuda", chunks_only=True)} == {
        ("none", None, False)}
    run = RunShape(batch=1, num_frames=17, height=128, width=128, guidance=True, bytes_per_element=4, downsample=4,
                   device_type="cpu", temporal_downsample=4)
    peaks = {c: estimate_peak(fp, run, MemoryPlan(decode_chunk_size=c))["peak"] for c in (None, 2, 1)}
    assert peaks[None] > peaks[2] > peaks[1]
    assert pipe.choose_plan(1, 128, 128, 17, True, "64GiB", 1) == MemoryPlan()  # roomy: all at once, fastest
    tight = pipe.choose_plan(1, 128, 128, 17, True, int(peaks[1] * 1.2), None)
    assert tight.decode_chunk_size == 1
    with pytest.raises(ValueError, match=r"max_memory=.* too small: .* need about .* for 17 frames at 128x128"):
        pipe.choose_plan(1, 128, 128, 17, True, "20MiB", None)


def test_chunked_pipeline_decode_equals_the_whole_clip() -> None:
    """The plan only changes how many latent frames the causal VAE decodes at a time: the frames are the same."""
    pipe = _pipe(8)
    text = torch.randn(1, 8, pipe.transformer.config.text_dim)
    kwargs = {"prompt_embeds": text, "height": 32, "width": 32, "num_frames": 13, "num_inference_steps": 1,
              "guidance_scale": 1.0, "output_type": "pt"}
    whole = pipe(**kwargs, decode_chunk_size=None, generator=torch.Generator().manual_seed(0))
    for chunk in (1, 3):
        out = pipe(**kwargs, decode_chunk_size=chunk, generator=torch.Generator().manual_seed(0))
        assert out.memory_plan.decode_chunk_size == chunk
        assert (out.frames - whole.frames).abs().max() <= 1e-5
