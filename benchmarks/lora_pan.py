"""Does a LoRA trained only on leftward pans make the bundled model pan left? (README "## LoRA and camera control")

For each held-out photograph (the three left out of the bundled model's and the LoRA's training) and seed, a
video from the bundled model and one with the LoRA loaded (same seed, the model's default settings), and for
each the **mean horizontal flow**: ``vidiff.metrics.flow.flow_to_first`` of every frame back to frame 0,
averaged over pixels and frames, in pixels at the output resolution. Its convention is the training data's
(``CameraMoveDataset``'s exact flow, ``video[t](p) ≈ video[0](p + f_t(p))``): a camera moving left gives
``f_x < 0``, "flow pointing left" (the picture's content itself slides right).

Reported: the share of (photo, seed) pairs whose mean horizontal flow points left (``< -threshold``), for the
base model and with the LoRA, and that share over the pairs where the base model does not point left.
Acceptance: with the LoRA ≥ 90% of the pairs where the base is mixed.

    python benchmarks/lora_pan.py --lora runs/lora_pan_left/lora.safetensors [--seeds 0 1 ...] [--json F]
        [--gif docs/lora_pan.gif]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from vidiff.io.atomic import write_text_atomic
from vidiff.io.video import read_image, write_video
from vidiff.metrics.flow import flow_to_first
from vidiff.pipelines.image_to_video import ImageToVideoPipeline, bundled_model_path

HELD_OUT = ("astronaut.png", "chelsea.png", "coffee.png")


def skimage_photo(name: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("scikit-image is not installed")
    return Path(next(iter(spec.submodule_search_locations)), "data", name)


def mean_horizontal_flow(frames: torch.Tensor) -> float:
    """Mean x component of every frame's flow back to frame 0 (``frames (T, 3, H, W)`` in [0, 1]), pixels."""
    return float(flow_to_first(frames.float())[1:, 0].mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lora", required=True, help="the LoRA file (vidiff train configs/lora_pan_left.yaml)")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    ap.add_argument("--photos", nargs="+", default=list(HELD_OUT))
    ap.add_argument("--mirror", action="store_true",
                    help="also each photo mirrored left-right (a bias from a photo's content then goes both ways)")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    ap.add_argument("--threshold", type=float, default=0.05, help="|mean flow| below this counts as no direction")
    ap.add_argument("--json", default=None)
    ap.add_argument("--gif", default=None, help="write base | LoRA side by side for the first photo and seed")
    args = ap.parse_args(argv)

    pipe = ImageToVideoPipeline.from_pretrained(bundled_model_path())
    rows = []
    start = time.perf_counter()
    photos = [(n, False) for n in args.photos] + ([(n, True) for n in args.photos] if args.mirror else [])
    for name, mirrored in photos:
        image = read_image(skimage_photo(name))
        if mirrored:
            image, name = image.flip(-1), name + " (mirrored)"
        for seed in args.seeds:
            row = {"photo": name, "seed": seed}
            for which in ("base", "lora"):
                if which == "lora":
                    pipe.load_lora(args.lora, args.scale, name="pan")
                frames = pipe(image, generator=torch.Generator().manual_seed(seed), output_type="pt",
                              num_inference_steps=args.steps, progress=False).frames[0]
                if which == "lora":
                    pipe.unload_lora()
                row[which] = mean_horizontal_flow(frames)
                if args.gif and not rows:
                    row.setdefault("_frames", {})[which] = frames
            if "_frames" in row:
                f = row.pop("_frames")
                write_video(torch.cat([f["base"], f["lora"]], dim=-1), args.gif, fps=7)
            rows.append(row)
            print(f"{name} seed {seed}: base {row['base']:+.3f} px, lora {row['lora']:+.3f} px", flush=True)
    left = {w: [r[w] < -args.threshold for r in rows] for w in ("base", "lora")}
    mixed = [r for r, b in zip(rows, left["base"], strict=True) if not b]
    summary = {
        "pairs": len(rows),
        "base_left_share": sum(left["base"]) / len(rows),
        "lora_left_share": sum(left["lora"]) / len(rows),
        "lora_left_share_where_base_not_left": (sum(r["lora"] < -args.threshold for r in mixed) / len(mixed)
                                                if mixed else None),
        "base_mean_flow_x": sum(r["base"] for r in rows) / len(rows),
        "lora_mean_flow_x": sum(r["lora"] for r in rows) / len(rows),
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        write_text_atomic(json.dumps({"summary": summary, "rows": rows, "lora": args.lora}, indent=2), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
