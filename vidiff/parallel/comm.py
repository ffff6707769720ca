"""The collectives parallel inference uses, behind one wrapper that counts the bytes each rank sends.

Every exchange of ``vidiff.parallel`` goes through a :class:`Comm`, so the count is the whole traffic and a
test can hold it to the closed-form volume (``vidiff.parallel.volume``): "one exchange per step" is checked
by bytes, not by reading the code. Counted is the payload this rank sends to other ranks (what it keeps for
itself is not traffic): ``(G−1)·n`` for an all-gather of ``n`` bytes in a group of ``G``, the off-diagonal
blocks of an all-to-all, the bytes of each point-to-point send.

The layout of a job: ``world = cfg × frames`` ranks; rank ``r`` is guidance branch ``r // frames`` (0: the
conditional half, 1: the unconditional half) and frame shard ``r % frames``.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor

MODES = ("cfg", "frames", "cfg,frames")

__all__ = ["MODES", "Comm", "ParallelLayout", "parse_mode", "split_sizes"]


def parse_mode(text: str) -> tuple[bool, bool]:
    """``"cfg"``, ``"frames"``, ``"cfg,frames"`` (either order) -> ``(cfg, frames)``; ValueError otherwise."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or len(set(parts)) != len(parts) or set(parts) - {"cfg", "frames"}:
        raise ValueError(f"--parallel must be one of {', '.join(MODES)}; got {text!r}")
    return "cfg" in parts, "frames" in parts


def split_sizes(n: int, parts: int) -> list[int]:
    """``n`` items over ``parts`` ranks as evenly as possible, the larger shares first (25 on 2: 13, 12)."""
    return [n // parts + (i < n % parts) for i in range(parts)]


@dataclass
class Comm:
    """A process group (or one rank alone) with counting collectives; ``sent`` is this rank's bytes so far.

    ``ranks``: the global ranks of the group in group order; ``group``: the torch process group (None for
    the default group or a group of one).
    """

    ranks: Sequence[int]
    group: dist.ProcessGroup | None = None
    sent: int = 0
    calls: dict[str, int] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.ranks)

    @property
    def rank(self) -> int:
        """This process's index in the group."""
        return list(self.ranks).index(dist.get_rank()) if self.size > 1 else 0

    def _count(self, kind: str, nbytes: int) -> None:
        self.sent += nbytes
        self.calls[kind] = self.calls.get(kind, 0) + 1

    def all_gather(self, x: Tensor) -> list[Tensor]:
        """Every rank's ``x`` (same shape and dtype on every rank), in group order."""
        if self.size == 1:
            return [x]
        x = x.contiguous()
        out = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(out, x, group=self.group)
        self._count("all_gather", (self.size - 1) * x.numel() * x.element_size())
        return out

    def all_gather_dim(self, x: Tensor, sizes: Sequence[int], dim: int) -> Tensor:
        """Concatenate along ``dim`` the shards of sizes ``sizes`` (rank ``i`` holds ``sizes[i]``); uneven
        shards travel padded to the largest, as the all-gather needs equal buffers."""
        if self.size == 1:
            return x
        pad = max(sizes) - x.shape[dim]
        if pad:
            x = torch.cat([x, x.new_zeros(*x.shape[:dim], pad, *x.shape[dim + 1:])], dim=dim)
        parts = self.all_gather(x)
        return torch.cat([p.narrow(dim, 0, n) for p, n in zip(parts, sizes)], dim=dim)

    def all_to_all(self, chunks: Sequence[Tensor], shapes: Sequence[Sequence[int]]) -> list[Tensor]:
        """Send ``chunks[j]`` to rank ``j``; receive from rank ``i`` a tensor of shape ``shapes[i]``."""
        if self.size == 1:
            return [chunks[0]]
        me = self.rank
        send = torch.cat([c.reshape(-1) for c in chunks])
        recv_sizes = [int(torch.Size(s).numel()) for s in shapes]
        recv = send.new_empty(sum(recv_sizes))
        dist.all_to_all_single(recv, send, output_split_sizes=recv_sizes,
                               input_split_sizes=[c.numel() for c in chunks], group=self.group)
        self._count("all_to_all", sum(c.numel() for j, c in enumerate(chunks) if j != me) * send.element_size())
        return [r.reshape(s) for r, s in zip(recv.split(recv_sizes), shapes)]

    def exchange_halos(self, first: Tensor, last: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """Send ``first`` to the previous rank and ``last`` to the next; return what they sent here
        ``(from previous, from next)`` (None at the ends of the group)."""
        me, ops, prev, nxt = self.rank, [], None, None
        first, last = first.contiguous(), last.contiguous()
        if me > 0:
            prev = torch.empty_like(last)
            ops += [dist.P2POp(dist.isend, first, self.ranks[me - 1], self.group),
                    dist.P2POp(dist.irecv, prev, self.ranks[me - 1], self.group)]
        if me < self.size - 1:
            nxt = torch.empty_like(first)
            ops += [dist.P2POp(dist.isend, last, self.ranks[me + 1], self.group),
                    dist.P2POp(dist.irecv, nxt, self.ranks[me + 1], self.group)]
        for req in dist.batch_isend_irecv(ops) if ops else []:
            req.wait()
        if ops:
            self._count("halo", ((me > 0) * first.numel() + (me < self.size - 1) * last.numel()) * first.element_size())
        return prev, nxt

    def shift_right(self, x: Tensor) -> Tensor | None:
        """Send ``x`` to the next rank; return what the previous rank sent (the same shape; None on rank 0)."""
        me, ops, prev = self.rank, [], None
        x = x.contiguous()
        if me > 0:
            prev = torch.empty_like(x)
            ops.append(dist.P2POp(dist.irecv, prev, self.ranks[me - 1], self.group))
        if me < self.size - 1:
            ops.append(dist.P2POp(dist.isend, x, self.ranks[me + 1], self.group))
            self._count("halo", x.numel() * x.element_size())
        for req in dist.batch_isend_irecv(ops) if ops else []:
            req.wait()
        return prev


@dataclass
class ParallelLayout:
    """Which ranks split what: ``cfg`` (2 guidance branches or 1) × ``frames`` (frame shards) = world.

    ``frame_comm`` joins the ranks of this rank's guidance branch, ``cfg_comm`` the two ranks that share
    this rank's frame shard (a group of one without CFG parallelism), ``world_comm`` every rank (the VAE
    decode, which follows guidance and so splits over all of them).
    """

    cfg: int
    frames: int
    frame_comm: Comm
    cfg_comm: Comm
    world_comm: Comm

    @property
    def world_size(self) -> int:
        return self.cfg * self.frames

    @property
    def mode(self) -> str:
        return ",".join(m for m, n in (("cfg", self.cfg), ("frames", self.frames)) if n > 1) or "none"

    @property
    def is_writer(self) -> bool:
        """Rank 0 writes the outputs; every rank ends with the same latents."""
        return not dist.is_initialized() or dist.get_rank() == 0

    @property
    def sent(self) -> int:
        """Bytes this rank has sent so far, over all groups."""
        return self.frame_comm.sent + self.cfg_comm.sent + self.world_comm.sent

    def reset_counts(self) -> None:
        for comm in (self.frame_comm, self.cfg_comm, self.world_comm):
            comm.sent, comm.calls = 0, {}

    def describe(self) -> dict[str, int | str]:
        """What a sidecar records."""
        return {"mode": self.mode, "world_size": self.world_size, "cfg_ranks": self.cfg, "frame_ranks": self.frames}

    @classmethod
    def build(cls, cfg: bool, frames: bool) -> ParallelLayout:
        """Split the initialised default group (every rank must call this, in the same order)."""
        world = dist.get_world_size() if dist.is_initialized() else 1
        n_cfg = 2 if cfg else 1
        if world < 2:
            raise ValueError("parallel inference needs a distributed launch: run under "
                             "torchrun --nproc-per-node N (N >= 2)")
        if cfg and not frames and world != 2:
            raise ValueError(f"--parallel cfg splits the two guidance halves over exactly 2 processes, got {world}")
        if cfg and frames and world % 2:
            raise ValueError(f"--parallel cfg,frames needs an even number of processes (2 × frame ranks), got {world}")
        n_frames = world // n_cfg
        rank = dist.get_rank()
        frame_comm = cfg_comm = None
        # new_group must be called by every rank for every group, in the same order
        for branch in range(n_cfg):
            ranks = list(range(branch * n_frames, (branch + 1) * n_frames))
            group = _group(ranks)
            if rank in ranks:
                frame_comm = Comm(ranks, group)
        for shard in range(n_frames):
            ranks = [branch * n_frames + shard for branch in range(n_cfg)]
            group = _group(ranks)
            if rank in ranks:
                cfg_comm = Comm(ranks, group)
        assert frame_comm is not None and cfg_comm is not None
        return cls(n_cfg, n_frames, frame_comm, cfg_comm, Comm(list(range(world))))


def _group(ranks: list[int]) -> dist.ProcessGroup | None:
    """A process group of ``ranks`` (None, the default group, when it is the whole world; alone: no group)."""
    if len(ranks) == dist.get_world_size():
        return None
    return dist.new_group(ranks) if len(ranks) > 1 else None


def init_from_env(device: str = "cpu") -> bool:
    """Initialise the default process group when launched by torchrun (``WORLD_SIZE`` > 1); True if it is.

    gloo on CPU, nccl on CUDA (each rank on ``cuda:LOCAL_RANK``).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return False
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=10))
    return True
