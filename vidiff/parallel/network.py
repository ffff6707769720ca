"""Exact multi-process inference of a video network, installed on the network itself.

:func:`parallelize` hooks a network ``F(x, c_noise, cond) -> F_x`` (the UNet or a DiT) so that every rank
keeps calling it as one process would, with the whole batch and every frame, and gets the whole result:

* CFG parallelism: classifier-free guidance evaluates ``[uncond, cond]`` as one batch of ``2B``
  (``vidiff.diffusion.CFGDenoiser``); guidance branch 0 computes the conditional half, branch 1 the
  unconditional half, and one all-gather per network call (one per sampler step for Euler) hands both
  halves to both. Guidance, the sampler and the pipeline run unchanged, so every rank ends with the same
  latents. A batch that is not a guidance pair (odd size: no guidance) is computed whole on both branches.
* frame parallelism (UNet): see ``vidiff.parallel.frames``;
* sequence parallelism (Wan DiT, ``VideoDiT``; DeepSpeed-Ulysses): see ``vidiff.parallel.sequence``.

Nothing here routes on a rank besides the choice of the shard; the hooks come out with ``remove()``.

Communication volume. The closed form, per UNet call and rank:

With ``F`` frame ranks, ``T`` frames split ``s_0 ≥ s_1 ≥ …`` (``split_sizes``), ``b`` videos per guidance
branch (half the guided batch under CFG parallelism), ``e`` bytes per element of the network's dtype and a
latent of ``h × w`` with ``C_out`` channels, rank ``r`` (with ``n_r`` neighbours: 1 at the ends, else 2) sends

* per temporal resnet with ``C`` channels at ``H × W``: two halos ``2·n_r·b·C·H·W·e`` and two gathers of
  the GroupNorm's moments ``2·(F−1)·2·b·C·s_0·4`` (mean and variance per channel and frame, float32, padded
  to the largest shard; 8 bytes for a float64 network);
* per temporal attention with ``C`` channels over ``P = H·W`` pixels split ``p_0, p_1, …``: the all-to-all in
  ``b·C·e·s_r·(P − p_r)`` and out ``b·C·e·(T − s_r)·p_r``;
* the output gather ``(F−1)·b·s_0·C_out·h·w·e`` (shards padded to the largest);
* under CFG parallelism, the other branch's half of the output ``b·T·C_out·h·w·e`` — the one exchange per
  step of guidance.

The layers are counted from the UNet's config (levels, resnets and transformer depth per level), not from
the module tree, so a test holding the counted bytes to this formula checks that each layer exchanges what
it must and nothing more.

Per DiT call and rank (``dit_call_bytes``): with ``h`` heads of width ``d`` and ``L`` tokens split ``L_0, L_1, …``
over ``F`` ranks (``token_split``), each of the ``num_layers`` self-attentions sends ``3·b·(h/F)·d·e·(F−1)·L_r``
(its q, k, v for the other ranks' heads) and ``b·(h/F)·d·e·(L − L_r)`` (the other ranks' tokens of its heads);
then the output gather ``(F−1)·b·C_out·e`` times the largest block's latent entries, and the CFG half as above.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from math import ceil
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from vidiff.networks.dit_wan_config import WanConfig
from vidiff.networks.unet_config import UNetConfig
from vidiff.parallel.comm import ParallelLayout, split_sizes
from vidiff.parallel.frames import FrameParallelUNet, norm_moments_bytes
from vidiff.parallel.sequence import SequenceParallelDiT, dit_config, local_tokens, token_split

__all__ = ["ParallelNetwork", "cfg_bytes", "dit_call_bytes", "parallelize", "slice_batch", "temporal_layers",
           "unet_call_bytes"]


def slice_batch(obj: Any, start: int, stop: int, batch: int) -> Any:
    """Rows ``[start, stop)`` of every tensor in ``obj`` whose first dimension is ``batch`` (tensors,
    dataclasses such as ``Cond``, mappings, tuples); anything else as it is."""
    if isinstance(obj, Tensor):
        return obj[start:stop] if obj.ndim and obj.shape[0] == batch else obj
    if is_dataclass(obj) and not isinstance(obj, type):
        return type(obj)(**{f.name: slice_batch(getattr(obj, f.name), start, stop, batch) for f in fields(obj)})
    if isinstance(obj, dict):
        return {k: slice_batch(v, start, stop, batch) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(slice_batch(v, start, stop, batch) for v in obj)
    return obj


class ParallelNetwork:
    """The hooks of :func:`parallelize`: split each call of ``network`` by guidance branch, then by frames
    (the UNet's frames, or the DiT's token sequence)."""

    def __init__(self, network: nn.Module, layout: ParallelLayout) -> None:
        self.network, self.layout = network, layout
        self.frames: FrameParallelUNet | SequenceParallelDiT | None = None
        if layout.frames > 1:
            split = SequenceParallelDiT if dit_config(network) is not None else FrameParallelUNet
            self.frames = split(network, layout.frame_comm)
        self._batch: int | None = None  # the full batch of the call in flight when it was split by branch
        self._handles: list[RemovableHandle] = [
            network.register_forward_pre_hook(self._split, with_kwargs=True),
            network.register_forward_hook(self._gather),
        ]

    def remove(self) -> None:
        """Back to the single-process network."""
        for handle in self._handles:
            handle.remove()
        if self.frames is not None:
            self.frames.remove()

    def _split(self, network: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        x, c_noise, cond = args
        indicator = kwargs.get("image_only_indicator")
        batch = x.shape[0]
        if self.layout.cfg == 2 and batch % 2 == 0:
            self._batch, half = batch, batch // 2
            # CFGDenoiser's batch is [uncond, cond]: branch 0 takes the conditional half
            start, stop = (half, batch) if self.layout.cfg_comm.rank == 0 else (0, half)
            x, c_noise, cond, indicator = (slice_batch(v, start, stop, batch) for v in (x, c_noise, cond, indicator))
        if self.frames is not None:
            x, c_noise, cond, indicator = self.frames.local_inputs(x, c_noise, cond, indicator)
        if indicator is not None:
            kwargs = {**kwargs, "image_only_indicator": indicator}
        return (x, c_noise, cond), kwargs

    def _gather(self, network: nn.Module, args: tuple, out: Tensor) -> Tensor:
        if self.frames is not None:
            out = self.frames.gather_output(out)  # (B', T, ...) on every rank of the frame group
        if self._batch is not None:
            self._batch = None
            cond_half, uncond_half = self.layout.cfg_comm.all_gather(out)
            out = torch.cat([uncond_half, cond_half])
        return out


def parallelize(network: nn.Module, layout: ParallelLayout) -> ParallelNetwork:
    """Run ``network`` split over ``layout``'s ranks (every rank calls it with the same inputs); returns the
    handle whose ``remove()`` undoes it. Frame parallelism needs a spatio-temporal UNet or a Wan DiT (whose
    head count the frame ranks divide)."""
    if (layout.frames > 1 and dit_config(network) is None
            and not any(type(m).__name__ == "TemporalResnetBlock" for m in network.modules())):
        raise ValueError(f"frame parallelism splits a spatio-temporal UNet's frames or a Wan DiT's tokens; "
                         f"{type(network).__name__} has neither (use --parallel cfg)")
    return ParallelNetwork(network, layout)

def temporal_layers(cfg: UNetConfig, h: int, w: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """``(resnets, attentions)``: ``(channels, pixels)`` of every temporal resnet and every temporal
    attention block of the UNet on an ``h × w`` latent."""
    channels, layers = cfg.block_out_channels, cfg.per_level("layers_per_block")
    depth, levels = cfg.per_level("transformer_layers_per_block"), cfg.num_levels
    pixels = []
    for _ in range(levels):
        pixels.append(h * w)
        h, w = ceil(h / 2), ceil(w / 2)
    resnets: list[tuple[int, int]] = []
    attentions: list[tuple[int, int]] = []
    for i in range(levels):  # encoder: attention at every level but the deepest
        resnets += [(channels[i], pixels[i])] * layers[i]
        if i < levels - 1:
            attentions += [(channels[i], pixels[i])] * (layers[i] * depth[i])
    resnets += [(channels[-1], pixels[-1])] * 2  # middle: resnet, transformer, resnet
    attentions += [(channels[-1], pixels[-1])] * depth[-1]
    for i in reversed(range(levels)):  # decoder: one more resnet per level
        resnets += [(channels[i], pixels[i])] * (layers[i] + 1)
        if i < levels - 1:
            attentions += [(channels[i], pixels[i])] * ((layers[i] + 1) * depth[i])
    return resnets, attentions


def cfg_bytes(batch: int, frames: int, h: int, w: int, out_channels: int, elem: int) -> int:
    """Bytes one rank sends per guided network call under CFG parallelism (its half of the output)."""
    return batch * frames * out_channels * h * w * elem


def unet_call_bytes(cfg: UNetConfig, *, batch: int, frames: int, h: int, w: int, frame_ranks: int,
                    rank: int, cfg_parallel: bool = False, elem: int = 4) -> int:
    """Bytes rank ``rank`` (of ``frame_ranks``) sends in one UNet call (see the module docstring).

    ``batch``: videos in this rank's call after the guidance split.
    """
    n, b, e = frame_ranks, batch, elem
    total = cfg_bytes(b, frames, h, w, cfg.out_channels, e) if cfg_parallel else 0
    if n == 1:
        return total
    s = split_sizes(frames, n)
    neighbours = (rank > 0) + (rank < n - 1)
    resnets, attentions = temporal_layers(cfg, h, w)
    for c, p in resnets:
        total += 2 * neighbours * b * c * p * e + 2 * norm_moments_bytes(batch=b, frames=frames, ranks=n, channels=c,
                                                                          elem=e)
    for c, p in attentions:
        share = split_sizes(p, n)[rank]
        total += b * c * e * (s[rank] * (p - share) + (frames - s[rank]) * share)
    return total + (n - 1) * b * s[0] * cfg.out_channels * h * w * e


def dit_call_bytes(cfg: WanConfig, *, batch: int, frames: int, h: int, w: int, frame_ranks: int, rank: int,
                   cfg_parallel: bool = False, elem: int = 4) -> int:
    """Bytes rank ``rank`` (of ``frame_ranks``) sends in one Wan DiT call on a ``(batch, frames, ·, h, w)``
    latent (see the module docstring); ``batch``: videos in this rank's call after the guidance split."""
    n, b, e = frame_ranks, batch, elem
    total = cfg_bytes(b, frames, h, w, cfg.out_channels, e) if cfg_parallel else 0
    if n == 1:
        return total
    dim, sizes = token_split(cfg, frames, h, n)
    tokens = [local_tokens(cfg, frames, h, w, dim, s) for s in sizes]
    heads, d = cfg.num_attention_heads // n, cfg.attention_head_dim
    mine = tokens[rank]
    attention = 3 * b * heads * d * e * (n - 1) * mine + b * heads * d * e * (sum(tokens) - mine)
    largest = max(sizes) * (h if dim == 1 else frames) * w  # latent entries of the largest block
    return total + cfg.num_layers * attention + (n - 1) * b * cfg.out_channels * largest * e
