"""Frame-parallel VAE decoding: each rank decodes a contiguous block of the frames, and every rank ends with
the whole video — the pixels one process decodes, with the same ``decode_chunk_size``. The decode follows
guidance, so every rank of the job holds the same latents and :func:`parallelize_decode` splits it over all
of them (under ``cfg,frames`` both guidance branches share it; under ``cfg`` its two ranks do).

* SVD's temporal decoder (``AutoencoderKLTemporal``) mixes frames inside each decoder call: the (3, 1, 1)
  convolutions of its temporal resnets and its ``time_conv_out``, and the GroupNorms of the temporal
  resnets (statistics over ``(C/G, T, H, W)``). The decode runs as one process would — the same chunks of
  ``decode_chunk_size`` frames (plus ``decode_overlap``), the same spatial tiles — and hooks split *each
  decoder call*: its ``T`` frames go ``split_sizes(T, N)`` over the ranks, the temporal layers get the
  one-frame halos and whole-clip statistics of ``vidiff.parallel.frames.FrameSplit`` (the UNet's machinery),
  and the call's pixels are gathered. A call of fewer frames than ranks (a short tail chunk) runs whole on
  every rank: exact, not split.
* Wan's causal 3D VAE: each rank decodes a block of latent frames, with the causal convolutions' tails
  passed from rank to rank (:class:`WanFrameParallelDecode`, below).
* Per-frame autoencoders (SD's image VAE, the patch and flow-warp autoencoders) decode each frame on its
  own, so chunking is moot: each rank decodes its block of every video in one ``decode_latents`` call and
  one gather joins them.

Communication volume. With ``N`` ranks, a call of ``T`` frames split ``s_0 ≥ s_1 ≥ …``, ``b`` videos per
call (the temporal VAE decodes one video per call), ``e`` bytes per element of the VAE's dtype, latents of
``h × w`` decoded to ``H × W = h·f × w·f`` with ``C_out`` channels, rank ``r`` with ``n_r`` neighbours sends

* per temporal resnet with ``C`` channels at ``P`` pixels: two halos ``2·n_r·b·C·P·e`` and two gathers of
  the GroupNorm's moments ``2·(N−1)·2·b·C·s_0·4`` (per channel and frame, float32; 8 bytes for float64);
* ``time_conv_out``'s halo ``n_r·b·C_out·H·W·e``;
* the output gather ``(N−1)·b·s_0·C_out·H·W·e`` (shards padded to the largest) — the whole traffic of a
  per-frame autoencoder, once per decode with ``T`` the video's frames.

The decoder's temporal resnets are ``layers_per_block`` at the latent size (mid block), then
``layers_per_block + 1`` per up block at ``h·2^i × w·2^i`` (:func:`decoder_resnets`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from vidiff.autoencoders import AutoencoderKL, AutoencoderKLTemporal, PatchAutoencoder, VAEConfig
from vidiff.autoencoders.blocks import TemporalResnetBlock
from vidiff.autoencoders.wan_vae import WanVAE
from vidiff.autoencoders.wan_vae_blocks import CausalConv3d, Stream, unpatchify
from vidiff.parallel.comm import Comm, ParallelLayout, split_sizes
from vidiff.parallel.frames import FrameShard, FrameSplit, norm_moments_bytes

__all__ = ["FrameParallelDecode", "WanFrameParallelDecode", "can_split_decode", "decoder_call_bytes",
           "decoder_resnets", "gather_bytes", "parallelize_decode"]

PER_FRAME = (AutoencoderKL, PatchAutoencoder)  # no layer looks across frames (FlowWarp is a PatchAutoencoder)


def can_split_decode(vae: nn.Module) -> bool:
    """Whether ``vae``'s decode can be split by frames exactly (:class:`FrameParallelDecode`; Wan's causal
    VAE: :class:`vidiff.parallel.decode.WanFrameParallelDecode`)."""
    return isinstance(vae, (AutoencoderKLTemporal, WanVAE, *PER_FRAME))


def _uninstall(handle: Any) -> None:
    """Take a decode split off the pipeline :func:`parallelize_decode` installed it on."""
    if handle.pipe is not None and getattr(handle.pipe, "decode_split", None) is handle:
        handle.pipe.decode_split = None
    handle.pipe = None


class FrameParallelDecode(FrameSplit):
    """``vae.decode_latents`` split by frames over the ranks of ``comm``: call it as that method (every rank
    with the same latents); :meth:`remove` takes the hooks out. Outside its calls the VAE is unchanged."""

    def __init__(self, vae: nn.Module, comm: Comm) -> None:
        if not can_split_decode(vae):
            raise ValueError(f"cannot split the decode of a {type(vae).__name__} by frames (known: SVD's temporal "
                             "VAE and per-frame autoencoders)")
        super().__init__(comm)
        self.vae = vae
        self.pipe: Any = None  # the pipeline this decode is installed on (parallelize_decode)
        self.temporal = isinstance(vae, AutoencoderKLTemporal)
        self._active = False
        if self.temporal:
            decoder = vae.decoder
            for module in decoder.modules():
                if isinstance(module, TemporalResnetBlock):
                    self.split_temporal_resnet(module)
            self.split_temporal_conv(decoder.time_conv_out)
            self.hook(decoder.register_forward_pre_hook(self._cut, with_kwargs=True))
            self.hook(decoder.register_forward_hook(self._gather))

    def __call__(self, z: Tensor, chunk_size: int | None = None, overlap: int = 0, *, tiled: bool = False,
                 progress: bool = False, **kwargs: Any) -> Tensor:
        """Scaled latents ``(B, T, C, h, w)`` -> pixels ``(B, T, C_out, H, W)`` on every rank, as
        ``vae.decode_latents`` (``kwargs``: e.g. the flow-warp autoencoder's ``reference``, passed whole)."""
        def decode(latents: Tensor) -> Tensor:
            return self.vae.decode_latents(latents, chunk_size, overlap, tiled=tiled, progress=progress, **kwargs)

        if self.temporal:  # the hooks split each decoder call
            self._active = True
            try:
                return decode(z)
            finally:
                self._active, self.shard = False, None
        return self._by_frames(z, lambda latents, _: decode(latents))

    def between(self, z: Tensor, reference: Tensor, end_reference: Tensor, end_z: Tensor,
                weights: Tensor) -> Tensor:
        """The flow-warp autoencoder's ``decode_latents_between`` split by frames (each frame blends its own two
        warps, so the split is exact); ``weights`` ``(T,)``, one per frame, travel with their frames."""
        return self._by_frames(z, lambda latents, frames: self.vae.decode_latents_between(
            latents, reference, end_reference, end_z, weights[frames]))

    def _by_frames(self, z: Tensor, decode: Callable[[Tensor, slice], Tensor]) -> Tensor:
        """A per-frame decode split by frames: ``decode(latents, frames)`` on this rank's frames (``frames`` their
        slice of T), gathered on every rank; a clip of fewer frames than ranks is decoded whole on each."""
        t = z.shape[1]
        if t < self.comm.size:
            return decode(z, slice(None))
        shard = FrameShard(t, split_sizes(t, self.comm.size), self.comm.rank)
        return self.comm.all_gather_dim(decode(shard.cut(z), slice(shard.lo, shard.hi)), shard.sizes, dim=1)

    def remove(self) -> None:
        """Back to the single-process decode (and off the pipeline it was installed on)."""
        super().remove()
        _uninstall(self)

    def _cut(self, decoder: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]] | None:
        """A decoder call on ``(B·T, C, h, w)`` latents of ``num_frames = T``: this rank's frames only."""
        if not self._active:
            return None
        z, t = args[0], kwargs.get("num_frames", args[1] if len(args) > 1 else None)
        if t < self.comm.size:
            return None  # too few frames to give every rank one: the call runs whole on every rank
        shard = self.shard = FrameShard(t, split_sizes(t, self.comm.size), self.comm.rank)
        local = shard.cut(z.unflatten(0, (-1, t))).flatten(0, 1)
        return (local,), {**kwargs, "num_frames": shard.hi - shard.lo}

    def _gather(self, decoder: nn.Module, args: tuple, out: Tensor) -> Tensor | None:
        """``(B·T_local, C_out, H, W)`` from every rank -> ``(B·T, C_out, H, W)`` on every rank."""
        shard, self.shard = self.shard, None
        if shard is None:
            return None
        local = out.unflatten(0, (-1, shard.hi - shard.lo))
        return self.comm.all_gather_dim(local, shard.sizes, dim=1).flatten(0, 1)


# --- Wan's causal 3D VAE --------------------------------------------------------------------------------
#
# Wan's decoder is causal in time: every temporal convolution (``CausalConv3d``, kernel 3 in time) sees its own
# frame and the two before, zeros before the clip's first frame; one process decodes the latent frames one at a
# time, each layer keeping the last two frames it saw (``vidiff.autoencoders.wan_vae_blocks.Stream``). Split
# over ``N`` ranks, rank ``r`` decodes latent frames ``[lo_r, hi_r)`` (``split_sizes``) as one block, layer by
# layer in step with the others, and each causal convolution gets what the stream would have held: the last
# two input frames of the previous rank's block at that layer (a one-frame block sends one frame behind a zero
# frame, which is the convolution's zero padding). Rank 0 decodes the clip's first frame as one process does
# (the temporal upsamplers pass it through alone); the other ranks' blocks start mid-clip. Then the blocks'
# pixels are gathered, so every rank ends with the whole video. Every rank needs two latent frames at least
# (else the decode runs whole on every rank): a tail then never reaches past the previous rank.
#
# Trade-off: a rank decodes its whole block at once where one process decodes a latent frame at a time, so the
# split buys wall time for memory. Communication per decode and rank ``r < N − 1``: per causal convolution
# with ``C`` input channels at ``H × W``, ``2·b·C·H·W·e`` (its last two frames to rank ``r + 1``), and the
# pixel gather ``(N − 1)·b·F_0·3·H·W·e`` with ``F_0`` rank 0's output frames (shards padded to the largest).


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
        _uninstall(self)

    def _halo(self, conv: nn.Module, args: tuple) -> None:
        if self._stream is not None and len(args) > 1 and args[1] is self._stream:
            self._stream.halo(conv, args[0])


def parallelize_decode(pipe: Any, layout: ParallelLayout) -> FrameParallelDecode | WanFrameParallelDecode:
    """Split ``pipe``'s VAE decode over every rank of ``layout`` (the latents are the same on all of them once
    guidance is combined): the pipeline decodes through the returned handle (its ``decode_split``) until
    ``remove()``. ValueError for an autoencoder it cannot split."""
    split = WanFrameParallelDecode if isinstance(pipe.vae, WanVAE) else FrameParallelDecode
    handle = split(pipe.vae, layout.world_comm)
    handle.pipe, pipe.decode_split = pipe, handle
    return handle


def decoder_resnets(cfg: VAEConfig, h: int, w: int) -> list[tuple[int, int]]:
    """``(channels, pixels)`` of every temporal resnet of SVD's temporal decoder on ``h × w`` latents."""
    rev = list(reversed(cfg.block_out_channels))
    resnets = [(rev[0], h * w)] * cfg.layers_per_block  # mid block
    for i, channels in enumerate(rev):  # up block i runs at 2^i times the latent size, then upsamples
        resnets += [(channels, h * w * 4 ** i)] * (cfg.layers_per_block + 1)
    return resnets


def gather_bytes(*, batch: int, frames: int, channels: int, pixels: int, ranks: int, elem: int = 4) -> int:
    """Bytes one rank sends gathering ``(batch, frames, channels, pixels)`` split by frames (padded shards)."""
    return (ranks - 1) * batch * split_sizes(frames, ranks)[0] * channels * pixels * elem


def decoder_call_bytes(cfg: VAEConfig, *, batch: int, frames: int, h: int, w: int, ranks: int, rank: int,
                       elem: int = 4) -> int:
    """Bytes rank ``rank`` (of ``ranks``) sends in one temporal-decoder call of ``frames`` frames of ``h × w``
    latents (see the module docstring); 0 for a call that is not split."""
    if ranks == 1 or frames < ranks:
        return 0
    b, n, e = batch, ranks, elem
    neighbours = (rank > 0) + (rank < n - 1)
    resnets = decoder_resnets(cfg, h, w)
    total = sum(2 * neighbours * b * c * p * e + 2 * norm_moments_bytes(batch=b, frames=frames, ranks=n, channels=c,
                                                                          elem=e) for c, p in resnets)
    pixels = h * w * cfg.downsample_factor ** 2
    total += neighbours * b * cfg.out_channels * pixels * e  # time_conv_out
    return total + gather_bytes(batch=b, frames=frames, channels=cfg.out_channels, pixels=pixels, ranks=n, elem=e)
