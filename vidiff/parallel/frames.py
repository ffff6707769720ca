"""Frame parallelism for the spatio-temporal UNet, installed as hooks (the UNet's code is unchanged).

Each rank of the frame group holds a contiguous block of frames (``split_sizes``: 25 on 2 ranks is 13 + 12,
7 on 3 is 3 + 2 + 2). Everything per frame — every 2D convolution, spatial attention, the per-frame norms —
runs on the local frames alone. Only four kinds of layer look across frames, and each gets the exchange that
makes it exact:

* temporal attention (``TemporalTransformerBlock``): one all-to-all in, from frame shards to pixel shards
  (every rank then holds all frames of ``HW/N`` pixels and attends over all of them), one all-to-all out;
* the temporal (3, 1, 1) convolutions: the neighbours' one-frame halos are put around the local frames
  (zeros at the ends of the clip, which is the convolution's own zero padding), the halo outputs dropped;
* GroupNorm over ``(C/G, T, H, W)`` in the temporal resnets: every rank gathers the moments of each channel
  of each frame and merges them as one process does (``vidiff.utils.norms``), so it normalises with the
  statistics of the whole clip, to the bit;
* the learned frame positions: the sinusoid of the global frame index (``time_pos_embed``).

Per-frame inputs — ``c_noise (B, T)``, ``cond.vector (B, T, D)``, ``cond.concat (B, T, C, H, W)``,
``image_only_indicator (B, T)`` — are cut to the local frames by their global indices, and the output is
gathered so every rank ends the call with the whole ``(B, T, C, H, W)``. The halos and the GroupNorm
statistics live in :class:`FrameSplit`, which SVD's VAE decoder reuses (``vidiff.parallel.decode``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from vidiff.networks.resnet import TemporalResnetBlock
from vidiff.networks.transformer import SpatioTemporalTransformer, TemporalTransformerBlock
from vidiff.parallel.comm import Comm, split_sizes
from vidiff.utils import timestep_embedding
from vidiff.utils.norms import centered_frames, normalize_centered

__all__ = ["FrameParallelUNet", "FrameShard", "FrameSplit", "norm_moments_bytes"]


def norm_moments_bytes(*, batch: int, frames: int, ranks: int, channels: int, elem: int = 4) -> int:
    """Bytes one rank sends gathering one GroupNorm's per-frame moments ``(2, B, C, T_local)`` (float32; float64
    for a float64 network), padded to the largest shard as the all-gather needs."""
    return (ranks - 1) * 2 * batch * channels * split_sizes(frames, ranks)[0] * (8 if elem == 8 else 4)


@dataclass
class FrameShard:
    """The frames of one network call: ``sizes[r]`` frames on rank ``r``, this rank's are ``[lo, hi)``."""

    frames: int
    sizes: list[int]
    rank: int

    @property
    def lo(self) -> int:
        return sum(self.sizes[: self.rank])

    @property
    def hi(self) -> int:
        return self.lo + self.sizes[self.rank]

    def cut(self, x: Tensor | None, dim: int = 1) -> Tensor | None:
        """The local frames of a per-frame tensor (one whose ``dim`` has ``frames`` entries), else ``x``."""
        if x is None or x.ndim <= dim or x.shape[dim] != self.frames:
            return x
        return x.narrow(dim, self.lo, self.hi - self.lo)


class _GroupNormOverFrames(nn.Module):
    """GroupNorm of ``(B, C, T_local, H, W)`` with the statistics of all frames (the wrapped norm's weights);
    the wrapped norm itself while the owner holds no shard (a call that is not split)."""

    def __init__(self, norm: nn.GroupNorm, owner: FrameSplit) -> None:
        super().__init__()
        self.weight, self.bias = norm.weight, norm.bias  # the same parameters: state-dict keys unchanged
        self.inner = [norm]  # not a submodule: restored on remove()
        self.owner = owner

    def forward(self, x: Tensor) -> Tensor:
        norm, shard = self.inner[0], self.owner.shard
        if shard is None:
            return norm(x)
        d, local = centered_frames(x)  # local (2, B, C, T_local): depends on these frames alone
        moments = self.owner.comm.all_gather_dim(local, shard.sizes, dim=3)  # (2, B, C, T), in frame order
        return normalize_centered(d, local[0], moments, norm).reshape(x.shape).to(x.dtype)


class FrameSplit:
    """The exchanges that let layers mixing frames run on this rank's contiguous block of them: one-frame
    halos around temporal convolutions, GroupNorm statistics of the whole clip. The hooks act only while
    :attr:`shard` is set (a subclass sets it for each call it splits); :meth:`remove` takes them out."""

    def __init__(self, comm: Comm) -> None:
        self.comm = comm
        self.shard: FrameShard | None = None
        self._handles: list[RemovableHandle] = []
        self._norms: list[tuple[nn.Module, str, nn.Module]] = []

    def hook(self, handle: RemovableHandle) -> None:
        """Keep ``handle`` to take out on :meth:`remove`."""
        self._handles.append(handle)

    def split_temporal_conv(self, conv: nn.Conv3d) -> None:
        """A ``(k, 1, 1)`` convolution over ``(B, C, T, H, W)``, zero-padded in time: halos in, halo outputs out."""
        self.hook(conv.register_forward_pre_hook(self._halo_in))
        self.hook(conv.register_forward_hook(self._halo_out))

    def split_temporal_resnet(self, block: nn.Module) -> None:
        """A temporal resnet (``norm1, conv1, norm2, conv2``: the UNet's or SVD's VAE decoder's): halos around
        both convolutions, whole-clip statistics in both GroupNorms."""
        for conv in (block.conv1, block.conv2):
            self.split_temporal_conv(conv)
        for name in ("norm1", "norm2"):
            norm = getattr(block, name)
            self._norms.append((block, name, norm))
            setattr(block, name, _GroupNormOverFrames(norm, self))

    def remove(self) -> None:
        """Take every hook out and put the original norms back."""
        for handle in self._handles:
            handle.remove()
        for module, name, norm in self._norms:
            setattr(module, name, norm)
        self._handles, self._norms = [], []

    def _halo_in(self, conv: nn.Conv3d, args: tuple) -> tuple | None:
        if self.shard is None:
            return None
        x = args[0]  # (B, C, T_local, H, W)
        k = conv.kernel_size[0] // 2
        prev, nxt = self.comm.exchange_halos(x[:, :, :k], x[:, :, -k:])
        zeros = x.new_zeros(*x.shape[:2], k, *x.shape[3:])  # the clip's ends: the conv's zero padding
        return (torch.cat([zeros if prev is None else prev, x, zeros if nxt is None else nxt], dim=2),)

    def _halo_out(self, conv: nn.Conv3d, args: tuple, out: Tensor) -> Tensor | None:
        if self.shard is None:
            return None
        k = conv.kernel_size[0] // 2
        return out[:, :, k:-k]


class FrameParallelUNet(FrameSplit):
    """Split a ``UNetSpatioTemporal``'s frames over the ranks of ``comm`` until :meth:`remove`.

    The UNet is called as before, with every frame, on every rank; the hooks give each rank its share and
    return the whole result. Outside calls of the UNet (and with a group of one) nothing changes.
    """

    def __init__(self, unet: nn.Module, comm: Comm) -> None:
        super().__init__(comm)
        self.unet = unet
        self._hw = 0
        for module in unet.modules():
            if isinstance(module, TemporalResnetBlock):
                self.split_temporal_resnet(module)
            elif isinstance(module, TemporalTransformerBlock):
                self.hook(module.register_forward_pre_hook(self._to_pixel_shards))
                self.hook(module.register_forward_hook(self._to_frame_shards))
            elif isinstance(module, SpatioTemporalTransformer):
                self.hook(module.time_pos_embed.register_forward_pre_hook(self._global_positions))

    # --- the network call: cut the inputs, gather the output --------------------------------------------

    def local_inputs(self, x: Tensor, c_noise: Tensor, cond: object,
                     indicator: Tensor | None) -> tuple[Tensor, Tensor, object, Tensor | None]:
        """Begin a call on ``x (B, T, ...)``: this rank's frames of every per-frame input. A call of fewer
        frames than ranks (a short in-between window of a long video) runs whole on every rank: exact, not split."""
        t = x.shape[1]
        if t < self.comm.size:
            self.shard = None
            return x, c_noise, cond, indicator
        shard = self.shard = FrameShard(t, split_sizes(t, self.comm.size), self.comm.rank)
        cond = replace(cond, vector=shard.cut(cond.vector), concat=shard.cut(cond.concat))
        return shard.cut(x), shard.cut(c_noise) if c_noise.ndim == 2 else c_noise, cond, shard.cut(indicator)

    def gather_output(self, out: Tensor) -> Tensor:
        """End a call: ``(B, T_local, ...)`` from every rank -> ``(B, T, ...)`` on every rank."""
        shard, self.shard = self.shard, None
        if shard is None:  # the call ran whole
            return out
        return self.comm.all_gather_dim(out, shard.sizes, dim=1)

    # --- hooks --------------------------------------------------------------------------------------------

    def _global_positions(self, module: nn.Module, args: tuple) -> tuple | None:
        if self.shard is None:
            return None
        sinusoid = args[0]  # (T_local, C): the sinusoid of the local indices 0..T_local-1
        frames = torch.arange(self.shard.lo, self.shard.hi, device=sinusoid.device)
        return (timestep_embedding(frames, sinusoid.shape[1]).to(sinusoid.dtype),)

    def _to_pixel_shards(self, block: nn.Module, args: tuple) -> tuple | None:
        """``(B·T_local, HW, C)`` -> ``(B·T, HW_local, C)``: all frames of this rank's pixels."""
        if self.shard is None:
            return None
        x, context, _ = args
        shard, n = self.shard, self.comm.size
        hw, c = x.shape[1:]
        self._hw = hw  # temporal blocks do not nest: the way back reads it
        x = x.unflatten(0, (-1, shard.sizes[shard.rank]))  # (B, T_l, HW, C)
        b = x.shape[0]
        pixels = split_sizes(hw, n)
        chunks = list(x.split(pixels, dim=2))
        parts = self.comm.all_to_all(chunks, [(b, shard.sizes[i], pixels[shard.rank], c) for i in range(n)])
        return torch.cat(parts, dim=1).flatten(0, 1), context, shard.frames

    def _to_frame_shards(self, block: nn.Module, args: tuple, out: Tensor) -> Tensor | None:
        """``(B·T, HW_local, C)`` -> ``(B·T_local, HW, C)``: the inverse of :meth:`_to_pixel_shards`."""
        if self.shard is None:
            return None
        shard, n = self.shard, self.comm.size
        c = out.shape[-1]
        out = out.unflatten(0, (-1, shard.frames))  # (B, T, HW_l, C)
        b, hw_local = out.shape[0], out.shape[2]
        pixels = split_sizes(self._hw, n)
        assert pixels[shard.rank] == hw_local
        chunks = list(out.split(shard.sizes, dim=1))
        parts = self.comm.all_to_all(chunks, [(b, shard.sizes[shard.rank], pixels[i], c) for i in range(n)])
        return torch.cat(parts, dim=2).flatten(0, 1)
