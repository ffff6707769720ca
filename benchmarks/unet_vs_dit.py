"""UNet vs DiT at equal parameter count and equal CPU wall-clock, on the bundled model's data.

Both are trained from scratch with ``configs/default_model.yaml`` (the bundled model's recipe: flow latents,
the same data mixture, optimiser, EMA, noise-level distribution; held-out photographs astronaut, chelsea and
coffee): the UNet as configured (EDM v-prediction), the DiT with ``model.backbone: dit`` (Wan's transformer,
``vidiff.training.dit``) and ``loss.objective: flow`` (rectified flow), sized to the UNet's parameter count.
Each gets the same wall-clock budget: a 3-step calibration run measures its time per step, and the run is
then ``budget / step time`` steps long (warm-up a tenth of it, the config's cosine decay), so both finish
their schedule inside the budget on this machine.

Evaluation (both through ``ImageToVideoPipeline``, same seeds, Euler, ``--steps`` σ-steps, no CFG): for each
held-out photograph, ``--clips`` known camera moves (``CameraMoveDataset``, exact motion bucket of the move)
give the conditioning frame and the bucket; per generated video ``(T, 3, H, W)``:

* **PSNR vs move** — mean PSNR (dB, [0, 1]) of frames 1..T−1 against the known camera move's frames;
* **first-frame PSNR** — frame 0 against the conditioning frame;
* **motion** and **|Δmotion|** — mean Farnebäck flow (px/frame) and its distance to the move's own;
* **flicker** — mean |Δ mean brightness| between consecutive frames, 1/255.

The DiT is also sampled at twice the trained frame count (3D RoPE extrapolation): motion and flicker.

    python benchmarks/unet_vs_dit.py [--budget-s 300] [--clips 2] [--steps 12] [--json FILE]
    python benchmarks/unet_vs_dit.py --trained vidiff/assets/default_model runs/dit/model   # no training
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from default_model_eval import HELD_OUT, farneback_motion, to_uint8  # noqa: E402

from vidiff.metrics.fidelity import psnr  # noqa: E402
from vidiff.networks.dit_video import VideoDiTConfig, count_dit_parameters  # noqa: E402
from vidiff.pipelines.image_to_video import ImageToVideoPipeline  # noqa: E402
from vidiff.training.config import TrainConfig  # noqa: E402
from vidiff.training.data import CameraMoveDataset, skimage_photographs  # noqa: E402
from vidiff.training.dit import dit_pipeline  # noqa: E402
from vidiff.training.loop import train  # noqa: E402
from vidiff.training.model import build_models  # noqa: E402

CONFIG = REPO / "configs" / "default_model.yaml"
# 8 blocks of width 192 (6 heads of 32), MLP 768: 5.27 M parameters, the bundled UNet's 5.26 M (±0.2 %).
DIT = ["model.backbone=dit", "model.dit.num_layers=8", "model.dit.num_attention_heads=6",
       "model.dit.attention_head_dim=32", "model.dit.ffn_dim=768", "loss.objective=flow"]
HELD_OUT_SEED = 10_000


def _config(out: Path, extra: list[str], steps: int) -> TrainConfig:
    return TrainConfig.from_yaml(CONFIG, [f"output_dir={out}", "progress=false", "log_every=1",
                                          f"schedule.max_steps={steps}", f"schedule.warmup_steps={max(1, steps // 10)}",
                                          "checkpoint.every_steps=0", "checkpoint.export_dtype=float32", *extra])


def train_for(name: str, extra: list[str], budget_s: float, root: Path) -> dict:
    """Calibrate the step time (3 steps), then train ``budget / step time`` steps; return the run's facts."""
    calib = _config(root / f"{name}-calib", extra, 3)
    t0 = time.perf_counter()
    train(calib)
    rows = [json.loads(r) for r in (root / f"{name}-calib" / "metrics.jsonl").read_text().splitlines()]
    step_s = float(np.mean([calib.data.batch_size / r["samples_per_s"] for r in rows[1:]]))
    steps = max(3, int(budget_s / step_s))
    print(f"{name}: calibration {time.perf_counter() - t0:.0f} s, {step_s:.2f} s/step -> {steps} steps", flush=True)
    cfg = _config(root / name, extra, steps)
    params = sum(p.numel() for p in build_models(cfg.model, cfg.data, seed=0).unet.parameters())
    t0 = time.perf_counter()
    result = train(cfg)
    wall = time.perf_counter() - t0
    print(f"{name}: {steps} steps in {wall:.0f} s, final loss {result.losses[-1]:.4f}", flush=True)
    return {"model_dir": str(result.model_dir), "steps": steps, "train_s": wall, "params": params,
            "final_loss": float(np.mean(result.losses[-10:]))}


def held_out_clips(cfg: TrainConfig, clips: int, num_frames: int) -> list[dict]:
    """``clips`` known camera moves over each held-out photograph (a seed training never used)."""
    photos = [p for p in skimage_photographs() if p.name in HELD_OUT]
    ds = CameraMoveDataset(photos, num_frames=num_frames, size=(cfg.data.height, cfg.data.width),
                           num_samples=len(photos) * clips, seed=HELD_OUT_SEED, strength=(0.3, 1.0),
                           crop_fraction=(0.45, 0.8), max_pan=0.25, max_angle=15,
                           motion_bucket_scale=cfg.data.motion_bucket_scale, fps=7)
    return [ds[i] for i in range(len(ds))]


def flicker(video: torch.Tensor) -> float:
    b = video.mean(dim=(1, 2, 3))
    return float((b[1:] - b[:-1]).abs().mean()) * 255


@torch.no_grad()
def evaluate(pipe: ImageToVideoPipeline, items: list[dict], *, steps: int, num_frames: int,
             reference: bool = True) -> dict[str, float]:
    rows = []
    for i, it in enumerate(items):
        clip = (torch.as_tensor(it["video"]).float() + 1) / 2  # (T, 3, H, W) in [0, 1]
        video = pipe(clip[0], num_frames=num_frames, num_inference_steps=steps, sampler="euler",
                     motion_bucket_id=int(it["motion_bucket_id"]), fps=7, output_type="pt", progress=False,
                     generator=torch.Generator().manual_seed(i)).frames[0].float()
        motion = farneback_motion(to_uint8(video))
        row = {"motion": motion, "flicker": flicker(video),
               "first_frame_psnr": float(psnr(video[0], clip[0]))}
        if reference:
            row["psnr_vs_move"] = float(psnr(video[1:], clip[1:]).mean())
            row["abs_motion_error"] = abs(motion - farneback_motion(to_uint8(clip)))
        rows.append(row)
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget-s", type=float, default=300.0, help="training wall-clock per model")
    ap.add_argument("--clips", type=int, default=2, help="camera moves per held-out photograph")
    ap.add_argument("--steps", type=int, default=12, help="sampling steps")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--trained", nargs=2, type=Path, metavar=("UNET_MODEL", "DIT_MODEL"), default=None,
                    help="evaluate two models already trained (e.g. the bundled model and a DiT trained with "
                         "the same recipe and step count) instead of training both for --budget-s")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    base = TrainConfig.from_yaml(CONFIG)
    dit_cfg = _config(Path("unused"), DIT, 1)
    print(f"DiT parameters (meta count): {count_dit_parameters(_dit_config(dit_cfg)):,}", flush=True)
    report: dict = {"budget_s": args.budget_s, "clips": args.clips, "sampling_steps": args.steps}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.trained is not None:
            runs = {name: {"model_dir": str(path)} for name, path in zip(("unet", "dit"), args.trained)}
        else:
            runs = {"unet": train_for("unet", [], args.budget_s, root),
                    "dit": train_for("dit", DIT, args.budget_s, root)}
        frames = base.data.num_frames
        items = held_out_clips(base, args.clips, frames)
        pipes = {"unet": ImageToVideoPipeline.from_pretrained(runs["unet"]["model_dir"]),
                 "dit": dit_pipeline(runs["dit"]["model_dir"])}
        for name, pipe in pipes.items():
            t0 = time.perf_counter()
            runs[name]["eval"] = evaluate(pipe, items, steps=args.steps, num_frames=frames)
            runs[name]["eval_s"] = time.perf_counter() - t0
            print(name, json.dumps(runs[name]), flush=True)
        runs["dit"]["eval_2x_frames"] = evaluate(pipes["dit"], items, steps=args.steps, num_frames=2 * frames,
                                                 reference=False)
        print("dit 2x frames", json.dumps(runs["dit"]["eval_2x_frames"]), flush=True)
    report["runs"] = runs
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


def _dit_config(cfg: TrainConfig) -> VideoDiTConfig:
    from vidiff.training.dit import dit_config

    return dit_config(cfg.model, cfg.data, channels=2, concat_channels=3 * cfg.model.patch_size**2)


if __name__ == "__main__":
    raise SystemExit(main())
