"""Evaluate an image-to-video model (default: the bundled one) on photographs, and time its generation.

This is ``vidiff eval --model MODEL --images PHOTOS --seeds ... --motion-bucket-ids LOW HIGH``: the fixed
protocol of ``vidiff.cli.eval.run_protocol`` (a video per photograph, seed and motion bucket, the model's
defaults otherwise) measured by the weight-free metrics of ``vidiff.metrics.suite`` named by ``--metrics``
(default: first-frame PSNR and SSIM, flicker, seams and colour drift; warp error, dynamic degree and vidiff's
flow cost about a minute per 128x128 video on a 2-core CPU, so they are added by name); ``--report`` writes the
HTML report. On top of the protocol's figures it keeps what this benchmark has always reported.

For every photograph and seed, at the lowest and highest motion settings (otherwise the model's defaults):

* **first-frame PSNR**: frame 0 of the generated video against the input resized to the model's resolution
  (the resize the pipeline itself does), in dB over [0, 255] RGB;
* **motion**: the mean OpenCV Farnebäck optical-flow magnitude (Farnebäck 2003) between consecutive frames,
  in pixels per frame at the output resolution, and the ratio of the highest setting's to the lowest's;
* **mp4 round trip**: frame 0 of the first video written as ``vidiff generate`` writes it (mp4) and decoded
  again, against the input, in dB;
* **generation time**: wall-clock seconds of each pipeline call (the call `vidiff generate` makes, without
  writing the file); the figure reported is the median over the calls after the first (a warm-up).

Acceptance (README): PSNR >= 25 dB on every photograph, mean flow at the highest setting >= 2 x the lowest,
and > 0, generation <= 60 s on this machine.

    python benchmarks/default_model_eval.py [--model DIR] [--photos NAME ...] [--seeds N ...]
        [--guidance MIN MAX] [--gif docs/default_model.gif] [--json FILE] [--report FILE.html]

``--photos`` takes any image file name of scikit-image's data folder (default: the three held out of the
bundled model's training).
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import math
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import PIL.Image
import torch

from vidiff.cli.eval import run_protocol
from vidiff.io.atomic import write_text_atomic
from vidiff.io.video import read_image, read_video, write_video
from vidiff.metrics.fidelity import psnr as psnr_01
from vidiff.metrics.report import render_report
from vidiff.metrics.suite import EvalInputs, evaluate, plan_metrics
from vidiff.pipelines.image_to_video import ImageToVideoPipeline, bundled_model_path

CHEAP_METRICS = ("first_frame_psnr", "first_frame_ssim", "temporal_flickering", "seam_ratio", "colour_drift")
HELD_OUT = ("astronaut.png", "chelsea.png", "coffee.png")  # excluded from training in configs/default_model.yaml


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two ``(H, W, 3)`` uint8 images over [0, 255] (``vidiff.metrics.fidelity.psnr``)."""
    def t(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x).permute(2, 0, 1).double() / 255

    return float(psnr_01(t(a), t(b)))


def farneback_motion(frames: np.ndarray) -> float:
    """Mean |flow| in px/frame over consecutive pairs of ``frames (T, H, W, 3)`` uint8 (OpenCV Farnebäck)."""
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    mags = []
    for a, b in itertools.pairwise(gray):
        flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
        mags.append(float(np.linalg.norm(flow, axis=-1).mean()))
    return float(np.mean(mags)) if mags else 0.0


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """``(T, 3, H, W)`` in [0, 1] -> ``(T, H, W, 3)`` uint8 (the rounding videos are written with)."""
    return (video.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def save_gif(input_image: np.ndarray, frames: np.ndarray, path: Path, fps: int) -> None:
    """The input (left) next to the generated frames (right), looping."""
    tiles = [PIL.Image.fromarray(np.concatenate([input_image, f], axis=1)) for f in frames]
    path.parent.mkdir(parents=True, exist_ok=True)
    tiles[0].save(path, save_all=True, append_images=tiles[1:], duration=int(1000 / fps), loop=0, optimize=True)


def skimage_data(name: str) -> Path | None:
    """A file of scikit-image's data folder, found through the installed package (None if absent)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "data" / name
    return path if path.is_file() else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    p.add_argument("--photos", nargs="+", default=list(HELD_OUT), help="scikit-image data file names")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds of every photograph's videos")
    p.add_argument("--low", type=int, default=0, help="lowest motion_bucket_id")
    p.add_argument("--high", type=int, default=255, help="highest motion_bucket_id")
    p.add_argument("--guidance", nargs=2, type=float, default=None, metavar=("MIN", "MAX"),
                   help="classifier-free guidance ramp (default: the model's)")
    p.add_argument("--gif", default=None, help="write a GIF of the first photograph at the default motion")
    p.add_argument("--json", default=None, help="write the figures as JSON here")
    p.add_argument("--metrics", nargs="+", default=list(CHEAP_METRICS),
                   help="the protocol's metrics (vidiff eval --metrics; first_frame_psnr is always measured)")
    p.add_argument("--report", default=None, help="write the protocol's HTML report here (vidiff eval --report)")
    args = p.parse_args(argv)

    model = args.model or bundled_model_path()
    if model is None:
        print("no --model given and no bundled model is installed", file=sys.stderr)
        return 2
    photos = {name: skimage_data(name) for name in args.photos}
    missing = [name for name, path in photos.items() if path is None]
    if missing:
        print(f"--photos: no such file in scikit-image's data folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    pipe = ImageToVideoPipeline.from_pretrained(model)
    defaults = pipe._resolve(pipe.default_settings())
    guidance = {} if args.guidance is None else {"min_guidance_scale": args.guidance[0],
                                                 "max_guidance_scale": args.guidance[1]}
    stems = {Path(name).stem: name for name in args.photos}
    # the protocol of `vidiff eval --model`: photo by photo, seed by seed, the low bucket then the high one
    run = run_protocol(pipe, {stem: read_image(photos[name]) for stem, name in stems.items()}, args.seeds,
                       [args.low, args.high], **guidance)
    inputs = EvalInputs(run.videos, images=run.conditioning)
    metrics, skipped = plan_metrics(list(dict.fromkeys(["first_frame_psnr", *args.metrics])), inputs, weights={})
    result = evaluate(metrics, inputs)
    result.update(skipped=skipped, protocol={"model": str(model), "images": args.photos, "seeds": args.seeds,
                                             "motion_bucket_ids": [args.low, args.high], "settings": run.settings,
                                             "generation_seconds": run.seconds})
    seconds, settings, ok = run.seconds, run.settings, True
    videos = {v.name: v for v in run.videos}
    first_video = run.videos[0]
    first = (first_video.frames, to_uint8(run.conditioning[first_video.name][None])[0])
    rows = []
    for (stem, name), seed in itertools.product(stems.items(), args.seeds):
        row: dict[str, float | str | int] = {"photo": name, "seed": seed}
        for label, bucket in (("low", args.low), ("high", args.high)):
            key = f"{stem}_seed{seed}_motion{bucket}"
            row[f"psnr_{label}"] = result["per_video"][key]["first_frame_psnr"]
            row[f"flow_{label}"] = farneback_motion(to_uint8(videos[key].frames))
        row["ratio"] = row["flow_high"] / row["flow_low"] if row["flow_low"] > 0 else math.inf
        rows.append(row)
    if args.gif:
        pil = PIL.Image.open(photos[args.photos[0]]).convert("RGB")
        video = pipe(pil, seed=args.seeds[0], output_type="pt", progress=False).frames[0]
        target = np.asarray(pil.resize((defaults.width, defaults.height), resample=PIL.Image.LANCZOS))
        save_gif(target, to_uint8(video), Path(args.gif), defaults.fps)
        PIL.Image.fromarray(target).save(Path(args.gif).with_name(Path(args.gif).stem + "_input.png"))

    # the first video as `vidiff generate` writes it (mp4, its encoder settings), decoded again with PyAV
    with tempfile.TemporaryDirectory() as tmp:
        written = write_video(first[0], Path(tmp) / "first.mp4", fps=defaults.fps)
        decoded = to_uint8(read_video(written)[0])
    mp4_psnr = psnr(decoded[0], first[1])

    t, h, w = defaults.num_frames, defaults.height, defaults.width
    timed = seconds[1:] if len(seconds) > 1 else seconds  # the first call warms up
    generation = float(np.median(timed))
    print(f"model: {model}\nsettings of the last call: {json.dumps(settings)}")
    print(f"{'photo':<22}{'seed':>5}{'PSNR low':>10}{'PSNR high':>11}{'flow low':>10}{'flow high':>11}"
          f"{'ratio':>8}")
    for r in rows:
        print(f"{r['photo']:<22}{r['seed']:>5}{r['psnr_low']:>10.2f}{r['psnr_high']:>11.2f}{r['flow_low']:>10.3f}"
              f"{r['flow_high']:>11.3f}{r['ratio']:>8.2f}")
    flow_low = float(np.mean([r["flow_low"] for r in rows]))
    flow_high = float(np.mean([r["flow_high"] for r in rows]))
    min_psnr = float(min(min(r["psnr_low"], r["psnr_high"]) for r in rows))
    ratios = [float(r["ratio"]) for r in rows]
    checks = {
        "first-frame PSNR >= 25 dB on every photo": min_psnr >= 25,
        "mean flow at high >= 2 x low": flow_high >= 2 * flow_low,
        "mean flow at high > 0": flow_high > 0,
        f"generation <= 60 s ({generation:.1f} s for {t} frames at {w}x{h})": generation <= 60,
        "output >= 14 frames, >= 128x128": t >= 14 and h >= 128 and w >= 128,
    }
    print(f"mean flow: low {flow_low:.3f}, high {flow_high:.3f} px/frame (ratio "
          f"{flow_high / flow_low if flow_low > 0 else math.inf:.2f}); high/low ratio per video "
          f"{min(ratios):.2f} to {max(ratios):.2f}; min PSNR {min_psnr:.2f} dB")
    print(f"frame 0 of the first video written as mp4 and decoded: {mp4_psnr:.2f} dB against the input")
    print(f"generation: median {generation:.2f} s over {len(timed)} calls (min {min(timed):.2f}, max "
          f"{max(timed):.2f}) for {t} frames at {w}x{h}, {torch.get_num_threads()} threads")
    print("the protocol's measures (vidiff eval), over all videos: " + ", ".join(
        f"{k} {v:.4g}" for k, v in result["metrics"].items()))
    for k, v in checks.items():
        print(f"{'PASS' if v else 'FAIL'}  {k}")
        ok &= v
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "flow_low": flow_low, "flow_high": flow_high,
                                               "ratio_min": min(ratios), "ratio_max": max(ratios),
                                               "min_psnr": min_psnr, "mp4_psnr": mp4_psnr,
                                               "generation_seconds": generation,
                                               "generation_seconds_all": seconds,
                                               "frames": t, "height": h, "width": w,
                                               "checks": checks, "eval": result}, indent=2))
    if args.report:
        write_text_atomic(render_report([("protocol", result)], videos={k: v.frames for k, v in videos.items()},
                                        title=f"vidiff eval --model {model}"), args.report)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
