"""The training loop: one explicit function, ``train(config, resume=...) -> TrainResult``.

Per optimizer step: (stage switch if due) → for each of ``grad_accum`` micro-batches: load this rank's
shard, encode with the frozen VAE / image encoder, draw per-sample noise, forward + backward under
autocast (DDP gradient sync only on the last micro-batch) → unscale (GradScaler, fp16) → clip → optimizer
step → LR schedule → EMA → JSONL metrics → periodic atomic checkpoint. At the end the (EMA or raw) weights
are exported as a model ``ImageToVideoPipeline.from_pretrained`` loads.

Exact resume: the model, EMA, optimizer, scheduler, GradScaler, step and stage come from the checkpoint;
the data position and every random draw are functions of ``(seed, step)`` (see ``distributed`` and
``objectives.sample_draws``), and the RNG states of every rank are restored as well.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vidiff.training import distributed as D
from vidiff.training.checkpoint import (
    capture_rng,
    latest_checkpoint,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from vidiff.training.config import TrainConfig
from vidiff.training.ema import EMA
from vidiff.training.model import ModelBundle, build_dataset, build_models, export_model, prepare_batch
from vidiff.training.objectives import DiffusionObjective, sample_draws
from vidiff.training.schedule import WarmupCosineSchedule
from vidiff.training.stages import StageSpan, apply_trainable, stage_at, stage_spans, unmatched_patterns


@dataclass
class TrainResult:
    """What a run produced. ``losses``: the global-batch mean loss of every step this call ran."""

    output_dir: Path
    step: int
    losses: list[float] = field(default_factory=list)
    model_dir: Path | None = None
    checkpoint: Path | None = None
    resumed_from: int | None = None


class _JsonlLog:
    def __init__(self, path: Path | None) -> None:
        self.path = path

    def write(self, row: dict[str, Any]) -> None:
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")


def _seed_everything(seed: int, deterministic: bool, device: torch.device) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        if device.type == "cuda":
            import os

            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by cuBLAS determinism
            torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True)


def _autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def _make_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=cfg.optim.lr, betas=cfg.optim.betas, eps=cfg.optim.eps,
                             weight_decay=cfg.optim.weight_decay, foreach=False)


def _fetch(dataset: Any, epoch: int, index: int) -> dict[str, Any]:
    """Item ``index`` as it is in ``epoch`` (random crops / clip starts are keyed by the epoch)."""
    if hasattr(dataset, "set_epoch") and getattr(dataset, "_vidiff_epoch", None) != epoch:
        dataset.set_epoch(epoch)
        dataset._vidiff_epoch = epoch
    return dataset[index]


def _module_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trained module's weights (``unet.*``, ``motion_head.*``) as full CPU tensors (collective)."""
    return D.full_state(D.unwrap(model).state_dict())


def train(config: TrainConfig, *, resume: bool = False) -> TrainResult:
    """Train or fine-tune as ``config`` says; with ``resume`` continue from the latest checkpoint."""
    env = D.init_distributed(config.distributed.strategy, config.distributed.backend, config.device)
    try:
        return _train(config, env, resume)
    finally:
        D.shutdown_distributed()


def export_checkpoint(config: TrainConfig, checkpoint: str | Path | None = None) -> Path:
    """Export a saved checkpoint (default: the latest under ``OUTPUT_DIR/checkpoints``) as the model the end
    of the run writes, with the config's export settings, to ``OUTPUT_DIR/model``; returns that folder."""
    root = Path(config.output_dir) / "checkpoints"
    path = Path(checkpoint) if checkpoint is not None else latest_checkpoint(root)
    if path is None:
        raise FileNotFoundError(f"no checkpoint to export in {root}")
    ck = load_checkpoint(path)
    use_ema = config.checkpoint.export_weights == "ema" and ck.ema is not None
    return _export(config, _build_bundle(config), ck.ema if use_ema else ck.model)


def _build_bundle(cfg: TrainConfig) -> ModelBundle:
    bundle = build_models(cfg.model, cfg.data, seed=cfg.seed, flow=cfg.loss.flow_weight > 0)
    # what the exported model samples and generates with
    bundle.extra.update(scaling=cfg.loss.scaling, sigma_data=cfg.loss.sigma_data, guidance=cfg.checkpoint.guidance)
    return bundle


def _export(cfg: TrainConfig, bundle: ModelBundle, weights: dict[str, torch.Tensor]) -> Path:
    return export_model(bundle, weights, Path(cfg.output_dir) / "model", cfg.model.init_from,
                        dtype=getattr(torch, cfg.checkpoint.export_dtype))


def _train(cfg: TrainConfig, env: D.DistEnv, resume: bool) -> TrainResult:
    device = env.device
    if cfg.precision == "fp16" and device.type != "cuda":
        raise ValueError("precision=fp16 needs CUDA (GradScaler); use bf16 or fp32 on CPU")
    _seed_everything(cfg.seed, cfg.deterministic, device)
    out = Path(cfg.output_dir)
    ckpt_root = out / "checkpoints"
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        cfg.to_yaml(out / "config.yaml")
    log = _JsonlLog(out / "metrics.jsonl" if env.is_main else None)

    # -- model, data --------------------------------------------------------------------------------------
    bundle = _build_bundle(cfg)
    bundle.to(device)
    if cfg.model.gradient_checkpointing:
        bundle.enable_gradient_checkpointing()
    module = DiffusionObjective(bundle.unet, cfg.loss, bundle.motion_head).to(device)
    dataset = build_dataset(cfg.data, seed=cfg.seed)
    n = len(dataset)
    world = env.world_size
    bsz, accum = cfg.data.batch_size, cfg.optim.grad_accum
    global_batch = bsz * accum * world
    spans = stage_spans(cfg.stages, cfg.schedule.max_steps)
    for s in spans:
        missing = unmatched_patterns(module, s.trainable)
        if missing and env.is_main:
            print(f"vidiff train: stage {s.name!r}: patterns {missing} match no parameter")

    ema = EMA(module, cfg.ema.decay, warmup=cfg.ema.warmup) if cfg.ema.enabled else None
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")

    def setup_stage(span: StageSpan) -> tuple[nn.Module, torch.optim.Optimizer, WarmupCosineSchedule]:
        apply_trainable(module, span.trainable)
        wrapped = D.wrap_model(module, env)  # FSDP replaces parameters: collect them after wrapping
        opt = _make_optimizer([p for p in module.parameters() if p.requires_grad], cfg)
        sched = WarmupCosineSchedule(opt, base_lr=cfg.optim.lr, max_steps=cfg.schedule.max_steps,
                                     warmup_steps=cfg.schedule.warmup_steps, decay=cfg.schedule.decay,
                                     min_lr_ratio=cfg.schedule.min_lr_ratio, last_step=span.start)
        return wrapped, opt, sched

    # -- resume ---------------------------------------------------------------------------------------
    start = 0
    resumed_from = None
    ck = latest_checkpoint(ckpt_root) if resume else None
    if ck is not None:
        c = load_checkpoint(ck)
        D.unwrap(module).load_state_dict(c.model)
        if ema is not None and c.ema is not None:
            ema.load_state_dict(c.ema, c.state["ema_updates"])
        start = resumed_from = c.step
    span = stage_at(spans, start)
    model, opt, sched = setup_stage(span)
    if ck is not None:
        D.load_optimizer_state(model, opt, c.optimizer, env)
        sched.load_state_dict(c.state["scheduler"])
        if c.state.get("scaler"):
            scaler.load_state_dict(c.state["scaler"])
        epoch, index = D.data_position(start, global_batch, n, cfg.data.fixed_batch)
        if (c.state["epoch"], c.state["index"], c.state["global_batch"]) != (epoch, index, global_batch):
            raise ValueError(f"checkpoint {ck} was written with a different data position / global batch "
                             f"({c.state['global_batch']} vs {global_batch})")
        restore_rng(c.rng[min(env.rank, len(c.rng) - 1)])

    # -- loop -----------------------------------------------------------------------------------------
    losses: list[float] = []
    last_ckpt: Path | None = ck
    bar = None
    if cfg.progress and env.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.schedule.max_steps, initial=start, desc="train", dynamic_ncols=True)
    params_of = lambda: [p for p in module.parameters() if p.requires_grad]  # noqa: E731
    for step in range(start, cfg.schedule.max_steps):
        new_span = stage_at(spans, step)
        if new_span.index != span.index:
            span = new_span
            model, opt, sched = setup_stage(span)
        t0 = time.perf_counter()
        indices = D.global_batch_indices(step, global_batch=global_batch, num_samples=n, seed=cfg.seed,
                                         shuffle=cfg.data.shuffle, fixed_batch=cfg.data.fixed_batch)
        model.train()
        sums = torch.zeros(3, dtype=torch.float64)
        for micro in range(accum):
            positions = D.shard_positions(batch_size=bsz, grad_accum=accum, world_size=world, rank=env.rank,
                                          micro_step=micro)
            items = [_fetch(dataset, *indices[p]) for p in positions]
            x0, cond_fn, image_shape = prepare_batch(bundle, items, device)
            draws = sample_draws(cfg.loss, seed=cfg.seed, step=step, positions=positions,
                                 image_shape=image_shape, latent_shape=tuple(x0.shape[1:]), device=device)
            cond = cond_fn(draws)
            sync = micro == accum - 1 or not isinstance(model, nn.parallel.DistributedDataParallel)
            ctx = contextlib.nullcontext() if sync else model.no_sync()
            with ctx:
                with _autocast(cfg.precision, device):
                    terms = model(x0, cond, draws)
                # mean over the global batch = Σ per-sample losses / G (DDP averages over the W ranks)
                loss = terms["loss"].float().sum() / (bsz * accum)
                scaler.scale(loss).backward()
            sums += torch.stack([terms[k].detach().double().sum().cpu()
                                 for k in ("loss", "diffusion", "flow")])
        sums = D.all_reduce_sum(sums) / global_batch
        scaler.unscale_(opt)
        max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params_of(), max_norm))
        lr = opt.param_groups[0]["lr"]
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        sched.step()
        if ema is not None:
            ema.update(module)
        done = step + 1
        dt = time.perf_counter() - t0
        loss_value = float(sums[0])
        losses.append(loss_value)
        if env.is_main and (done % cfg.log_every == 0 or done == cfg.schedule.max_steps):
            log.write({"step": done, "loss": loss_value, "loss_diffusion": float(sums[1]),
                       "loss_flow": float(sums[2]), "lr": lr, "grad_norm": grad_norm,
                       "samples_per_s": global_batch / max(dt, 1e-9), "stage": span.name})
        if bar is not None:
            bar.set_postfix(loss=f"{loss_value:.4f}", it_s=f"{global_batch / max(dt, 1e-9):.1f} samples/s")
            bar.update(1)
        every = cfg.checkpoint.every_steps
        if (every and done % every == 0) or done == cfg.schedule.max_steps:
            last_ckpt = _save(cfg, env, ckpt_root, done, model, ema, opt, sched, scaler, global_batch, n)
    if bar is not None:
        bar.close()

    # -- export -----------------------------------------------------------------------------------------
    model_dir = None
    if cfg.checkpoint.export:
        weights = _module_state(module)
        if ema is not None and cfg.checkpoint.export_weights == "ema":
            weights = D.full_state(ema.state_dict())
        if env.is_main:
            model_dir = _export(cfg, bundle, weights)
        D.barrier()
    return TrainResult(output_dir=out, step=cfg.schedule.max_steps, losses=losses, model_dir=model_dir,
                       checkpoint=last_ckpt, resumed_from=resumed_from)


def _save(cfg: TrainConfig, env: D.DistEnv, root: Path, step: int, model: nn.Module, ema: EMA | None,
          opt: torch.optim.Optimizer, sched: WarmupCosineSchedule, scaler: torch.amp.GradScaler,
          global_batch: int, n: int) -> Path:
    """Gather (collective) and write one checkpoint from rank 0; every rank returns its path."""
    model_state = _module_state(model)
    ema_state = D.full_state(ema.state_dict()) if ema is not None else None
    opt_state = D.optimizer_state(model, opt, env)
    rng = D.gather_objects(capture_rng())
    epoch, index = D.data_position(step, global_batch, n, cfg.data.fixed_batch)
    state = {"epoch": epoch, "index": index, "global_batch": global_batch, "world_size": env.world_size,
             "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
             "ema_updates": ema.num_updates if ema is not None else 0}
    path = root / f"step-{step:08d}"
    if env.is_main:
        path = save_checkpoint(root, step, model=model_state, optimizer=opt_state, state=state, rng=rng,
                               ema=ema_state, keep_last=cfg.checkpoint.keep_last)
    D.barrier()
    return path
