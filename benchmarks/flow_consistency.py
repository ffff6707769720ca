"""Does the flow-consistency term (seed 000 §5.2, ``loss.flow_weight``) do what it is for?

Trains the same model (``configs/flow_consistency.yaml``: the tiny spatio-temporal UNet in pixel space on
moving shapes) once per ``--flow-weight``, same seed, data and number of steps, then generates videos from
held-out clips' first frames (same noise, same conditioning: each clip's own motion bucket) and measures,
per video ``v (T, 3, H, W)`` in [0, 1]:

* **motion** — mean CLG flow magnitude between consecutive frames (``vidiff.metrics.flow``), px/frame;
* **flicker** — mean absolute change of mean brightness between consecutive frames, in 1/255 units
  (global flicker: a still scene whose brightness pumps);
* **warp error** — mean ``|v_i − W(v_{i+1}, f_i)|`` under the video's own estimated flow ``f`` (the
  motion-compensated residual: what consecutive frames disagree on once motion is accounted for), 1/255;
* **|Δmotion|** — mean over clips of ``|motion(generated) − motion(held-out clip)|``: whether the model
  moves as much as the clip it was conditioned on.

The held-out clips' own values are printed as the reference. A term that does its job lowers warp error
and flicker without lowering motion below the clips'.

    python benchmarks/flow_consistency.py [--steps 150] [--flow-weight 0 1] [--samples 16] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from vidiff.diffusion.denoiser import Denoiser
from vidiff.diffusion.samplers import sample_euler
from vidiff.diffusion.schedules import karras_sigmas
from vidiff.metrics.flow import mean_flow_magnitude, video_flow
from vidiff.training.checkpoint import load_checkpoint
from vidiff.training.config import TrainConfig
from vidiff.training.data import MovingShapesDataset
from vidiff.training.loop import train
from vidiff.training.model import build_models, prepare_batch
from vidiff.training.objectives import Draws, flow_consistency_loss, make_scaling

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "flow_consistency.yaml"
HELD_OUT_SEED = 10_000  # the held-out clips' dataset seed (training uses the config's seed)


def video_metrics(video: torch.Tensor) -> dict[str, float]:
    """Motion (px/frame), flicker and warp error (1/255) of ``video (T, 3, H, W)`` in [0, 1]."""
    flow = video_flow(video)
    brightness = video.mean(dim=(1, 2, 3))
    warp_err = flow_consistency_loss(video[None], flow[None])
    flicker = float((brightness[1:] - brightness[:-1]).abs().mean()) * 255
    return {"motion": mean_flow_magnitude(video), "flicker": flicker, "warp_error": float(warp_err) * 255}


def held_out_items(cfg: TrainConfig, n: int) -> list[dict]:
    """``n`` moving-shapes clips the run never saw (another seed), at the config's size and length."""
    ds = MovingShapesDataset(num_samples=n, num_frames=cfg.data.num_frames, size=(cfg.data.height, cfg.data.width),
                             seed=HELD_OUT_SEED, motion_bucket_scale=cfg.data.motion_bucket_scale)
    return [ds[i] for i in range(n)]


@torch.no_grad()
def generate(cfg: TrainConfig, weights: dict[str, torch.Tensor], items: list[dict], *, steps: int,
             seed: int) -> torch.Tensor:
    """Euler on the PF-ODE (``steps`` Karras σ) from each item's first frame and motion bucket, no CFG.
    Returns ``(N, T, 3, H, W)`` in [0, 1]."""
    bundle = build_models(cfg.model, cfg.data, seed=cfg.seed)
    bundle.unet.load_state_dict({k[len("unet."):]: v for k, v in weights.items() if k.startswith("unet.")})
    bundle.unet.eval()
    device = torch.device("cpu")
    x0, cond_fn, image_shape = prepare_batch(bundle, items, device)
    n = len(items)
    draws = Draws(keep=torch.ones(n), aug_strength=torch.full((n,), cfg.loss.noise_aug_strength),
                  aug_noise=torch.zeros(n, *image_shape), sigma=torch.ones(n), timestep=torch.zeros(n),
                  noise=torch.zeros_like(x0))
    sigmas = karras_sigmas(steps, cfg.model.sigma_min, cfg.model.sigma_max)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    out = sample_euler(Denoiser(bundle.unet, make_scaling(cfg.loss)), noise * sigmas[0], sigmas,
                       cond=cond_fn(draws))
    return ((out.clamp(-1, 1) + 1) / 2).float()


def summarise(videos: torch.Tensor, reference: list[float] | None = None) -> dict[str, float]:
    rows = [video_metrics(v) for v in videos]
    out = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
    if reference is not None:
        out["abs_motion_error"] = sum(abs(r["motion"] - m) for r, m in zip(rows, reference)) / len(rows)
    return out


def run(flow_weight: float, steps: int, out: Path, config: Path, seed: int | None = None
        ) -> tuple[TrainConfig, dict[str, torch.Tensor], float]:
    """Train one model; return its config, EMA weights and the wall time of training."""
    cfg = TrainConfig.from_yaml(config, [f"output_dir={out}", f"loss.flow_weight={flow_weight}",
                                         f"schedule.max_steps={steps}", f"schedule.warmup_steps={min(steps, 20)}",
                                         "progress=false", "checkpoint.export=false",
                                         *([f"seed={seed}"] if seed is not None else [])])
    t0 = time.perf_counter()
    result = train(cfg)
    elapsed = time.perf_counter() - t0
    ck = load_checkpoint(result.checkpoint)
    return cfg, ck.ema if ck.ema is not None else ck.model, elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=CONFIG)
    ap.add_argument("--steps", type=int, default=150, help="training steps per run")
    ap.add_argument("--flow-weight", type=float, nargs="+", default=[0.0, 1.0])
    ap.add_argument("--seed", type=int, default=None, help="training seed (default: the config's)")
    ap.add_argument("--samples", type=int, default=16, help="held-out clips to generate from")
    ap.add_argument("--sample-steps", type=int, default=25)
    ap.add_argument("--out", type=Path, default=None, help="run folders (default: a temporary folder)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        cfg0 = TrainConfig.from_yaml(args.config, [f"output_dir={root}"])
        items = held_out_items(cfg0, args.samples)
        clips = (torch.stack([torch.as_tensor(it["video"]) for it in items]).float() + 1) / 2
        ref = summarise(clips)
        ref_motion = [video_metrics(v)["motion"] for v in clips]
        table = {"held-out clips": ref}
        for w in args.flow_weight:
            cfg, weights, elapsed = run(w, args.steps, root / f"flow_weight_{w:g}", args.config, args.seed)
            videos = generate(cfg, weights, items, steps=args.sample_steps, seed=cfg.seed)
            table[f"flow_weight={w:g}"] = summarise(videos, ref_motion) | {"train_s": elapsed}
    print(f"{args.steps} steps, seed {cfg.seed}, {args.samples} held-out clips, {cfg0.data.num_frames} frames at "
          f"{cfg0.data.height}x{cfg0.data.width}")
    print(f"{'':18s} {'motion px/f':>12s} {'|Δmotion|':>10s} {'flicker':>8s} {'warp err':>9s} {'train s':>8s}")
    for name, r in table.items():
        print(f"{name:18s} {r['motion']:12.3f} {r.get('abs_motion_error', float('nan')):10.3f} "
              f"{r['flicker']:8.2f} {r['warp_error']:9.2f} {r.get('train_s', float('nan')):8.0f}")
    if args.json:
        args.json.write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
