"""Peak memory of each memory control, measured on the stage it acts on, next to the planner's prediction.

Each control bounds one stage: decode chunks, decode overlap and VAE tiling bound the VAE decode;
attention chunking bounds the UNet call; model / sequential offload bound the weights resident on the
GPU; ``max_memory`` lets the planner choose. Every measurement runs in a fresh subprocess. On the CPU the
figure is the growth of the process's peak resident set (Linux ``VmHWM``, reset after the model is loaded)
over its resident set before the stage, plus for a whole generation the bytes of the weights (resident
before it starts, beside code that loading imports); on CUDA it is ``torch.cuda.max_memory_allocated``
during the stage (weights included). The
prediction is the planner's for the same stage (``vidiff.pipelines.memory``): what the stage allocates, or
for a whole generation its predicted peak.

    python benchmarks/memory_controls.py --tiny                    # random SVD-shaped model, any machine
    python benchmarks/memory_controls.py --model PATH --device cuda --dtype float16 \\
        --height 576 --width 1024 --num-frames 25
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# name -> (stage, controls); ``tile`` sets the VAE's tile size in latent pixels (its overlap a quarter of it)
SETTINGS: dict[str, tuple[str, dict]] = {
    "decode": ("decode", {}),
    "decode_chunk_size=4": ("decode", {"decode_chunk_size": 4}),
    "decode_chunk_size=1": ("decode", {"decode_chunk_size": 1}),
    "chunk=4,overlap=1": ("decode", {"decode_chunk_size": 4, "decode_overlap": 1}),
    "vae_tiling": ("decode", {"vae_tiling": True}),
    "vae_tiling,tile=16": ("decode", {"vae_tiling": True, "tile": 16}),
    "unet": ("unet", {}),
    "attention_chunk=2": ("unet", {"attention_chunk": 2}),
    "attention_chunk=1": ("unet", {"attention_chunk": 1}),
    "pipeline": ("pipeline", {}),
    "offload=model": ("pipeline", {"offload": "model"}),
    "offload=sequential": ("pipeline", {"offload": "sequential"}),
    "max_memory": ("pipeline", {"max_memory": None}),  # the budget comes from --max-memory
}


def _resident() -> tuple[int, int, int]:
    """(peak, current, file-backed) resident set of this process in bytes (Linux)."""
    text = Path("/proc/self/status").read_text()
    return tuple(int(re.search(rf"{k}:\s+(\d+)", text).group(1)) * 1024 for k in ("VmHWM", "VmRSS", "RssFile"))


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set


def _child(args: argparse.Namespace) -> None:
    import torch

    from vidiff.conditioning import Cond
    from vidiff.pipelines.image_to_video import ImageToVideoPipeline
    from vidiff.pipelines.memory import MemoryPlan, RunShape, estimate_peak, stage_activations

    dtype = getattr(torch, args.dtype)
    cuda = args.device.startswith("cuda")
    pipe = ImageToVideoPipeline.from_pretrained(args.model, device=args.device, dtype=dtype)
    modules = [m for m in (pipe.unet, pipe.vae, pipe.clip) if m is not None]
    weights = sum(t.numel() * t.element_size() for m in modules for t in [*m.parameters(), *m.buffers()])
    c = dict(json.loads(args.controls))
    if "tile" in c:
        pipe.vae.tile_latent_size, pipe.vae.tile_latent_overlap = c["tile"], c["tile"] // 4
    if "max_memory" in c:
        c["max_memory"] = args.max_memory
    f = pipe.vae.config.downsample_factor
    lat = (1, args.num_frames, pipe.unet.config.out_channels, args.height // f, args.width // f)
    z = torch.randn(lat, device=args.device)
    image = torch.rand(3, args.height, args.width)
    if args.stage == "unet":  # one classifier-free-guidance call: batch 2
        x = torch.randn(2, *lat[1:], device=args.device, dtype=dtype)
        cfg = pipe.unet.config
        cond = Cond(crossattn=torch.randn(2, 1, cfg.cross_attention_dim, device=args.device, dtype=dtype),
                    vector=torch.randn(2, cfg.projection_class_embeddings_input_dim, device=args.device, dtype=dtype),
                    concat=torch.randn(2, *lat[1:], device=args.device, dtype=dtype))
    torch.manual_seed(0)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        resident = torch.cuda.memory_allocated()
    else:
        _reset_peak()
    (_, before, file_before), start = _resident(), time.perf_counter()
    plan = MemoryPlan(offload=c.get("offload", "none"), decode_chunk_size=c.get("decode_chunk_size"),
                      attention_chunk=c.get("attention_chunk"), vae_tiling=c.get("vae_tiling", False))
    with torch.no_grad():
        if args.stage == "decode":
            pipe.vae.decode_latents(z, chunk_size=plan.decode_chunk_size, overlap=c.get("decode_overlap", 0),
                                    tiled=plan.vae_tiling)
        elif args.stage == "unet":
            with pipe.unet.chunked(plan.attention_chunk):
                pipe.unet(x, torch.zeros(2, device=args.device), cond)
        else:
            controls = {k: v for k, v in c.items() if k != "tile"}
            out = pipe(image, height=args.height, width=args.width, num_frames=args.num_frames,
                       num_inference_steps=args.steps, output_type="pt", progress=False, **controls)
            plan = out.memory_plan
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if cuda:
        peak = torch.cuda.max_memory_allocated()
    else:
        # file-backed pages (library code the first calls page in, e.g. oneDNN's kernels) are not memory the
        # stage needs: they are shared and evictable, and how many a first call touches depends on the page
        # cache (a freshly installed torch pages in ~40 MiB more), so only their growth is taken out
        high, _, file_after = _resident()
        peak = high - before - (file_after - file_before) + (weights if args.stage == "pipeline" else 0)
    run = RunShape(batch=1, num_frames=args.num_frames, height=args.height, width=args.width, guidance=True,
                   bytes_per_element=dtype.itemsize, vae_bytes_per_element=pipe.vae.dtype.itemsize,
                   downsample=f, decode_overlap=c.get("decode_overlap", 0), device_type=torch.device(args.device).type)
    if args.stage == "pipeline":
        predicted = estimate_peak(pipe.footprint(), run, plan)["peak"]
    else:
        predicted = stage_activations(pipe.footprint(), run, plan)["denoise" if args.stage == "unet" else "decode"]
        if cuda:  # max_memory_allocated counts the weights and inputs already on the device
            predicted += resident
    print(json.dumps({"peak": peak, "predicted": predicted, "seconds": seconds, "plan": plan.describe()}))


def _tiny_model(folder: Path) -> Path:
    """A random model with SVD's architecture at small width and SVD's 8x VAE, in the vidiff layout."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from vidiff.autoencoders import AutoencoderKLTemporal, VAEConfig
    from vidiff.io import Checkpoint, Component, write_checkpoint
    from vidiff.io.components import default_feature_extractor_config, default_scheduler_config
    from vidiff.networks import UNET_PRESETS, UNetSpatioTemporal

    torch.manual_seed(0)
    ucfg = UNET_PRESETS["tiny"].replace(num_frames=8)
    vcfg = VAEConfig(block_out_channels=(32, 32, 64, 64), layers_per_block=1)
    unet, vae = UNetSpatioTemporal(ucfg), AutoencoderKLTemporal(vcfg)
    clip_cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                image_size=224, patch_size=32, projection_dim=ucfg.cross_attention_dim)
    clip = CLIPVisionModelWithProjection(clip_cfg)
    ckpt = Checkpoint("vidiff", {
        "unet": Component(ucfg.to_diffusers(), unet.state_dict()),
        "vae": Component(vcfg.to_diffusers(), vae.state_dict()),
        "image_encoder": Component(clip_cfg.to_dict(), clip.state_dict()),
        "feature_extractor": Component(default_feature_extractor_config()),
        "scheduler": Component(default_scheduler_config()),
    })
    write_checkpoint(ckpt, folder, "vidiff")
    return folder


# glibc adapts its mmap threshold as a process frees large blocks (up to 32 MiB), and a free at the top of the
# heap may be trimmed: which blocks stay resident then depends on the order of frees, and the same run
# measured from 246 to 408 MiB. Pinned at the threshold's largest value (what the planner's ``host_overhead``
# bounds: freed blocks below 32 MiB stay in the heap) with one arena and no trimming below 64 MiB, the
# measurement is the case the planner models.
PINNED_MALLOC = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20),
                 "MALLOC_TRIM_THRESHOLD_": str(64 * 2**20)}


def measure(args: argparse.Namespace, name: str) -> dict:
    """Run setting ``name`` in ``--repeat`` fresh subprocesses: the median of their measured peaks (each run's
    in ``peaks``), the predicted peak, seconds and plan."""
    stage, controls = SETTINGS[name]
    cmd = [sys.executable, __file__, "--model", args.model, "--device", args.device, "--dtype", args.dtype,
           "--height", str(args.height), "--width", str(args.width), "--num-frames", str(args.num_frames),
           "--steps", str(args.steps), "--max-memory", str(args.max_memory), "--stage", stage,
           "--controls", json.dumps(controls)]
    runs = []
    for _ in range(args.repeat):
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **PINNED_MALLOC})
        if proc.returncode:
            return {"setting": name, "stage": stage, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    peaks = [r["peak"] for r in runs]
    return {"setting": name, "stage": stage, **runs[0], "peak": statistics.median(peaks), "peaks": peaks}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="checkpoint (any layout)")
    p.add_argument("--tiny", action="store_true", help="benchmark a random SVD-shaped small model")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=384)
    p.add_argument("--num-frames", type=int, default=8)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--settings", nargs="*", choices=list(SETTINGS), help="which settings (default: all)")
    p.add_argument("--max-memory", default="400MiB", help="the budget of the max_memory setting")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--repeat", type=int, default=3,
                   help="fresh processes per setting; the median peak is reported (one run's peak on the CPU "
                   "varies by up to 1.6x, as wide as the planner's band)")
    p.add_argument("--stage", help=argparse.SUPPRESS)  # child mode
    p.add_argument("--controls", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.controls is not None:
        _child(args)
        return
    tmp = tempfile.TemporaryDirectory() if args.tiny else None
    if tmp is not None:
        args.model = str(_tiny_model(Path(tmp.name) / "tiny"))
    if not args.model:
        p.error("give --model PATH or --tiny")
    print(f"{args.num_frames} frames at {args.width}x{args.height}, {args.dtype} on {args.device}")
    print(f"{'setting':<20} {'measured':>12} {'predicted':>12} {'ratio':>6} {'seconds':>8}  plan")
    results = []
    for name in args.settings or SETTINGS:
        if SETTINGS[name][1].get("offload") and args.device == "cpu":
            continue  # offloading moves weights between the CPU and a GPU: nothing to measure on a CPU
        res = measure(args, name)
        results.append(res)
        if "error" in res:
            print(f"{name:<20} failed: {res['error']}", flush=True)
            continue
        peak, pred = res["peak"] / 2**20, res["predicted"] / 2**20
        print(f"{name:<20} {peak:>8.1f} MiB {pred:>8.1f} MiB {pred / peak:>6.2f} {res['seconds']:>8.2f}  "
              f"{res['plan']}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"budget": args.max_memory, "results": results}, indent=1))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
