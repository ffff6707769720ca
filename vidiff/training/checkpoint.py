"""Resumable training checkpoints: safetensors for tensors, JSON for the rest, written atomically.

Layout of ``<output_dir>/checkpoints``::

    step-00000120/            one complete checkpoint
        model.safetensors     trained module (``unet.*``, ``motion_head.*``)
        ema.safetensors       EMA shadow weights (when EMA is on)
        optimizer.safetensors optimizer tensors, keyed ``state.<param>.<name>``
        rng.safetensors       torch CPU / CUDA generator states of every rank and the named data generators
        state.json            step, data position, stage, scheduler, GradScaler, optimizer param groups,
                              python / numpy RNG states, anything else the loop adds
    latest                    text file naming the newest complete checkpoint

A checkpoint is written into a temporary sibling directory, flushed, then renamed into place
(``os.replace``); ``latest`` is then replaced atomically, and only then are old checkpoints beyond
``keep_last`` removed. A crash at any point leaves the previous ``latest`` valid. Nothing is pickled:
``torch.load`` is never used.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vidiff.io.atomic import atomic_dir, fsync_path, write_text_atomic

LATEST = "latest"
_PREFIX = "step-"
_TMP_PREFIX = ".tmp-"


class CheckpointCorruptError(RuntimeError):
    """A checkpoint directory is incomplete or unreadable."""


# -- RNG states --------------------------------------------------------------------------------------
def capture_rng(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Snapshot every RNG the run touches: torch CPU (+ CUDA), python ``random``, numpy, named generators."""
    tensors: dict[str, torch.Tensor] = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    for name, g in (generators or {}).items():
        tensors[f"gen_{name}"] = g.get_state()
    py = random.getstate()
    npst = np.random.get_state()
    return {
        "tensors": tensors,
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [npst[0], npst[1].tolist(), int(npst[2]), int(npst[3]), float(npst[4])],
    }


def restore_rng(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    """Inverse of :func:`capture_rng`."""
    t = state["tensors"]
    torch.set_rng_state(t["torch_cpu"])
    cuda = [t[k] for k in sorted(k for k in t if k.startswith("torch_cuda_"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    for name, g in (generators or {}).items():
        key = f"gen_{name}"
        if key in t:
            g.set_state(t[key])
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


# -- optimizer state <-> (tensors, json) ---------------------------------------------------------------
def split_optimizer_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into safetensors-ready tensors and a JSON-ready remainder."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    key_types: dict[str, str] = {}
    for pid, pstate in state["state"].items():
        key_types[str(pid)] = type(pid).__name__
        for name, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{name}"] = value
            else:
                scalars.setdefault(str(pid), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars, "key_types": key_types}


def join_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`split_optimizer_state`."""
    key_types = meta["key_types"]

    def key(pid: str) -> Any:
        return int(pid) if key_types.get(pid) == "int" else pid

    state: dict[Any, dict[str, Any]] = {}
    for full, value in tensors.items():
        _, rest = full.split(".", 1)
        pid, name = rest.rsplit(".", 1)
        state.setdefault(key(pid), {})[name] = value
    for pid, values in meta["scalars"].items():
        state.setdefault(key(pid), {}).update(values)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


# -- writing -------------------------------------------------------------------------------------------
def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    prepared = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    try:
        save_file(prepared, str(path))
    except RuntimeError:  # tensors sharing memory: store independent copies
        save_file({k: v.clone() for k, v in prepared.items()}, str(path))
    fsync_path(path)


def checkpoint_name(step: int) -> str:
    return f"{_PREFIX}{step:08d}"


def save_checkpoint(
    root: str | Path,
    step: int,
    *,
    model: dict[str, torch.Tensor],
    optimizer: dict[str, Any],
    state: dict[str, Any],
    rng: list[dict[str, Any]],
    ema: dict[str, torch.Tensor] | None = None,
    keep_last: int = 2,
) -> Path:
    """Write one checkpoint for optimizer step ``step`` under ``root`` atomically; return its path.

    ``rng`` holds one :func:`capture_rng` snapshot per rank (rank order). ``state`` must be
    JSON-serialisable (step, data position, scheduler, scaler, ...).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    with atomic_dir(final) as tmp:  # re-saving the same step (the final save after a periodic one) replaces it
        _save_tensors(model, tmp / "model.safetensors")
        if ema is not None:
            _save_tensors(ema, tmp / "ema.safetensors")
        opt_tensors, opt_meta = split_optimizer_state(optimizer)
        _save_tensors(opt_tensors, tmp / "optimizer.safetensors")
        rng_tensors = {f"rank{r}.{k}": v for r, snap in enumerate(rng) for k, v in snap["tensors"].items()}
        _save_tensors(rng_tensors, tmp / "rng.safetensors")
        meta = {
            "format": "vidiff-train-checkpoint",
            "version": 1,
            "step": step,
            "state": state,
            "optimizer": opt_meta,
            "rng": [{"python": s["python"], "numpy": s["numpy"]} for s in rng],
            "has_ema": ema is not None,
        }
        with open(tmp / "state.json", "w") as f:
            json.dump(meta, f)
            f.flush()
            os.fsync(f.fileno())
    write_text_atomic(final.name + "\n", root / LATEST)
    prune_checkpoints(root, keep_last)
    return final


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under ``root`` (with a ``state.json``), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir()
             if p.is_dir() and p.name.startswith(_PREFIX) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: p.name)


def prune_checkpoints(root: str | Path, keep_last: int) -> None:
    """Remove all but the newest ``keep_last`` checkpoints (never the one ``latest`` names) and stale
    temporary directories."""
    root = Path(root)
    ckpts = list_checkpoints(root)
    latest = latest_checkpoint(root)
    for p in ckpts[: max(0, len(ckpts) - keep_last)]:
        if latest is None or p.resolve() != latest.resolve():
            shutil.rmtree(p, ignore_errors=True)
    for p in root.iterdir():
        if p.name.startswith(_TMP_PREFIX) and not p.name.endswith(f".{os.getpid()}"):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def latest_checkpoint(root: str | Path) -> Path | None:
    """The checkpoint ``latest`` names, or the newest complete one when the pointer is missing."""
    root = Path(root)
    pointer = root / LATEST
    if pointer.is_file():
        cand = root / pointer.read_text().strip()
        if (cand / "state.json").is_file():
            return cand
    ckpts = list_checkpoints(root)
    return ckpts[-1] if ckpts else None


# -- reading -------------------------------------------------------------------------------------------
@dataclass
class Checkpoint:
    """Everything :func:`save_checkpoint` wrote, read back."""

    path: Path
    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    state: dict[str, Any]
    rng: list[dict[str, Any]] = field(default_factory=list)
    ema: dict[str, torch.Tensor] | None = None


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint directory (or the latest under a ``checkpoints`` root)."""
    path = Path(path)
    if not (path / "state.json").is_file():
        resolved = latest_checkpoint(path)
        if resolved is None:
            raise CheckpointCorruptError(f"no complete checkpoint in {path}")
        path = resolved
    try:
        meta = json.loads((path / "state.json").read_text())
        model = load_file(str(path / "model.safetensors"))
        opt_tensors = load_file(str(path / "optimizer.safetensors"))
        rng_tensors = load_file(str(path / "rng.safetensors"))
        ema = load_file(str(path / "ema.safetensors")) if meta.get("has_ema") else None
        rng = []
        for r, snap in enumerate(meta["rng"]):
            prefix = f"rank{r}."
            tensors = {k[len(prefix):]: v for k, v in rng_tensors.items() if k.startswith(prefix)}
            rng.append({"tensors": tensors, "python": snap["python"], "numpy": snap["numpy"]})
        return Checkpoint(path=path, step=int(meta["step"]), model=model,
                          optimizer=join_optimizer_state(opt_tensors, meta["optimizer"]),
                          state=dict(meta["state"]), rng=rng, ema=ema)
    # a truncated or foreign file, JSON of another shape: the checkpoint, named, not a traceback
    except (OSError, ValueError, KeyError, TypeError, AttributeError, SafetensorError) as e:
        raise CheckpointCorruptError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e
