"""Sequence parallelism for the Wan-architecture DiT: DeepSpeed-Ulysses (Jacobs et al. 2023, "DeepSpeed Ulysses:
System Optimizations for Enabling Training of Extreme Long Sequence Transformer Models", Sec. 3), installed as
hooks (``WanTransformer3D``'s code is unchanged).

Each rank of the frame group holds a contiguous block of the latent: whole latent frames when there are at
least as many frames (in temporal patches) as ranks (``split_sizes``: 21 on 2 ranks is 11 + 10, 7 on 3 is
3 + 2 + 2), else whole patch rows of every frame. Its tokens (the 3D patches of that block) go through every
per-token layer — patch embedding, norms, modulation, q/k/v projections, cross-attention to the text and
image tokens (queries local, the context whole on every rank), the MLP, the output projection — alone. Only
self-attention looks across tokens, and it gets the two exchanges of Ulysses:

* before the kernel, one all-to-all from sequence shards to head shards: rank ``j`` receives heads
  ``[j·h/N, (j+1)·h/N)`` of every rank's tokens (q, k and v in one exchange) and attends over all tokens;
* after it, the inverse all-to-all brings every rank its own tokens with all heads back.

Queries and keys are rotated before the exchange, with the 3D RoPE angles of the tokens' global positions
(a rank's rows of the whole grid's angles), so the order in which the shards meet does not matter. Per-frame
inputs — ``c_noise (B, T)`` (adaLN modulation per latent frame) and ``cond.concat`` — are cut to the local
block, and the output is gathered so every rank ends the call with the whole ``(B, T, C, H, W)``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from vidiff.networks.dit_wan import WanBlock, WanConfig, WanTransformer3D, rope_angles
from vidiff.parallel.comm import Comm, split_sizes
from vidiff.parallel.frames import FrameShard

__all__ = ["SequenceParallelDiT", "dit_config", "token_split"]


def dit_config(network: nn.Module) -> WanConfig | None:
    """The config of the one Wan transformer in ``network`` (itself or wrapped, as ``VideoDiT``); None if none."""
    found = [m.config for m in network.modules() if isinstance(m, WanTransformer3D)]
    if len(found) > 1:
        raise ValueError(f"{type(network).__name__} holds {len(found)} Wan transformers; parallelize each one")
    return found[0] if found else None


def token_split(cfg: WanConfig, frames: int, height: int, ranks: int) -> tuple[int, list[int]]:
    """``(dim, sizes)``: the latent ``(B, T, C, H, W)`` is split along ``dim`` (1: frames, 3: rows) into blocks
    of ``sizes[r]`` latent entries, whole patches each; frames when there are at least ``ranks`` temporal
    patches, else patch rows. ValueError when neither has enough."""
    pt, ph, _ = cfg.patch_size
    for dim, length, unit in ((1, frames, pt), (3, height, ph)):
        if length // unit >= ranks:
            return dim, [s * unit for s in split_sizes(length // unit, ranks)]
    raise ValueError(f"sequence parallelism over {ranks} ranks needs at least {ranks} latent frames or patch rows; "
                     f"got {frames} frames of {height // ph} rows")


def local_tokens(cfg: WanConfig, frames: int, height: int, width: int, dim: int, size: int) -> int:
    """Tokens of a block of ``size`` latent entries along ``dim`` (see :func:`token_split`)."""
    pt, ph, pw = cfg.patch_size
    f, h = (size, height) if dim == 1 else (frames, size)
    return (f // pt) * (h // ph) * (width // pw)


class SequenceParallelDiT:
    """Split a Wan DiT's tokens over the ranks of ``comm`` (Ulysses) until :meth:`remove`.

    The network is called as before, with the whole latent, on every rank; the hooks give each rank its block
    and return the whole result. Outside calls of the network (and with a group of one) nothing changes.
    """

    def __init__(self, network: nn.Module, comm: Comm) -> None:
        cfg = dit_config(network)
        if cfg is None:
            raise ValueError(f"sequence parallelism splits a Wan DiT's tokens; {type(network).__name__} has none")
        heads = cfg.num_attention_heads
        if heads % comm.size:
            raise ValueError(f"sequence parallelism (Ulysses) splits the attention heads over the ranks: "
                             f"num_attention_heads={heads} does not divide over {comm.size} ranks")
        self.cfg, self.comm = cfg, comm
        self.shard: FrameShard | None = None
        self._dim = 1
        self._tokens: list[int] = []  # tokens of every rank's block
        self._rope: tuple[Tensor, Tensor] | None = None
        self._grid = (0, 0, 0)
        self._handles: list[RemovableHandle] = []
        for module in network.modules():
            if isinstance(module, WanBlock):
                self._handles += [module.register_forward_pre_hook(self._global_rope),
                                  module.attn1.kernel.register_forward_pre_hook(self._to_head_shards),
                                  module.attn1.kernel.register_forward_hook(self._to_token_shards)]

    def remove(self) -> None:
        """Take every hook out."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    # --- the network call: cut the inputs, gather the output --------------------------------------------

    def local_inputs(self, x: Tensor, c_noise: Tensor, cond: Any,
                     indicator: Tensor | None) -> tuple[Tensor, Tensor, Any, Tensor | None]:
        """Begin a call on ``x (B, T, C, H, W)``: this rank's block of ``x``, ``cond.concat`` and per-frame
        ``c_noise``."""
        _, t, _, h, w = x.shape
        pt, ph, pw = self.cfg.patch_size
        if t % pt or h % ph or w % pw:
            raise ValueError(f"latent (T, H, W) = {(t, h, w)} is not divisible by patch_size {self.cfg.patch_size}")
        dim, sizes = token_split(self.cfg, t, h, self.comm.size)
        shard = self.shard = FrameShard(x.shape[dim], sizes, self.comm.rank)
        self._dim, self._grid, self._rope = dim, (t // pt, h // ph, w // pw), None
        self._tokens = [local_tokens(self.cfg, t, h, w, dim, s) for s in sizes]
        concat = getattr(cond, "concat", None)  # (B, T, C, H, W), or (B, C, H, W) one per video
        concat_dim = None if concat is None else dim if concat.ndim == 5 else 2 if dim == 3 else None
        if concat_dim is not None:
            cond = replace(cond, concat=shard.cut(concat, concat_dim))  # a dataclass: Cond, TextCond
        if dim == 1 and c_noise.ndim == 2:
            c_noise = shard.cut(c_noise)  # per-frame timesteps: the local frames' adaLN modulation
        return shard.cut(x, dim), c_noise, cond, indicator

    def gather_output(self, out: Tensor) -> Tensor:
        """End a call: this rank's block of ``(B, T, C, H, W)`` from every rank -> the whole on every rank."""
        shard, self.shard, self._rope = self.shard, None, None
        return self.comm.all_gather_dim(out, shard.sizes, dim=self._dim)

    # --- hooks --------------------------------------------------------------------------------------------

    def _global_rope(self, block: nn.Module, args: tuple) -> tuple | None:
        """The 3D RoPE angles of the local tokens' global positions (the network computed its block's grid)."""
        if self.shard is None:
            return None
        if self._rope is None:
            axis, unit = (0, self.cfg.patch_size[0]) if self._dim == 1 else (1, self.cfg.patch_size[1])
            lo, n = self.shard.lo // unit, self.shard.sizes[self.shard.rank] // unit
            angles = rope_angles(self.cfg.attention_head_dim, self._grid, device=args[0].device)
            self._rope = tuple(a.unflatten(0, self._grid).narrow(axis, lo, n).flatten(0, 2) for a in angles)
        return (*args[:4], self._rope)

    def _to_head_shards(self, kernel: nn.Module, args: tuple) -> tuple | None:
        """q, k, v ``(B, h, L_local, d)`` -> ``(B, h/N, L, d)``: all tokens of this rank's heads."""
        if self.shard is None:
            return None
        qkv = torch.stack(args)  # (3, B, h, L_local, d)
        _, b, heads, _, d = qkv.shape
        g = heads // self.comm.size
        shapes = [(3, b, g, n, d) for n in self._tokens]
        parts = self.comm.all_to_all(list(qkv.split(g, dim=2)), shapes)
        return tuple(torch.cat(parts, dim=3).unbind(0))

    def _to_token_shards(self, kernel: nn.Module, args: tuple, out: Tensor) -> Tensor | None:
        """``(B, h/N, L, d)`` -> ``(B, h, L_local, d)``: the inverse of :meth:`_to_head_shards`."""
        if self.shard is None:
            return None
        b, g, _, d = out.shape
        mine = self._tokens[self.shard.rank]
        parts = self.comm.all_to_all(list(out.split(self._tokens, dim=2)), [(b, g, mine, d)] * self.comm.size)
        return torch.cat(parts, dim=1)
