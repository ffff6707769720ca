"""Peak memory of the SV4D pipeline (``vidiff.pipelines.sv4d``) against the planner's prediction.

Each setting runs in a fresh process on the CPU: a tiny SV4D network (random weights, the recipe's 1280-wide
vector), a small SD VAE at a few widths, a weightless stand-in for CLIP, and a small window recipe (3 frames x 2
views, SV4D 2.0's plan: no SV3D). The measured figure is, as in ``benchmarks/memory_wan.py``, the growth of the
process's peak resident set (Linux ``VmHWM``, reset once the model and the input exist, after a warm-up call at
a small size) over its resident set before the call, less the growth of file-backed pages, plus the weights.
The prediction is :func:`vidiff.pipelines.memory_sv4d.sv4d_estimate_peak`'s ``peak`` for the plan that ran.

    python benchmarks/memory_sv4d.py                    # the table
    python benchmarks/memory_sv4d.py --json out.json    # machine-readable
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from memory_wan import measure_in_processes, report, resident  # noqa: E402

# (label, VAE widths, frames, height, width, encode chunk, decode chunk: an int, "all", or "max_memory")
SETTINGS = [
    ("vae32-64-64 5f 192x192 all", (32, 64, 64), 5, 192, 192, "all", "all"),
    ("vae32-64-64 5f 192x192 chunks 1", (32, 64, 64), 5, 192, 192, 1, 1),
    ("vae32-64 7f 160x128 chunks 2", (32, 64), 7, 128, 160, 2, 2),
    ("vae32-64-64 5f 192x192 max_memory", (32, 64, 64), 5, 192, 192, "max_memory", "max_memory"),
]
BUDGET = "256MiB"


def tiny_pipeline(vae_widths: tuple[int, ...]) -> object:
    """The measured pipeline: seeded random weights, SV4D 2.0's window plan at 3 frames x 2 views."""
    import torch

    from vidiff.autoencoders import AutoencoderKL, ImageVAEConfig
    from vidiff.networks.sv4d import SV4DUNet
    from vidiff.networks.sv4d_config import SV4D_PRESETS
    from vidiff.pipelines.sv4d import SV4DPipeline
    from vidiff.pipelines.sv4d_schedule import SV4DVariant

    torch.manual_seed(0)
    network = SV4DUNet(SV4D_PRESETS["tiny_sv4d"].replace(adm_in_channels=1280, num_times=3, num_views=2)).eval()
    vae = AutoencoderKL(ImageVAEConfig(block_out_channels=tuple(vae_widths), layers_per_block=1)).eval()
    clip_w = torch.randn(3, network.config.context_dim)
    variant = SV4DVariant("tiny", 3, 2, 1, "linear", 1.0, 2.0, 0.0, (0.0, 100.0, 250.0), True, False, 3)
    return SV4DPipeline(network, vae, lambda px: (px.mean(dim=(2, 3)) @ clip_w)[:, None], variant)


def _child(widths: list[int], frames: int, height: int, width: int, enc: str, dec: str, budget: str) -> None:
    import torch

    from vidiff.pipelines.memory_sv4d import SV4DMemoryPlan, sv4d_estimate_peak

    pipe = tiny_pipeline(tuple(widths))
    weights = sum(t.numel() * t.element_size() for m in (pipe.network, pipe.vae) for t in m.parameters())
    video = torch.rand(frames, 3, height, width, generator=torch.Generator().manual_seed(0))
    chunk = {"all": None, "max_memory": None}
    kwargs = {"num_frames": frames, "num_inference_steps": 1, "elevations": 0.0}
    pipe(video[..., :16, :16], **kwargs)  # first-call code and workspaces, as a warm process has them
    Path("/proc/self/clear_refs").write_text("5")
    _, before, file_before = resident()
    out = pipe(video, **kwargs, encode_chunk_size=chunk.get(enc, enc), decode_chunk_size=chunk.get(dec, dec),
               max_memory=budget if enc == "max_memory" else None)
    high, _, file_after = resident()
    peak = high - before - (file_after - file_before) + weights
    plan = SV4DMemoryPlan(out.run["encode_chunk_size"], out.run["decode_chunk_size"])
    predicted = sv4d_estimate_peak(pipe.footprint(), pipe.memory_run(frames, height, width, False), plan)["peak"]
    print(json.dumps({"peak": peak, "predicted": predicted, "plan": plan.describe()}))


def measure(settings: list[tuple], budget: str = BUDGET, repeats: int = 3) -> list[dict]:
    """Every setting in fresh processes, the median peak of ``repeats`` (memory_wan's
    :func:`measure_in_processes`)."""
    return measure_in_processes(__file__, settings, budget, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--budget", default=BUDGET, help=f"the max_memory setting's budget (default {BUDGET})")
    parser.add_argument("--repeats", type=int, default=3, help="processes per setting (the median is kept)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    if args.child:
        _child(*json.loads(args.child), args.budget)
        return
    report(measure(SETTINGS, args.budget, args.repeats), args.budget, args.json)

if __name__ == "__main__":
    main()
