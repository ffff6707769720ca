"""Does the camera adapter make the bundled model follow a camera path? (README "## LoRA and camera control")

For each held-out photograph (the three left out of the bundled model's and the adapter's training), seed and
camera path (pan-left, pan-right, zoom-in, zoom-out: ``vidiff.adapters.camera.CAMERA_PRESETS``), two videos with
the same seed and settings: the **base** model's and the model with the **adapter** following the path. Both get
the path's motion bucket (its mean motion, as the training data defines buckets), so the base is asked for as much
motion as the path has, only not which. For each video, the flow of every frame back to frame 0 is estimated from
the frames (``vidiff.metrics.flow.flow_to_first``) and compared with the path's exact flow
(``vidiff.adapters.camera.camera_flow``): the **mean end-point error** over pixels and frames 1…T−1, in pixels at
the output resolution.

Acceptance: for every path, the adapter's mean EPE is at most half the base model's.

    python benchmarks/camera_adapter.py [--adapter vidiff/assets/default_model/camera_adapter.safetensors]
        [--seeds 0 1] [--json F] [--gif docs/camera_adapter.gif]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from vidiff.adapters.camera import camera_flow, camera_motion, camera_preset
from vidiff.io.atomic import write_text_atomic
from vidiff.io.video import read_image, write_video
from vidiff.metrics.flow import flow_to_first
from vidiff.pipelines.image_to_video import ImageToVideoPipeline, bundled_model_path
from vidiff.training.data import REFERENCE_WIDTH, motion_bucket_from_magnitude

HELD_OUT = ("astronaut.png", "chelsea.png", "coffee.png")
PATHS = ("pan-left", "pan-right", "zoom-in", "zoom-out")


def skimage_photo(name: str) -> Path:
    """A photograph bundled with scikit-image, found through the installed package (not imported)."""
    import importlib.util

    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("scikit-image is not installed")
    return Path(next(iter(spec.submodule_search_locations)), "data", name)


def path_bucket(path: torch.Tensor, height: int, width: int, scale: float) -> int:
    """The motion bucket of a camera path, as ``CameraMoveDataset`` gives its clips."""
    return motion_bucket_from_magnitude(camera_motion(path, height, width) * REFERENCE_WIDTH / width, scale=scale)


def endpoint_error(frames: torch.Tensor, path: torch.Tensor) -> float:
    """Mean EPE (pixels) of the flow estimated from ``frames (T, 3, H, W)`` in [0, 1] against the path's flow."""
    est = flow_to_first(frames.float())[1:]
    ref = camera_flow(path, *frames.shape[-2:])[1:]
    return float((est - ref).norm(dim=1).mean())


def generate(pipe: ImageToVideoPipeline, image: torch.Tensor, seed: int, bucket: int, num_frames: int,
             steps: int | None) -> torch.Tensor:
    return pipe(image, generator=torch.Generator().manual_seed(seed), output_type="pt", num_frames=num_frames,
                num_inference_steps=steps, motion_bucket_id=bucket, progress=False).frames[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model = bundled_model_path()
    ap.add_argument("--adapter", default=str(model / "camera_adapter.safetensors") if model else None,
                    help="the camera adapter (default: the one shipped with the bundled model)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--photos", nargs="+", default=list(HELD_OUT))
    ap.add_argument("--paths", nargs="+", default=list(PATHS))
    ap.add_argument("--num-frames", type=int, default=None, help="default: the model's")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--gif", default=None, help="write base | each path side by side for the first photo and seed")
    args = ap.parse_args(argv)
    if args.adapter is None or not Path(args.adapter).is_file():
        sys.exit(f"no camera adapter at {args.adapter}")

    pipe = ImageToVideoPipeline.from_pretrained(bundled_model_path())
    pipe.load_camera_adapter(args.adapter)
    s = pipe.default_settings()
    t = args.num_frames or s.num_frames
    scale = pipe.camera_adapter.motion_bucket_scale or 64.0
    rows = []
    gif: list[torch.Tensor] = []
    start = time.perf_counter()
    for name in args.photos:
        image = read_image(skimage_photo(name))
        for seed in args.seeds:
            for path_name in args.paths:
                path = camera_preset(path_name, t)
                bucket = path_bucket(path, s.height, s.width, scale)
                pipe.set_camera(None)
                base = generate(pipe, image, seed, bucket, t, args.steps)
                pipe.set_camera(path_name)
                adapted = generate(pipe, image, seed, bucket, t, args.steps)
                row = {"photo": name, "seed": seed, "path": path_name, "motion_bucket_id": bucket,
                       "base_epe": endpoint_error(base, path), "adapter_epe": endpoint_error(adapted, path)}
                rows.append(row)
                print(f"{name} seed {seed} {path_name:9s}: EPE base {row['base_epe']:6.2f} px, "
                      f"adapter {row['adapter_epe']:6.2f} px", flush=True)
                if args.gif and name == args.photos[0] and seed == args.seeds[0]:
                    gif += [base] if not gif else []
                    gif.append(adapted)
    table = {}
    print("\n| path | base EPE (px) | adapter EPE (px) | ratio | holds (<= 0.5) |\n|---|---|---|---|---|")
    for p in args.paths:
        sel = [r for r in rows if r["path"] == p]
        b = sum(r["base_epe"] for r in sel) / len(sel)
        a = sum(r["adapter_epe"] for r in sel) / len(sel)
        table[p] = {"base_epe": b, "adapter_epe": a, "ratio": a / b, "holds": a <= 0.5 * b}
        print(f"| {p} | {b:.2f} | {a:.2f} | {a / b:.2f} | {'yes' if a <= 0.5 * b else 'NO'} |")
    seconds = round(time.perf_counter() - start, 1)
    print(f"\n{len(rows)} (photo, seed, path) triples, {2 * len(rows)} videos of {t} frames in {seconds} s")
    if args.gif and gif:
        write_video(torch.cat(gif, dim=-1), args.gif, fps=7)
    if args.json:
        write_text_atomic(json.dumps({"table": table, "rows": rows, "adapter": args.adapter, "seconds": seconds},
                                     indent=2), args.json)
    return 0 if all(v["holds"] for v in table.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
