"""Fine-tuning a tiny SV3D_p (Voleti et al. 2024) on synthetic orbits: held-out novel-view error, trained vs untrained.

Trains ``configs/sv3d_p_orbits.yaml`` for ``--steps`` steps with ``vidiff.training.loop.train`` (the code
``vidiff train`` runs), then generates orbits from the input view of ``--objects`` solids the run never saw
(another seed of ``vidiff.training.orbits.SyntheticOrbitDataset``) with

* the **untrained** model (the same config's step-0 weights: ``build_models`` with the run's seed),
* the **trained** model (the run's EMA weights),
* a **copy** baseline (every view = the input view),

and reports MSE / PSNR (pixels in [0, 1]) against the rendered ground truth at two sets of azimuths:
``held-out`` (offsets from the input view half-way between the training orbit's, ``360·(i + ½)/T``: never
seen in training) and ``train grid`` (the training orbit's offsets ``360·(i + 1)/T``). The last frame (the
input view itself) is excluded. Sampling: EDM Euler over Karras σ (``--sampling-steps``), no guidance, the
same noise for both models; the conditioning comes from ``vidiff.training.model.prepare_batch`` with no
dropout and the config's fixed noise-augmentation strength (as SV3D_p's inference conditions).

    .venv/bin/python benchmarks/sv3d_finetune.py --steps 300
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch

from vidiff.diffusion.denoiser import Denoiser
from vidiff.diffusion.samplers import sample_euler
from vidiff.diffusion.schedules import karras_sigmas
from vidiff.training.checkpoint import load_checkpoint
from vidiff.training.config import TrainConfig
from vidiff.training.loop import train
from vidiff.training.model import ModelBundle, build_models, prepare_batch
from vidiff.training.objectives import Draws, make_scaling
from vidiff.training.orbits import SyntheticOrbitDataset, default_offsets

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "sv3d_p_orbits.yaml"


def held_out_offsets(num_frames: int) -> tuple[float, ...]:
    """Offsets half-way between the training orbit's, then 360 (the input view ends every orbit)."""
    return (*(360.0 * (i + 0.5) / num_frames for i in range(num_frames - 1)), 360.0)


@torch.no_grad()
def generate(bundle: ModelBundle, cfg: TrainConfig, items: list[dict], *, steps: int, seed: int) -> torch.Tensor:
    """Orbits ``(B, T, 3, H, W)`` in [0, 1] generated from each item's input view and cameras."""
    device = next(bundle.unet.parameters()).device
    x0, make_cond, image_shape = prepare_batch(bundle, items, device)
    b = x0.shape[0]
    g = torch.Generator().manual_seed(seed)
    aug_noise = torch.randn((b, *image_shape), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    zeros = torch.zeros(b, device=device)
    draws = Draws(keep=torch.ones(b, device=device), aug_strength=torch.full((b,), cfg.loss.noise_aug_strength,
                                                                             device=device),
                  aug_noise=aug_noise.to(device), sigma=zeros, timestep=zeros, noise=torch.zeros_like(x0))
    cond = make_cond(draws)
    sigmas = karras_sigmas(steps, cfg.model.sigma_min, cfg.model.sigma_max, device=device)
    denoiser = Denoiser(bundle.unet.eval(), make_scaling(cfg.loss))
    x = sample_euler(denoiser, noise.to(device) * sigmas[0], sigmas, cond=cond)
    return ((x.float().cpu() + 1) / 2).clamp(0, 1)


def errors(pred: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """MSE and PSNR (dB) over every view but the last (the input view), pixels in [0, 1]."""
    mse = float(((pred[:, :-1] - truth[:, :-1]) ** 2).mean())
    return {"mse": mse, "psnr": 10 * math.log10(1 / max(mse, 1e-12))}


def evaluate(bundle: ModelBundle, cfg: TrainConfig, *, objects: int, steps: int, seed: int) -> dict[str, dict]:
    """Error of ``bundle`` (and of the copy baseline) on held-out and train-grid azimuths."""
    size, t = (cfg.data.height, cfg.data.width), cfg.data.num_frames
    out: dict[str, dict] = {}
    for name, offsets in (("held_out", held_out_offsets(t)), ("train_grid", default_offsets(t))):
        data = SyntheticOrbitDataset(objects, t, size, seed=cfg.seed + 7919, offsets=offsets)  # unseen solids
        items = [data[i] for i in range(objects)]
        truth = (torch.stack([it["video"] for it in items]) + 1) / 2
        out[name] = errors(generate(bundle, cfg, items, steps=steps, seed=seed), truth)
        out[f"{name}_copy"] = errors(truth[:, -1:].expand_as(truth), truth)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300, help="training steps")
    p.add_argument("--objects", type=int, default=16, help="held-out solids to generate")
    p.add_argument("--sampling-steps", type=int, default=25)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--output-dir", default=None, help="training run folder (default: a temporary one)")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--sv3d-u", action="store_true",
                   help="train an SV3D_u (model.camera=false: no camera in the vector, so only the training "
                        "orbit's azimuths, the train-grid rows, are what it was taught)")
    args = p.parse_args()
    family = "SV3D_u" if args.sv3d_u else "SV3D_p"

    with tempfile.TemporaryDirectory() as tmp:
        out_dir = args.output_dir or str(Path(tmp) / "run")
        cfg = TrainConfig.from_yaml(CONFIG, [f"output_dir={out_dir}", f"schedule.max_steps={args.steps}",
                                             f"schedule.warmup_steps={min(10, args.steps)}",
                                             "progress=false", f"device={args.device}",
                                             "checkpoint.every_steps=0", "checkpoint.export=false",
                                             f"model.camera={str(not args.sv3d_u).lower()}"])
        device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
        untrained = build_models(cfg.model, cfg.data, seed=cfg.seed).to(device)
        before = evaluate(untrained, cfg, objects=args.objects, steps=args.sampling_steps, seed=cfg.seed)
        t0 = time.perf_counter()
        result = train(cfg)
        train_s = time.perf_counter() - t0
        trained = build_models(cfg.model, cfg.data, seed=cfg.seed)
        ema = load_checkpoint(result.checkpoint).ema
        trained.unet.load_state_dict({k[len("unet."):]: v for k, v in ema.items() if k.startswith("unet.")})
        after = evaluate(trained.to(device), cfg, objects=args.objects, steps=args.sampling_steps, seed=cfg.seed)

    print(f"tiny {family}, {cfg.data.num_frames} views of {cfg.data.height}x{cfg.data.width}, {args.steps} steps "
          f"(batch {cfg.data.batch_size}) in {train_s:.0f} s on {device}; {args.objects} unseen solids, "
          f"{args.sampling_steps} Euler steps; final loss {result.losses[-1]:.4f}")
    print(f"{'model':<10} {'held-out MSE':>13} {'PSNR dB':>8} {'train-grid MSE':>15} {'PSNR dB':>8}")
    rows = {"untrained": before, "trained": after}
    for name, r in rows.items():
        print(f"{name:<10} {r['held_out']['mse']:>13.5f} {r['held_out']['psnr']:>8.2f} "
              f"{r['train_grid']['mse']:>15.5f} {r['train_grid']['psnr']:>8.2f}")
    c = after
    print(f"{'copy input':<10} {c['held_out_copy']['mse']:>13.5f} {c['held_out_copy']['psnr']:>8.2f} "
          f"{c['train_grid_copy']['mse']:>15.5f} {c['train_grid_copy']['psnr']:>8.2f}")
    if args.json:
        report = {"family": family, "steps": args.steps, "train_s": train_s, **rows}
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
