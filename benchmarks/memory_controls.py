"""Peak memory of image-to-video under each memory control, measured, next to the planner's prediction.

Each setting runs in a fresh subprocess so peaks do not leak between settings: on the CPU the figure is
the process's peak resident set size (ru_maxrss) minus its size right after loading the model; on CUDA
it is ``torch.cuda.max_memory_allocated`` (which includes the weights resident on the device).

    python benchmarks/memory_controls.py --model PATH [--device cuda] [--height 576 --width 1024 ...]
    python benchmarks/memory_controls.py --tiny      # a random small model, runs anywhere in ~a minute

``--tiny`` builds a random SVD-architecture model (narrow channels) in the vidiff layout, so the effect of
each control on activation memory is visible on a CPU.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS: dict[str, dict] = {
    "baseline": {},
    "decode_chunk_size=2": {"decode_chunk_size": 2},
    "decode_chunk_size=1": {"decode_chunk_size": 1},
    "vae_tiling": {"vae_tiling": True},
    "attention_chunk=2": {"attention_chunk": 2},
    "offload=model": {"offload": "model"},
    "offload=sequential": {"offload": "sequential"},
}


def _child(args: argparse.Namespace) -> None:
    import torch

    from vidiff.pipelines.image_to_video import ImageToVideoPipeline

    pipe = ImageToVideoPipeline.from_pretrained(args.model, device=args.device,
                                                dtype=getattr(torch, args.dtype))
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    image = torch.rand(3, args.height, args.width)
    controls = json.loads(args.controls)
    start = time.perf_counter()
    out = pipe(image, height=args.height, width=args.width, num_frames=args.num_frames,
               num_inference_steps=args.steps, output_type="pt", progress=False, **controls)
    seconds = time.perf_counter() - start
    if args.device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base_rss
    print(json.dumps({"peak": peak, "seconds": seconds, "plan": out.memory_plan.describe()}))


def _predicted(model: str, device: str, dtype: str, run: dict, controls: dict) -> float:
    import torch

    from vidiff.pipelines.image_to_video import ImageToVideoPipeline
    from vidiff.pipelines.memory import MemoryPlan, RunShape, estimate_peak

    pipe = ImageToVideoPipeline.from_pretrained(model, device="cpu", dtype=getattr(torch, dtype))
    plan = MemoryPlan(offload=controls.get("offload", "none"),
                      decode_chunk_size=controls.get("decode_chunk_size"),
                      attention_chunk=controls.get("attention_chunk"),
                      vae_tiling=controls.get("vae_tiling", False))
    shape = RunShape(batch=1, num_frames=run["num_frames"], height=run["height"], width=run["width"],
                     guidance=True, bytes_per_element=torch.finfo(getattr(torch, dtype)).bits // 8,
                     fused_attention=device.startswith("cuda"))
    return estimate_peak(pipe.footprint(), shape, plan)["peak"]


def _tiny_model(folder: Path) -> Path:
    """A random model with SVD's architecture at small width, written in the vidiff layout."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from vidiff.autoencoders import VAE_PRESETS, AutoencoderKLTemporal
    from vidiff.io import Checkpoint, Component, write_checkpoint
    from vidiff.io.components import default_feature_extractor_config, default_scheduler_config
    from vidiff.networks import UNET_PRESETS, UNetSpatioTemporal

    torch.manual_seed(0)
    ucfg = UNET_PRESETS["tiny"].replace(num_frames=8)
    unet, vae = UNetSpatioTemporal(ucfg), AutoencoderKLTemporal(VAE_PRESETS["tiny"])
    clip_cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, image_size=224, patch_size=32,
                                projection_dim=ucfg.cross_attention_dim)
    clip = CLIPVisionModelWithProjection(clip_cfg)
    ckpt = Checkpoint("vidiff", {
        "unet": Component(ucfg.to_diffusers(), unet.state_dict()),
        "vae": Component(vae.config.to_diffusers(), vae.state_dict()),
        "image_encoder": Component(clip_cfg.to_dict(), clip.state_dict()),
        "feature_extractor": Component(default_feature_extractor_config()),
        "scheduler": Component(default_scheduler_config()),
    })
    write_checkpoint(ckpt, folder, "vidiff")
    return folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="checkpoint (any layout)")
    p.add_argument("--tiny", action="store_true", help="benchmark a random small model instead")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=384)
    p.add_argument("--num-frames", type=int, default=8)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--only", nargs="*", help="run only these settings")
    p.add_argument("--controls", help=argparse.SUPPRESS)  # child mode
    args = p.parse_args()
    if args.controls is not None:
        _child(args)
        return
    tmp = None
    if args.tiny:
        tmp = tempfile.TemporaryDirectory()
        args.model = str(_tiny_model(Path(tmp.name) / "tiny"))
    if not args.model:
        p.error("give --model PATH or --tiny")
    run = {"height": args.height, "width": args.width, "num_frames": args.num_frames}
    print(f"{'setting':<22} {'measured peak':>14} {'predicted':>12} {'seconds':>8}")
    for name, controls in SETTINGS.items():
        if args.only and name not in args.only:
            continue
        if controls.get("offload") and args.device == "cpu":
            continue  # offloading moves weights between CPU and GPU: nothing to measure on a CPU
        cmd = [sys.executable, __file__, "--model", args.model, "--device", args.device,
               "--dtype", args.dtype, "--height", str(args.height), "--width", str(args.width),
               "--num-frames", str(args.num_frames), "--steps", str(args.steps),
               "--controls", json.dumps(controls)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            print(f"{name:<22} failed: {proc.stderr.strip().splitlines()[-1]}")
            continue
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        pred = _predicted(args.model, args.device, args.dtype, run, controls)
        print(f"{name:<22} {res['peak'] / 2**20:>11.1f} MiB {pred / 2**20:>8.1f} MiB {res['seconds']:>8.2f}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
