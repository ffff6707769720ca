"""Long videos on the bundled model: naive last-frame chaining against vidiff's chain, keyframes and fifo modes.

The naive recipe (the seed documents' §6.2) decodes the last frame of each clip and uses it as the next clip's
image. vidiff's modes (``vidiff.pipelines.long_video``) never leave latent space between windows. For each
method, seed and motion bucket (0 and 255), a ``--frames``-frame video from a held-out photograph:

* **seam ratio** ``max_i d_i / median_i d_i`` with ``d_i`` the mean absolute difference of frames i and i+1
  on [0, 1] (``vidiff.metrics.temporal.seam_ratio``); acceptance: ≤ 2.5 and at most half the naive one;
* **drift** at bucket 0: PSNR of the last frame against the first (≥ 22 dB);
* **motion kept** at bucket 255: mean flow of the last 14 frames over that of the first 14 (≥ 0.5;
  ``vidiff.metrics.flow.mean_flow_magnitude``);
* **memory and time**: peak RSS of a fresh process generating 28 and ``--frames`` frames (≤ 1.2×), seconds
  per frame;
* **end image**: a clip from a crop of the photo to the crop shifted by ``--pan`` pixels (a camera pan):
  PSNR of the last frame against the end image (≥ 25 dB), the sign of the in-between flow, how many of the
  steps go the pan's way, and the clip's seam ratio (a jump onto the end frame shows there);
* **the model's own floor**: the seam ratio of single clips (one window, no seams at all) for ``--floor-seeds``
  seeds, and of their steps pooled (each clip's ``d_i`` over its own median; 9 clips give 117 steps, about
  as many as a 120-frame video has): what a sampler that follows the model without any seam would score.

    python benchmarks/long_video.py [--frames 120] [--seeds 0 1 2] [--steps 10] [--photo coffee.png]
        [--json FILE]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from vidiff.metrics.flow import estimate_flow, mean_flow_magnitude
from vidiff.metrics.temporal import seam_ratio
from vidiff.pipelines.image_to_video import ImageToVideoPipeline, bundled_model_path
from vidiff.pipelines.long_video_pipeline import generate_long_video
from vidiff.pipelines.settings import GenerationSettings

METHODS = ("naive", "chain", "keyframes", "fifo")


def photo(name: str) -> PIL.Image.Image:
    spec = importlib.util.find_spec("skimage")
    folder = Path(next(iter(spec.submodule_search_locations)), "data")
    return PIL.Image.open(folder / name).convert("RGB")


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.double() - b.double()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def naive(pipe: ImageToVideoPipeline, image: PIL.Image.Image | torch.Tensor, frames: int,
          s: GenerationSettings) -> torch.Tensor:
    """Last-frame chaining: each clip starts from the decoded last frame of the previous one."""
    out: list[torch.Tensor] = []
    seed = s.seed
    while sum(len(c) for c in out) < frames:
        clip = pipe(image, settings=s, seed=seed, output_type="pt", progress=False).frames[0]
        out.append(clip if not out else clip[1:])
        image, seed = clip[-1], seed + 1
    return torch.cat(out)[:frames]


def generate(method: str, pipe: ImageToVideoPipeline, image: PIL.Image.Image, frames: int,
             s: GenerationSettings, **kwargs) -> torch.Tensor:
    if method == "naive":
        return naive(pipe, image, frames, s)
    chunks: list[torch.Tensor] = []
    generate_long_video(pipe, image, frames, chunks.append, mode=method, settings=s, progress=False,
                        generator=torch.Generator().manual_seed(s.seed), **kwargs)
    return torch.cat(chunks).float() / 255


def figures(video: torch.Tensor, bucket: int) -> dict[str, float]:
    out = {"seam_ratio": seam_ratio(video)}
    if bucket == 0:
        out["psnr_last_first"] = psnr(video[-1], video[0])
    else:
        first, last = mean_flow_magnitude(video[:14]), mean_flow_magnitude(video[-14:])
        out.update(flow_first=first, flow_last=last, flow_ratio=last / first if first > 0 else math.nan)
    return out


def rss_child(method: str, frames: int, steps: int, name: str) -> None:
    """Generate in this (fresh) process and print peak RSS and seconds as JSON."""
    pipe = ImageToVideoPipeline.from_pretrained(bundled_model_path())
    s = GenerationSettings(num_inference_steps=steps, seed=0)
    start = time.perf_counter()
    generate(method, pipe, photo(name), frames, s)
    seconds = time.perf_counter() - start
    print(json.dumps({"rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "seconds": seconds}))


def native_floor(pipe: ImageToVideoPipeline, image: PIL.Image.Image, bucket: int, seeds: list[int],
                 steps: int) -> dict[str, object]:
    """Seam ratios of the model's own single clips, which contain no seam: per clip, and pooled."""
    from vidiff.metrics.temporal import frame_differences

    per_clip, pooled = [], []
    for seed in seeds:
        s = GenerationSettings(num_inference_steps=steps, seed=seed, motion_bucket_id=bucket)
        clip = pipe(image, settings=s, seed=seed, output_type="pt", progress=False).frames[0]
        per_clip.append(seam_ratio(clip))
        d = frame_differences(clip)
        pooled.append(d / d.quantile(0.5))
    d = torch.cat(pooled)
    return {"bucket": bucket, "clip_seam_ratios": per_clip, "pooled_steps": len(d),
            "pooled_seam_ratio": (d.max() / d.quantile(0.5)).item()}


def end_image_check(pipe: ImageToVideoPipeline, name: str, pan: int, steps: int) -> dict[str, float]:
    """A first-and-last-frame clip over a known pan: crops of one photo ``pan`` pixels apart."""
    from vidiff.cli.generate_long import end_latent

    big = photo(name).resize((128 + 2 * pan, 128 + 2 * pan), PIL.Image.LANCZOS)
    start_img, end_img = big.crop((pan, pan, pan + 128, pan + 128)), big.crop((2 * pan, pan, 2 * pan + 128, pan + 128))
    to_t = lambda im: torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255  # noqa: E731
    start, end = to_t(start_img), to_t(end_img)
    s = GenerationSettings(num_inference_steps=steps, seed=0)
    chunks: list[torch.Tensor] = []
    latent = end_latent(pipe, start, end, 128, 128)
    generate_long_video(pipe, start_img, 14, chunks.append, mode="keyframes", end_image=end, end_latent=latent,
                        settings=s, progress=False)
    video = torch.cat(chunks).float() / 255
    steps = estimate_flow(video[:-1], video[1:])[:, 0].mean(dim=(1, 2))  # x flow of each consecutive pair
    true = estimate_flow(start[None], end[None])[:, 0].mean().item()
    return {"psnr_last_end": psnr(video[-1], end), "psnr_first_start": psnr(video[0], start),
            "flow_x_between": steps.mean().item(), "flow_x_true": true,
            "same_direction": bool(steps.mean().item() * true > 0),
            "steps_along_pan": int((steps * true > 0).sum()), "steps": len(steps), "seam_ratio": seam_ratio(video)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=120)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--photo", default="coffee.png", help="scikit-image data file (held out of training)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--memory-methods", nargs="+", default=["chain"], choices=METHODS[1:],
                   help="modes whose peak RSS and time are measured at 28 and --frames frames")
    p.add_argument("--pan", type=int, default=12, help="end-image check: pan in pixels at 128x128")
    p.add_argument("--floor-seeds", type=int, default=9,
                   help="single clips (seeds 0..N-1) per bucket for the model's own seam ratio; 0 skips it")
    p.add_argument("--json", default=None)
    p.add_argument("--rss-child", nargs=2, metavar=("METHOD", "FRAMES"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rss_child:
        rss_child(args.rss_child[0], int(args.rss_child[1]), args.steps, args.photo)
        return
    torch.set_num_threads(max(1, torch.get_num_threads()))
    pipe = ImageToVideoPipeline.from_pretrained(bundled_model_path())
    image = photo(args.photo)
    results: dict = {"frames": args.frames, "steps": args.steps, "photo": args.photo, "runs": []}

    def dump() -> None:
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))

    for seed in args.seeds:  # every method for one seed before the next: partial runs stay comparable
        for bucket in (0, 255):
            for method in args.methods:
                s = GenerationSettings(num_inference_steps=args.steps, seed=seed, motion_bucket_id=bucket)
                start = time.perf_counter()
                video = generate(method, pipe, image, args.frames, s)
                row = {"method": method, "bucket": bucket, "seed": seed, "seconds": time.perf_counter() - start,
                       **figures(video, bucket)}
                results["runs"].append(row)
                print(json.dumps(row), flush=True)
                dump()
        if seed == args.seeds[0]:
            memory(args, results, dump)
    for bucket in (0, 255) if args.floor_seeds else ():
        results.setdefault("floor", []).append(native_floor(pipe, image, bucket, list(range(args.floor_seeds)),
                                                            args.steps))
        print("model's own clips:", json.dumps(results["floor"][-1]), flush=True)
        dump()
    results["end_image"] = end_image_check(pipe, args.photo, args.pan, args.steps)
    print("end image:", results["end_image"], flush=True)
    dump()


def memory(args: argparse.Namespace, results: dict, dump) -> None:
    """Peak RSS and time of fresh processes making 28 and ``--frames`` frames."""
    for method in args.memory_methods:
        for frames in (28, args.frames):
            cmd = [sys.executable, __file__, "--rss-child", method, str(frames), "--steps", str(args.steps),
                   "--photo", args.photo]
            row = {"method": method, "frames": frames,
                   **json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)}
            results.setdefault("memory", []).append(row)
            print(json.dumps(row), flush=True)
            dump()


if __name__ == "__main__":
    main()
