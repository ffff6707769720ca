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
import logging
import math
import os
import random
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vidiff.adapters.training import (
    attach_trainable_camera,
    attach_trainable_lora,
    export_trained_camera,
    export_trained_lora,
    set_batch_camera,
)
from vidiff.training import distributed as D
from vidiff.training.checkpoint import (
    CheckpointCorruptError,
    capture_rng,
    latest_checkpoint,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from vidiff.training.config import StageConfig, TrainConfig
from vidiff.training.ema import EMA
from vidiff.training.model import (
    ModelBundle,
    build_dataset,
    build_models,
    export_model,
    prepare_batch,
    scheduler_keys,
    trained_parametrisation,
)
from vidiff.training.objectives import DiffusionObjective, sample_draws
from vidiff.training.schedule import WarmupCosineSchedule
from vidiff.training.stages import StageSpan, apply_trainable, stage_at, stage_spans, unmatched_patterns

logger = logging.getLogger(__name__)
_CUBLAS = "CUBLAS_WORKSPACE_CONFIG"  # cuBLAS needs a fixed workspace to be deterministic

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


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def deterministic_mode(enabled: bool, device: torch.device) -> Iterator[None]:
    """Deterministic kernels while the block runs (``torch.use_deterministic_algorithms``, cuDNN autotuning
    off and the cuBLAS workspace variable on CUDA); the previous settings come back on exit, also on error."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, os.environ.get(_CUBLAS))
    try:
        if enabled:
            if device.type == "cuda":
                os.environ.setdefault(_CUBLAS, ":4096:8")
                torch.backends.cudnn.benchmark = False
            torch.use_deterministic_algorithms(True)
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark = saved[2]
        if saved[3] is None:
            os.environ.pop(_CUBLAS, None)
        else:
            os.environ[_CUBLAS] = saved[3]


def _autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def _make_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=cfg.optim.lr, betas=cfg.optim.betas, eps=cfg.optim.eps,
                             weight_decay=cfg.optim.weight_decay, foreach=False)


class EpochFetcher:
    """``fetch(epoch, index)``: item ``index`` as it is in ``epoch`` (random crops / clip starts are keyed by
    the epoch). ``set_epoch`` is called when the epoch changes; the epoch last set is kept here, not written
    onto the dataset."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self.epoch: int | None = None

    def __call__(self, epoch: int, index: int) -> dict[str, Any]:
        if hasattr(self.dataset, "set_epoch") and self.epoch != epoch:
            self.dataset.set_epoch(epoch)
            self.epoch = epoch
        return self.dataset[index]


def _module_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trained module's weights (``unet.*``, ``motion_head.*``) as full CPU tensors (collective)."""
    return D.full_state(D.unwrap(model).state_dict())


def check_output_dir(path: str | Path) -> None:
    """Refuse an ``output_dir`` that is a file, lies under a file or cannot be written — before any work."""
    out = Path(path)
    probe = out
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"output_dir {out}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"output_dir {out}: {probe} is not writable")


def train(config: TrainConfig, *, resume: bool = False) -> TrainResult:
    """Train or fine-tune as ``config`` says; with ``resume`` continue from the latest checkpoint.

    ``config.deterministic`` holds only while this runs: the previous settings come back on return."""
    check_output_dir(config.output_dir)
    env = D.init_distributed(config.distributed.strategy, config.distributed.backend, config.device)
    try:
        with deterministic_mode(config.deterministic, env.device):
            return _train(config, env, resume)
    finally:
        D.shutdown_distributed()


def export_checkpoint(config: TrainConfig, checkpoint: str | Path | None = None) -> Path:
    """Export a saved checkpoint (default: the latest under ``OUTPUT_DIR/checkpoints``) as the model the end
    of the run writes, with the config's export settings, to ``OUTPUT_DIR/model``; returns that folder."""
    check_output_dir(config.output_dir)
    root = Path(config.output_dir) / "checkpoints"
    path = Path(checkpoint) if checkpoint is not None else latest_checkpoint(root)
    if path is None:
        raise FileNotFoundError(f"no checkpoint to export in {root}")
    ck = load_checkpoint(path)
    use_ema = config.checkpoint.export_weights == "ema" and ck.ema is not None
    return _export(config, _build_bundle(config), ck.ema if use_ema else ck.model, source=ck.path)


def _build_bundle(cfg: TrainConfig) -> ModelBundle:
    bundle = build_models(cfg.model, cfg.data, seed=cfg.seed, flow=cfg.loss.flow_weight > 0)
    # what the exported model samples and generates with: the parametrisation it was trained with
    bundle.extra.update(trained_parametrisation(cfg.loss), guidance=cfg.checkpoint.guidance)
    scheduler_keys(bundle.extra, cfg.model.sigma_min, cfg.model.sigma_max)  # a σ range it can sample: now
    if cfg.lora is not None:  # only these adapters train (see the stage in _train)
        attach_trainable_lora(bundle.unet, rank=cfg.lora.rank, alpha=cfg.lora.alpha, targets=cfg.lora.targets,
                              dropout=cfg.lora.dropout)
    if cfg.camera is not None:  # likewise the camera adapter (vidiff.adapters.camera)
        attach_trainable_camera(bundle.unet, hidden=cfg.camera.hidden)
    return bundle


def _export(cfg: TrainConfig, bundle: ModelBundle, weights: dict[str, torch.Tensor],
            source: Path | None = None) -> Path:
    expected = {f"{prefix}.{k}": v for prefix, m in (("unet", bundle.unet), ("motion_head", bundle.motion_head))
                if m is not None for k, v in m.state_dict().items()}
    wrong = sorted(set(expected) ^ set(weights)) or sorted(
        k for k, v in expected.items() if tuple(weights[k].shape) != tuple(v.shape))
    if wrong:
        raise CheckpointCorruptError(f"checkpoint {source} does not hold this config's model "
                                     f"({len(wrong)} tensors missing, extra or misshapen, e.g. {wrong[0]})")
    if cfg.lora is not None:  # the adapters alone, small, with the base model's hash
        path = Path(cfg.output_dir) / "lora.safetensors"
        export_trained_lora(bundle.unet, weights, path, prefix="unet.", targets=cfg.lora.targets)
        return path
    if cfg.camera is not None:
        path = Path(cfg.output_dir) / "camera_adapter.safetensors"
        export_trained_camera(bundle.unet, weights, path, prefix="unet.",
                              motion_bucket_scale=cfg.data.motion_bucket_scale)
        return path
    return export_model(bundle, weights, Path(cfg.output_dir) / "model", cfg.model.init_from,
                        dtype=getattr(torch, cfg.checkpoint.export_dtype))


def _train(cfg: TrainConfig, env: D.DistEnv, resume: bool) -> TrainResult:
    device = env.device
    if cfg.precision == "fp16" and device.type != "cuda":
        raise ValueError("precision=fp16 needs CUDA (GradScaler); use bf16 or fp32 on CPU")
    _seed_everything(cfg.seed)
    out = Path(cfg.output_dir)
    ckpt_root = out / "checkpoints"

    # -- model, data --------------------------------------------------------------------------------------
    bundle = _build_bundle(cfg)
    bundle.to(device)
    if cfg.model.gradient_checkpointing:
        bundle.enable_gradient_checkpointing()
    module = DiffusionObjective(bundle.unet, cfg.loss, bundle.motion_head).to(device)
    dataset = build_dataset(cfg.data, seed=cfg.seed)
    fetch = EpochFetcher(dataset)
    n = len(dataset)
    world = env.world_size
    bsz, accum = cfg.data.batch_size, cfg.optim.grad_accum
    global_batch = bsz * accum * world
    lora_stage = (StageConfig("lora", trainable=("unet.lora.*",)),) if cfg.lora is not None else None
    if cfg.camera is not None:
        lora_stage = (StageConfig("camera", trainable=("unet.camera.*",)),)
    spans = stage_spans(lora_stage or cfg.stages, cfg.schedule.max_steps)
    for s in spans:
        missing = unmatched_patterns(module, s.trainable)
        if len(missing) == len(s.trainable):  # found now, not when the stage starts
            raise ValueError(f"stage {s.name!r}: patterns {list(s.trainable)} match no parameter of the model")
        if missing and env.is_main:
            warnings.warn(f"stage {s.name!r}: patterns {missing} match no parameter", stacklevel=3)

    ema = EMA(module, cfg.ema.decay, warmup=cfg.ema.warmup) if cfg.ema.enabled else None
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")

    def micro_batch(step: int, micro: int) -> tuple[torch.Tensor, Any, Any]:
        """``(x0, cond, draws)`` of this rank's share of micro-step ``micro`` of optimizer step ``step``."""
        indices = D.global_batch_indices(step, global_batch=global_batch, num_samples=n, seed=cfg.seed,
                                         shuffle=cfg.data.shuffle, fixed_batch=cfg.data.fixed_batch)
        positions = D.shard_positions(batch_size=bsz, grad_accum=accum, world_size=world, rank=env.rank,
                                      micro_step=micro)
        items = [fetch(*indices[p]) for p in positions]
        x0, cond_fn, image_shape = prepare_batch(bundle, items, device)
        if cfg.camera is not None:  # the camera adapter reads each clip's path
            set_batch_camera(bundle.unet, items)
        draws = sample_draws(cfg.loss, seed=cfg.seed, step=step, positions=positions,
                             image_shape=image_shape, latent_shape=tuple(x0.shape[1:]), device=device)
        return x0, cond_fn(draws), draws

    def setup_stage(span: StageSpan, step: int) -> tuple[nn.Module, torch.optim.Optimizer, WarmupCosineSchedule]:
        apply_trainable(module, span.trainable)
        find_unused = False
        if env.strategy == "ddp" and world > 1:  # DDP must be told when a trainable weight gets no gradient
            def probe() -> torch.Tensor:
                with _autocast(cfg.precision, device):
                    return module(*micro_batch(step, 0))["loss"].float().sum()

            unused = D.unused_parameters(module, probe)
            find_unused = bool(D.all_reduce_sum(torch.tensor([len(unused)], device=device)).item() > 0)
            logger.info("stage %r: %d trainable parameters get no gradient (%s); find_unused_parameters=%s",
                        span.name, len(unused), ", ".join(unused[:3]), find_unused)
        wrapped = D.wrap_model(module, env, find_unused=find_unused)  # FSDP replaces parameters: after wrapping
        opt = _make_optimizer([p for p in module.parameters() if p.requires_grad], cfg)
        sched = WarmupCosineSchedule(opt, base_lr=cfg.optim.lr, max_steps=cfg.schedule.max_steps,
                                     warmup_steps=cfg.schedule.warmup_steps, decay=cfg.schedule.decay,
                                     min_lr_ratio=cfg.schedule.min_lr_ratio, last_step=span.start)
        return wrapped, opt, sched

    # -- resume ---------------------------------------------------------------------------------------
    start = 0
    resumed_from = None
    ck = None
    if resume:  # every rank resumes from the checkpoint rank 0 found
        found = latest_checkpoint(ckpt_root) if env.is_main else None
        ck = D.broadcast_object(None if found is None else str(found))
    c = load_checkpoint(ck) if ck is not None else None
    # A checkpoint holds the optimizer of the stage that ran its last step (step - 1): one written at a stage
    # boundary holds the previous stage's. That stage is set up and loaded; the loop then switches as an
    # uninterrupted run does at that step.
    span = stage_at(spans, max((c.step if c else 0) - 1, 0))
    if c is not None:
        start = resumed_from = c.step
        epoch, index = D.data_position(start, global_batch, n, cfg.data.fixed_batch)
        if (c.state["epoch"], c.state["index"], c.state["global_batch"]) != (epoch, index, global_batch):
            raise ValueError(f"checkpoint {ck} was written with a different data position / global batch "
                             f"({c.state['global_batch']} vs {global_batch})")
        if c.state.get("stage", span.name) != span.name:
            raise ValueError(f"checkpoint {ck} was written in stage {c.state['stage']!r}, but this config's "
                             f"stages put its last step ({start - 1}) in stage {span.name!r}")
        D.unwrap(module).load_state_dict(c.model)
        if ema is not None and c.ema is not None:
            ema.load_state_dict(c.ema, c.state["ema_updates"])
    model, opt, sched = setup_stage(span, start)
    if c is not None:
        D.load_optimizer_state(model, opt, c.optimizer, env)
        sched.load_state_dict(c.state["scheduler"])
        if c.state.get("scaler"):
            scaler.load_state_dict(c.state["scaler"])
        restore_rng(c.rng[min(env.rank, len(c.rng) - 1)])

    # everything is validated: only now is the run's folder written
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        cfg.to_yaml(out / "config.yaml")
    log = _JsonlLog(out / "metrics.jsonl" if env.is_main else None)

    # -- loop -----------------------------------------------------------------------------------------
    losses: list[float] = []
    last_ckpt: Path | None = c.path if c is not None else None
    bar = None
    if cfg.progress and env.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.schedule.max_steps, initial=start, desc="train", dynamic_ncols=True)
    params_of = lambda: [p for p in module.parameters() if p.requires_grad]  # noqa: E731
    for step in range(start, cfg.schedule.max_steps):
        new_span = stage_at(spans, step)
        if new_span.index != span.index:
            span = new_span
            model, opt, sched = setup_stage(span, step)
        t0 = time.perf_counter()
        model.train()
        sums = torch.zeros(3, dtype=torch.float64)
        for micro in range(accum):
            x0, cond, draws = micro_batch(step, micro)
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
            last_ckpt = _save(cfg, env, ckpt_root, done, span, model, ema, opt, sched, scaler, global_batch, n)
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


def _save(cfg: TrainConfig, env: D.DistEnv, root: Path, step: int, span: StageSpan, model: nn.Module,
          ema: EMA | None, opt: torch.optim.Optimizer, sched: WarmupCosineSchedule, scaler: torch.amp.GradScaler,
          global_batch: int, n: int) -> Path:
    """Gather (collective) and write one checkpoint from rank 0; every rank returns its path. ``span``: the
    stage whose optimizer this is (the one that ran step ``step - 1``)."""
    model_state = _module_state(model)
    ema_state = D.full_state(ema.state_dict()) if ema is not None else None
    opt_state = D.optimizer_state(model, opt, env)
    rng = D.gather_objects(capture_rng())
    epoch, index = D.data_position(step, global_batch, n, cfg.data.fixed_batch)
    state = {"epoch": epoch, "index": index, "global_batch": global_batch, "world_size": env.world_size,
             "stage": span.name, "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
             "ema_updates": ema.num_updates if ema is not None else 0}
    path = root / f"step-{step:08d}"
    if env.is_main:
        path = save_checkpoint(root, step, model=model_state, optimizer=opt_state, state=state, rng=rng,
                               ema=ema_state, keep_last=cfg.checkpoint.keep_last)
    D.barrier()
    return path
