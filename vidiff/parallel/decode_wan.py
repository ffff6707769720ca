"""Frame-parallel decoding for Wan's causal 3D VAE: each rank decodes a contiguous block of latent frames.

Wan's decoder is causal in time: every temporal convolution (``CausalConv3d``, kernel 3 in time) sees its own
frame and the two before, zeros before the clip's first frame; one process decodes the latent frames one at a
time, each layer keeping the last two frames it saw (``vidiff.autoencoders.wan_vae_blocks.Stream``). Split
over ``N`` ranks, rank ``r`` decodes latent frames ``[lo_r, hi_r)`` (``split_sizes``) as one block, layer by
layer in step with the others, and each causal convolution gets what the stream would have held: the last
two input frames of the previous rank's block at that layer (a one-frame block sends one frame behind a zero
frame, which is the convolution's zero padding). Rank 0 decodes the clip's first frame as one process does
(the temporal upsamplers pass it through alone); the other ranks' blocks start mid-clip. Then the blocks'
pixels are gathered, so every rank ends with the whole video. Every rank needs two latent frames at least
(else the decode runs whole on every rank): a tail then never reaches past the previous rank.

Trade-off: a rank decodes its whole block at once where one process decodes a latent frame at a time, so the
split buys wall time for memory. Communication per decode and rank ``r < N − 1``: per causal convolution
with ``C`` input channels at ``H × W``, ``2·b·C·H·W·e`` (its last two frames to rank ``r + 1``), and the
pixel gather ``(N − 1)·b·F_0·3·H·W·e`` with ``F_0`` rank 0's output frames (shards padded to the largest).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from vidiff.autoencoders.wan_vae import WanVAE
from vidiff.autoencoders.wan_vae_blocks import CausalConv3d, Stream, unpatchify
from vidiff.parallel.comm import Comm, split_sizes

__all__ = ["WanFrameParallelDecode"]


class _BlockStream(Stream):
    """The stream of a rank's block: every layer has seen earlier frames (rank > 0), and each causal
    convolution's tail is exchanged with the neighbouring ranks as the layer runs."""

    def __init__(self, comm: Comm, decoder: nn.Module) -> None:
        super().__init__()
        self.comm = comm
        if comm.rank > 0:  # mid-clip: no layer is at the clip's first frame
            for module in decoder.modules():
                if not isinstance(module, CausalConv3d):
                    self.tails[id(module)] = torch.empty(0)

    def halo(self, conv: CausalConv3d, x: Tensor) -> None:
        """Before ``conv`` runs on this block's ``x``: send its last input frames on, take the previous rank's."""
        k = conv.causal_pad
        tail = x[:, :, -k:]
        if tail.shape[2] < k:  # a shorter block: zero frames in front, as the convolution's own padding
            tail = torch.cat([tail.new_zeros(*tail.shape[:2], k - tail.shape[2], *tail.shape[3:]), tail], dim=2)
        prev = self.comm.shift_right(tail)
        if prev is not None:
            self.tails[id(conv)] = prev

    def put(self, layer: nn.Module, tail: Tensor) -> None:
        """One block per rank: nothing is needed after it."""


class WanFrameParallelDecode:
    """``vae.decode_latents`` of a :class:`WanVAE` split by latent frames over the ranks of ``comm`` (call it
    as that method, every rank with the same latents; every rank gets the whole video)."""

    def __init__(self, vae: WanVAE, comm: Comm) -> None:
        self.vae, self.comm = vae, comm
        self.pipe: Any = None
        self._stream: _BlockStream | None = None
        self._handles = [m.register_forward_pre_hook(self._halo) for m in vae.decoder.modules()
                         if isinstance(m, CausalConv3d) and m.causal_pad]

    def __call__(self, z: Tensor, chunk_frames: int | None = 1) -> Tensor:
        """Normalised latents ``(B, t, z, h, w)`` -> pixels ``(B, 1 + f(t − 1), C, H, W)`` in [−1, 1]."""
        t, n = z.shape[1], self.comm.size
        if t < 2 * n:  # a rank with one latent frame would need a tail from two ranks back: decode whole
            return self.vae.decode_latents(z, chunk_frames)
        sizes = split_sizes(t, n)
        lo = sum(sizes[: self.comm.rank])
        local = self.vae.post_quant_conv(self.vae.denormalize(z)[:, lo:lo + sizes[self.comm.rank]].transpose(1, 2))
        self._stream = _BlockStream(self.comm, self.vae.decoder)
        try:
            out = self.vae.decoder(local, self._stream)
        finally:
            self._stream = None
        out = unpatchify(out, self.vae.config.patch_size).clamp(-1.0, 1.0).transpose(1, 2)
        f = self.vae.config.temporal_factor
        frames = [1 + f * (sizes[0] - 1)] + [f * s for s in sizes[1:]]
        return self.comm.all_gather_dim(out, frames, dim=1)

    def remove(self) -> None:
        """Back to the single-process decode (and off the pipeline it was installed on)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self.pipe is not None and getattr(self.pipe, "decode_split", None) is self:
            self.pipe.decode_split = None
        self.pipe = None

    def _halo(self, conv: nn.Module, args: tuple) -> None:
        if self._stream is not None and len(args) > 1 and args[1] is self._stream:
            self._stream.halo(conv, args[0])
