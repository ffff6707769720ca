"""Multi-process training: process-group set-up, deterministic sharding of the global batch, wrappers.

Launch with ``torchrun --nproc_per_node N -m vidiff.cli.main train CONFIG`` (or
``python -m torch.distributed.run ...``); torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` protocol is
read once here. Backend: nccl on CUDA, gloo on CPU.

Sharding: the data stream is the concatenation of per-epoch permutations (seeded by ``seed + epoch``).
One optimizer step consumes a *global batch* of ``G = batch_size × grad_accum × world_size`` consecutive
positions of that stream; position ``j`` of the global batch goes to micro-step ``j // (B·W)`` and rank
``(j // B) % W``. The union over ranks and micro-steps is the same set of samples whatever ``W``, and every
per-sample random draw is keyed by ``(seed, step, j)``, so N processes see exactly what one process with
the same global batch sees (Goyal et al. 2017's large-batch equivalence, made exact).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

_CPU = torch.device("cpu")


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = _CPU
    strategy: str = "none"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or self.strategy == "fsdp"


def launched_world_size() -> int:
    """World size torchrun announced (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(strategy: str = "auto", backend: str = "auto", device: str = "auto") -> DistEnv:
    """Initialise the default process group when launched by torchrun; return this rank's :class:`DistEnv`.

    ``strategy``: ``auto`` → ``ddp`` when ``WORLD_SIZE > 1`` else ``none``; ``fsdp`` always initialises a
    group (a world of one is allowed). ``device``: ``auto`` → CUDA when available.
    """
    world = launched_world_size()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda requested but CUDA is not available")
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if strategy == "auto":
        strategy = "ddp" if world > 1 else "none"
    if strategy == "none" and world > 1:
        raise RuntimeError(f"distributed.strategy=none but WORLD_SIZE={world}; use ddp or fsdp")
    if strategy in ("ddp", "fsdp") and not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:  # a single process asked for a group: make a local one
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
            os.environ.setdefault("RANK", "0")
            os.environ.setdefault("WORLD_SIZE", "1")
        be = ("nccl" if use_cuda else "gloo") if backend == "auto" else backend
        dist.init_process_group(be, timeout=datetime.timedelta(minutes=10),
                                **({"device_id": dev} if use_cuda else {}))
    return DistEnv(rank=rank, world_size=world, local_rank=local_rank, device=dev, strategy=strategy)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- data order -------------------------------------------------------------------------------------
def epoch_order(num_samples: int, epoch: int, seed: int, shuffle: bool = True) -> list[int]:
    """The sample order of one epoch (a permutation seeded by ``seed + epoch``, or identity)."""
    if not shuffle:
        return list(range(num_samples))
    g = torch.Generator().manual_seed(int(seed) + int(epoch))
    return torch.randperm(num_samples, generator=g).tolist()


def data_position(step: int, global_batch: int, num_samples: int,
                  fixed_batch: bool = False) -> tuple[int, int]:
    """``(epoch, index)`` of the first sample of optimizer step ``step`` in the data stream."""
    pos = 0 if fixed_batch else step * global_batch
    return pos // num_samples, pos % num_samples


def global_batch_indices(step: int, *, global_batch: int, num_samples: int, seed: int, shuffle: bool = True,
                         fixed_batch: bool = False) -> list[tuple[int, int]]:
    """``(epoch, dataset index)`` of every position ``0..G-1`` of the global batch of step ``step``."""
    epoch, index = data_position(step, global_batch, num_samples, fixed_batch)
    out: list[tuple[int, int]] = []
    while len(out) < global_batch:
        order = epoch_order(num_samples, epoch, seed, shuffle)
        take = order[index: index + global_batch - len(out)]
        out.extend((epoch, i) for i in take)
        epoch, index = epoch + 1, 0
    return out


def shard_positions(*, batch_size: int, grad_accum: int, world_size: int, rank: int,
                    micro_step: int) -> list[int]:
    """Positions within the global batch that ``rank`` processes at ``micro_step``."""
    start = (micro_step * world_size + rank) * batch_size
    return list(range(start, start + batch_size))


# -- collectives --------------------------------------------------------------------------------------
def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (identity without a process group)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order (a one-item list without a process group)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (``obj`` itself without a process group)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]
    return obj


# -- model wrapping ------------------------------------------------------------------------------------
def unused_parameters(module: nn.Module, loss: Callable[[], torch.Tensor]) -> list[str]:
    """Names of the trainable parameters of ``module`` that one backward pass of ``loss()`` gives no
    gradient (e.g. the q/k projections of one-token cross-attention, which the UNet short-cuts exactly).

    Gradients are cleared before and after: nothing of the probe remains.
    """
    module.zero_grad(set_to_none=True)
    loss().backward()
    unused = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    module.zero_grad(set_to_none=True)
    return unused


def wrap_model(module: nn.Module, env: DistEnv, *, find_unused: bool = False) -> nn.Module:
    """DDP (Li et al. 2020) or FSDP2 (``fully_shard``, Zhao et al. 2023) around ``module``, else identity.

    ``find_unused``: DDP's ``find_unused_parameters`` (an extra graph traversal every step), needed only when
    some trainable parameter gets no gradient (:func:`unused_parameters`). Call again after a stage change
    (``requires_grad`` changed): DDP registers gradient hooks for the parameters that require grad when it
    is built.
    """
    if env.strategy == "ddp" and env.world_size > 1:
        ids = [env.device.index] if env.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False,
                                                   find_unused_parameters=find_unused)
    if env.strategy == "fsdp":
        from torch.distributed.fsdp import FSDPModule, fully_shard

        if isinstance(module, FSDPModule):  # already sharded (a later stage): requires_grad is enough
            return module
        for child in module.children():
            fully_shard(child)
        fully_shard(module)
        return module
    return module


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor for a (possibly sharded DTensor) ``t`` — collective for DTensors: call on every rank."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def full_state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{name: full_tensor(t)}`` on CPU (collective with FSDP: call on every rank)."""
    return {k: full_tensor(v.detach()).cpu() for k, v in tensors.items()}


def optimizer_state(model: nn.Module, opt: torch.optim.Optimizer, env: DistEnv) -> dict[str, Any]:
    """The optimizer state as plain tensors (FSDP: the gathered full state keyed by parameter name;
    collective)."""
    if env.strategy != "fsdp":
        return opt.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(model, opt, options=options)


def load_optimizer_state(model: nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any],
                         env: DistEnv) -> None:
    """Inverse of :func:`optimizer_state` (FSDP: reshards the full state)."""
    if env.strategy != "fsdp":
        opt.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    # strict=False: parameters that never received a gradient (dead q/k of one-token attention) have no state
    set_optimizer_state_dict(model, opt, state, options=StateDictOptions(full_state_dict=True, strict=False))
