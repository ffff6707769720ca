"""Peak memory of the Wan pipeline (``vidiff.pipelines.text_to_video``) against the planner's prediction.

Each setting runs in a fresh process on the CPU (random weights of a small Wan 2.1-style model: the 3D VAE
at a few widths, a tiny transformer, text given as embeddings). The measured figure is, as in
``benchmarks/memory_controls.py``, the growth of the process's peak resident set (Linux ``VmHWM``, reset once
the model exists) over its resident set before the call, less the growth of file-backed pages; for a whole
generation the weights are added back. The prediction is ``vidiff.pipelines.memory``'s: the decode stage
(``stage_activations``) for ``decode`` settings, the overall peak (``estimate_peak``) for ``pipeline`` ones.

    python benchmarks/memory_wan.py                     # the table in the README
    python benchmarks/memory_wan.py --json out.json     # machine-readable
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# (label, VAE base width, frames, height, width, stage, decode chunk: latent frames, "all" or "max_memory")
SETTINGS = [
    ("vae16 9f 96x96 decode all", 16, 9, 96, 96, "decode", "all"),
    ("vae16 9f 96x96 decode 1", 16, 9, 96, 96, "decode", 1),
    ("vae16 17f 128x128 decode 2", 16, 17, 128, 128, "decode", 2),
    ("vae24 13f 128x160 decode all", 24, 13, 128, 160, "decode", "all"),
    ("vae16 17f 128x128 pipeline all", 16, 17, 128, 128, "pipeline", "all"),
    ("vae16 17f 128x128 pipeline 1", 16, 17, 128, 128, "pipeline", 1),
    ("vae16 17f 128x128 max_memory", 16, 17, 128, 128, "pipeline", "max_memory"),
]
BUDGET = "450MiB"


def resident() -> tuple[int, int, int]:
    """``(VmHWM, VmRSS, RssFile)`` of this process in bytes (Linux ``/proc``)."""
    text = Path("/proc/self/status").read_text()
    return tuple(int(re.search(rf"{k}:\s+(\d+)", text).group(1)) * 1024 for k in ("VmHWM", "VmRSS", "RssFile"))


def _child(base: int, frames: int, height: int, width: int, stage: str, chunk: str, budget: str) -> None:
    import torch

    from vidiff.autoencoders.wan_vae import WAN_VAE_PRESETS, WanVAE
    from vidiff.networks.dit_wan import WAN_PRESETS, WanTransformer3D
    from vidiff.pipelines.memory import MemoryPlan, RunShape, estimate_peak, stage_activations
    from vidiff.pipelines.text_to_video import TextToVideoPipeline

    torch.manual_seed(0)
    vae = WanVAE(WAN_VAE_PRESETS["tiny-2.1"].replace(base_dim=base)).eval()
    pipe = TextToVideoPipeline(WanTransformer3D(WAN_PRESETS["tiny-t2v"]).eval(), vae)
    weights = sum(t.numel() * t.element_size() for m in (pipe.transformer, vae) for t in m.parameters())
    s, tf = vae.config.spatial_factor, vae.config.temporal_factor
    z = torch.randn(1, (frames - 1) // tf + 1, vae.config.z_dim, height // s, width // s)
    text = torch.randn(1, 512, pipe.transformer.config.text_dim)
    decode_chunk = None if chunk in ("all", "max_memory") else int(chunk)
    with torch.no_grad():  # first-call code and workspaces (both CPU 3D-convolution kernels: native and oneDNN)
        vae.decode_latents(z[:, :2, :, :2, :2], chunk_frames=1)
        torch.nn.functional.conv3d(torch.zeros(1, 64, 4, 96, 8), torch.zeros(8, 64, 3, 3, 3))
        torch.nn.functional.conv2d(torch.zeros(4, 64, 96, 8), torch.zeros(8, 64, 3, 3))
    Path("/proc/self/clear_refs").write_text("5")
    _, before, file_before = resident()
    with torch.no_grad():
        if stage == "decode":
            vae.decode_latents(z, chunk_frames=decode_chunk)
            plan = MemoryPlan(decode_chunk_size=decode_chunk)
        else:
            out = pipe(prompt_embeds=text, negative_prompt_embeds=text, height=height, width=width,
                       num_frames=frames, num_inference_steps=1, output_type="pt", decode_chunk_size=decode_chunk,
                       max_memory=budget if chunk == "max_memory" else None)
            plan = out.memory_plan
    high, _, file_after = resident()
    peak = high - before - (file_after - file_before) + (weights if stage == "pipeline" else 0)
    run = RunShape(batch=1, num_frames=frames, height=height, width=width, guidance=True, bytes_per_element=4,
                   downsample=s, device_type="cpu", temporal_downsample=tf)
    fp = pipe.footprint()
    predicted = (estimate_peak(fp, run, plan)["peak"] if stage == "pipeline"
                 else stage_activations(fp, run, plan)["decode"])
    print(json.dumps({"peak": peak, "predicted": predicted, "plan": plan.describe()}))


def measure_in_processes(script: str, settings: list[tuple], budget: str, repeats: int) -> list[dict]:
    """Run ``script --child JSON --budget B`` for every setting ``(label, *child arguments)`` in ``repeats``
    fresh processes; each result: the label as ``setting`` and the child's JSON (``peak``, ``predicted``,
    ``plan``) of the median-peak process (one run's peak varies by tens of MiB on a loaded machine, as in
    memory_controls.py), or ``error``: the last line of a failing child's stderr."""
    results = []
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for label, *child in settings:
        cmd = [sys.executable, script, "--child", json.dumps(child), "--budget", budget]
        runs = []
        for _ in range(repeats):
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
            if proc.returncode != 0:
                runs = [{"error": proc.stderr.strip().splitlines()[-1]}]
                break
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        runs.sort(key=lambda r: r.get("peak", 0))
        results.append({"setting": label, **runs[len(runs) // 2]})
    return results


def measure(settings: list[tuple], budget: str = BUDGET, repeats: int = 3) -> list[dict]:
    """Every setting in fresh processes (:func:`measure_in_processes`)."""
    return measure_in_processes(__file__, settings, budget, repeats)


def report(results: list[dict], budget: str, json_path: str | None) -> None:
    """Print measured against predicted peaks (and write them to ``json_path`` when given)."""
    width = max(len(r["setting"]) for r in results) + 2
    print(f"{'setting':<{width}} {'measured':>10} {'predicted':>10} {'ratio':>6}  plan")
    mib = 2**20
    for r in results:
        if "error" in r:
            print(f"{r['setting']:<{width}} error: {r['error']}")
            continue
        print(f"{r['setting']:<{width}} {r['peak'] / mib:>7.1f} MiB {r['predicted'] / mib:>6.1f} MiB "
              f"{r['predicted'] / r['peak']:>6.2f}  {r['plan']}")
    if json_path:
        Path(json_path).write_text(json.dumps({"budget": budget, "results": results}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--budget", default=BUDGET, help=f"the max_memory setting's budget (default {BUDGET})")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    if args.child:
        _child(*json.loads(args.child), args.budget)
        return
    report(measure(SETTINGS, args.budget), args.budget, args.json)

if __name__ == "__main__":
    main()
