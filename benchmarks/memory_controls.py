"""Peak memory of each memory control, measured on the stage it acts on, next to the planner's prediction.

Each control bounds one stage: decode chunks, decode overlap and VAE tiling bound the VAE decode;
attention chunking bounds the UNet call; model / sequential offload bound the weights resident on the
GPU. Every measurement runs in a fresh subprocess and isolates its stage: on the CPU the figure is the
growth of the process's peak resident set size (ru_maxrss) during the stage; on CUDA it is
``torch.cuda.max_memory_allocated`` during the stage (weights included).

    python benchmarks/memory_controls.py --tiny                    # random SVD-shaped model, any machine
    python benchmarks/memory_controls.py --model PATH --device cuda --dtype float16 \\
        --height 576 --width 1024 --num-frames 25
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

# (stage, label, controls)
SETTINGS: list[tuple[str, str, dict]] = [
    ("decode", "decode all frames", {}),
    ("decode", "decode_chunk_size=4", {"decode_chunk_size": 4}),
    ("decode", "decode_chunk_size=1", {"decode_chunk_size": 1}),
    ("decode", "chunk=4, overlap=1", {"decode_chunk_size": 4, "decode_overlap": 1}),
    ("decode", "vae_tiling", {"vae_tiling": True}),
    ("unet", "unet step", {}),
    ("unet", "attention_chunk=2", {"attention_chunk": 2}),
    ("unet", "attention_chunk=1", {"attention_chunk": 1}),
    ("pipeline", "whole video", {}),
    ("pipeline", "offload=model", {"offload": "model"}),
    ("pipeline", "offload=sequential", {"offload": "sequential"}),
]


def _rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _child(args: argparse.Namespace) -> None:
    import torch

    from vidiff.conditioning import Cond
    from vidiff.pipelines.image_to_video import ImageToVideoPipeline

    dtype = getattr(torch, args.dtype)
    cuda = args.device.startswith("cuda")
    pipe = ImageToVideoPipeline.from_pretrained(args.model, device=args.device, dtype=dtype)
    c = json.loads(args.controls)
    f = pipe.vae.config.downsample_factor
    lat = (1, args.num_frames, pipe.unet.config.out_channels, args.height // f, args.width // f)
    z = torch.randn(lat, device=args.device)
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
    before, start = _rss(), time.perf_counter()
    with torch.no_grad():
        if args.stage == "decode":
            pipe.vae.decode_latents(z, chunk_size=c.get("decode_chunk_size"), overlap=c.get("decode_overlap", 0),
                                    tiled=c.get("vae_tiling", False))
        elif args.stage == "unet":
            with pipe.unet.chunked(c.get("attention_chunk")):
                pipe.unet(x, torch.zeros(2, device=args.device), cond)
        else:
            pipe(torch.rand(3, args.height, args.width), height=args.height, width=args.width,
                 num_frames=args.num_frames, num_inference_steps=args.steps, output_type="pt", progress=False, **c)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if cuda else _rss() - before
    print(json.dumps({"peak": peak, "seconds": seconds}))


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


def _predicted(model: str, dtype: str, device: str, args: argparse.Namespace, stage: str, c: dict) -> float:
    import torch

    from vidiff.pipelines.image_to_video import ImageToVideoPipeline
    from vidiff.pipelines.memory import MemoryPlan, RunShape, estimate_peak

    pipe = ImageToVideoPipeline.from_pretrained(model, dtype=getattr(torch, dtype))
    plan = MemoryPlan(offload=c.get("offload", "none"), decode_chunk_size=c.get("decode_chunk_size"),
                      attention_chunk=c.get("attention_chunk"), vae_tiling=c.get("vae_tiling", False))
    run = RunShape(batch=1, num_frames=args.num_frames, height=args.height, width=args.width, guidance=True,
                   bytes_per_element=torch.finfo(getattr(torch, dtype)).bits // 8,
                   fused_attention=device.startswith("cuda"), downsample=pipe.vae.config.downsample_factor)
    stages = estimate_peak(pipe.footprint(), run, plan)
    return stages["peak" if stage == "pipeline" else {"unet": "denoise"}.get(stage, stage)]


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
    p.add_argument("--stages", nargs="*", default=["decode", "unet", "pipeline"])
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
    print(f"{'stage':<9} {'setting':<22} {'measured peak':>14} {'predicted':>12} {'seconds':>8}")
    for stage, label, controls in SETTINGS:
        if stage not in args.stages or (controls.get("offload") and args.device == "cpu"):
            continue  # offloading moves weights between the CPU and a GPU: nothing to measure on a CPU
        cmd = [sys.executable, __file__, "--model", args.model, "--device", args.device, "--dtype", args.dtype,
               "--height", str(args.height), "--width", str(args.width), "--num-frames", str(args.num_frames),
               "--steps", str(args.steps), "--stage", stage, "--controls", json.dumps(controls)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            print(f"{stage:<9} {label:<22} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
            continue
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        pred = _predicted(args.model, args.dtype, args.device, args, stage, controls)
        peak, seconds = res["peak"] / 2**20, res["seconds"]
        print(f"{stage:<9} {label:<22} {peak:>10.1f} MiB {pred / 2**20:>8.1f} MiB {seconds:>8.2f}", flush=True)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
