"""Memory controls for image-to-video, and a planner that picks the cheapest set that fits a budget.

SVD users' most common failure is running out of GPU memory; every control trades speed for memory.
This module predicts the peak memory of one generation from the model's configuration and the
requested shape, for every combination of controls, and picks the combination with the smallest
predicted slow-down whose predicted peak fits ``max_memory``. The predictions are analytic
(bytes of weights resident at once + the largest live activations of each stage, counted block by block)
with a safety margin. ``benchmarks/memory_controls.py`` measures the real peaks they stand for, each
control in a fresh process, and ``tests/pipelines/test_memory.py`` holds every prediction between 1 and 2
times its measurement on the CPU. On the CPU the figures include what the allocator keeps (see
:func:`host_overhead`); the CUDA figures count the same blocks without it, not yet checked on a GPU.
``check_fits`` refuses a generation that no combination fits on the device, before any work. The Wan pipeline
(a DiT and Wan's causal 3D VAE, :class:`CausalVAEShape`) is planned by the same functions, its one control being
the latent frames decoded at a time (``benchmarks/memory_wan.py``, ``tests/pipelines/test_memory_wan.py``).
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass, replace

OFFLOAD_MODES = ("none", "model", "sequential")

_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_memory(text: str | int | float) -> int:
    """Parse a memory size such as ``"8GiB"``, ``"7.5 GB"``, ``"512MiB"`` or a number of bytes."""
    if isinstance(text, (int, float)):
        if text <= 0:
            raise ValueError(f"memory size must be positive, got {text!r}")
        return int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"cannot parse memory size {text!r}: use a number with a unit such as 8GiB, 7.5GB, 512MiB")
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if value <= 0:
        raise ValueError(f"memory size must be positive, got {text!r}")
    return int(value)


def format_bytes(n: float) -> str:
    """Human-readable binary size (``1.50 GiB``)."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


@dataclass(frozen=True)
class MemoryPlan:
    """One combination of memory controls.

    - ``offload``: ``"none"`` (everything on the device), ``"model"`` (each component on the device only
      while it runs), ``"sequential"`` (each submodule on the device only while it runs);
    - ``decode_chunk_size``: frames decoded at once by the VAE (``None``: all);
    - ``attention_chunk``: sequences per attention / feed-forward call in the UNet (``None``: all at once);
    - ``vae_tiling``: decode and encode in overlapping spatial tiles.
    """

    offload: str = "none"
    decode_chunk_size: int | None = None
    attention_chunk: int | None = None
    vae_tiling: bool = False

    def __post_init__(self) -> None:
        if self.offload not in OFFLOAD_MODES:
            raise ValueError(f"offload must be one of {OFFLOAD_MODES}, got {self.offload!r}")
        for name in ("decode_chunk_size", "attention_chunk"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {v}")

    def describe(self) -> str:
        parts = [f"offload={self.offload}", f"decode_chunk_size={self.decode_chunk_size or 'all'}"]
        parts.append(f"attention_chunk={self.attention_chunk or 'off'}")
        parts.append(f"vae_tiling={'on' if self.vae_tiling else 'off'}")
        return ", ".join(parts)


@dataclass(frozen=True)
class DiTShape:
    """A video DiT's widths (``vidiff.networks.dit_video``): model width, MLP width, heads, patch (t, h, w)."""

    width: int
    ffn_dim: int
    heads: int
    patch: tuple[int, int, int]


@dataclass(frozen=True)
class ModelFootprint:
    """What the planner needs to know about a loaded model (all sizes in elements, not bytes)."""

    unet_params: int
    vae_decoder_params: int
    vae_encoder_params: int
    clip_params: int
    unet_channels: tuple[int, ...]
    unet_heads: tuple[int, ...]
    vae_channels: tuple[int, ...]
    latent_channels: int = 4
    largest_layer_params: int = 0
    unet_layers: tuple[int, ...] | None = None  # resnets per encoder level (None: 2 at every level, as SVD)
    unet_in_channels: int = 8
    unet_attention: tuple[bool, ...] | None = None  # levels with transformers (None: all but the deepest, as SVD)
    vae_tile: int = 512  # pixels per tile side when tiling (the VAE's ``tile_latent_size`` x its downsampling)
    dit: DiTShape | None = None  # set when the denoiser is a DiT (then ``unet_*`` describe its one width)
    causal_vae: CausalVAEShape | None = None  # set for Wan's causal 3D VAE (then ``vae_channels`` is unused)
    text_encoder: tuple[int, int, int] | None = None  # a T5-style text encoder's (d_model, d_ff, heads)
    clip_bytes_per_element: int | None = None  # the text / image encoders' dtype (None: the run's)


@dataclass(frozen=True)
class CausalVAEShape:
    """Wan's causal 3D VAE (``vidiff.autoencoders.wan_vae``): the encoder's level widths (full resolution
    first), the decoder's (deepest first), which encoder levels halve time, resnets per level, the pixel
    patch (Wan 2.2: 2), whether the levels are residual (Wan 2.2), the latent and pixel channels."""

    encoder: tuple[int, ...]
    decoder: tuple[int, ...]
    temporal: tuple[bool, ...]
    blocks: int
    patch: int = 1
    residual: bool = False
    z_dim: int = 16
    in_channels: int = 3


def causal_vae_shape(config: object) -> CausalVAEShape:
    """The :class:`CausalVAEShape` of a ``WanVAEConfig``."""
    mult = tuple(config.dim_mult)
    dec = config.decoder_base_dim or config.base_dim
    return CausalVAEShape(encoder=tuple(config.base_dim * m for m in (1, *mult)),
                          decoder=tuple(dec * m for m in (mult[-1], *mult[::-1])),
                          temporal=tuple(config.temperal_downsample), blocks=config.num_res_blocks,
                          patch=config.patch_size or 1, residual=config.is_residual, z_dim=config.z_dim,
                          in_channels=config.in_channels)


def network_shape(config: object) -> dict[str, object]:
    """The :class:`ModelFootprint` fields of a denoiser's config: a UNet's per-level widths, or a DiT's
    :class:`DiTShape` (a config with ``attention_head_dim`` and no ``block_out_channels``)."""
    if hasattr(config, "block_out_channels"):
        return {"unet_channels": tuple(config.block_out_channels),
                "unet_heads": tuple(config.per_level("num_attention_heads")),
                "unet_layers": tuple(config.per_level("layers_per_block"))}
    width = config.num_attention_heads * config.attention_head_dim
    return {"unet_channels": (width,), "unet_heads": (config.num_attention_heads,),
            "dit": DiTShape(width, config.ffn_dim, config.num_attention_heads, tuple(config.patch_size))}


@dataclass(frozen=True)
class RunShape:
    """The shape of one generation.

    ``device_type``: ``"cpu"`` when the device is the host. There the figure that matters is the process's
    resident set: weights are always resident (offloading saves nothing), and the allocator's behaviour is
    part of the peak (see :func:`host_overhead`).
    """

    batch: int
    num_frames: int
    height: int
    width: int
    guidance: bool
    bytes_per_element: int = 2
    downsample: int = 8
    fused_attention: bool = True  # flash / memory-efficient SDPA (also PyTorch's CPU kernel): no L x L scores
    decode_overlap: int = 0  # frames of context decoded on each side of a chunk
    vae_bytes_per_element: int = 4  # the VAE runs in float32 unless the pipeline casts it
    device_type: str = "cuda"
    temporal_downsample: int = 1  # pixel frames per latent frame (Wan: 4, after a first frame alone)
    text_tokens: int = 512  # tokens per prompt of a text encoder


def latent_frames(run: RunShape) -> int:
    """Latent frames of a run: one per frame, or ``1 + (T - 1) / 4`` for Wan's causal VAE."""
    return run.num_frames if run.temporal_downsample == 1 else (run.num_frames - 1) // run.temporal_downsample + 1


# Live tensors of one spatio-temporal resnet, in units of ``(C_in + C_out) / 2`` feature maps: the input,
# its GroupNorm and SiLU, the convolution output, the blocked copies of a convolution's input and output
# that oneDNN / cuDNN make, the temporal resnet's transposed copies and the learned blend's three terms.
# Counted from ``vidiff.autoencoders.blocks`` / ``vidiff.networks.resnet`` and checked against measured peaks
# (``benchmarks/memory_controls.py``): 10 bounds every measurement.
RESNET_MAPS = 10
# Live feature maps of one spatio-temporal transformer beside its MLP: the residual, the normalised and
# projected tokens, the spatial output held for the blend, the mixed input, its transposed copy, the
# temporal output and its copy back.
TRANSFORMER_MAPS = 8
# Per token chunk: GEGLU's projection (8C), the GELU of its gate (4C), their product (4C), the output, the
# normalised input and the residual sum (3C), 19 in all; attention's q, k, v, output and its transposed copy
# (5C) come before and are freed by then. 24 bounds the measurements: these odd-sized temporaries fragment.
CHUNK_MAPS = 24
# glibc's largest mmap threshold: freed blocks below it stay in the heap for reuse, so on the CPU the
# resident set runs up to about twice the live tensors when the largest ones are smaller than this.
GLIBC_MMAP_MAX = 32 * 2**20
HOST_WORKSPACE = 2**19  # oneDNN / OpenMP workspaces created on the CPU by a process's first calls
HOST_RETAINED = 0.5  # share of an earlier stage's activations still resident during a later one (CPU)


def host_overhead(live: float, largest: float) -> float:
    """Resident-set bytes of a stage on the CPU whose live tensors peak at ``live`` (largest tensor
    ``largest``): the allocator's retention (x1.92 below glibc's mmap threshold, x1.15 above it) plus 0.5 MiB
    of runtime workspaces (oneDNN, OpenMP) created on first use (anonymous memory: the library code a first
    call pages in is shared and evictable, and is not counted). Both factors were measured on the CPU in
    fresh processes (``benchmarks/memory_controls.py``); they are not used for CUDA devices."""
    return (1.92 if largest < GLIBC_MMAP_MAX else 1.15) * live + HOST_WORKSPACE


def _unet_resnets(fp: ModelFootprint) -> list[tuple[int, int, int]]:
    """``(C_in, C_out, level)`` of every resnet of the UNet, encoder then decoder (as ``UNetSpatioTemporal``)."""
    channels = fp.unet_channels
    layers = fp.unet_layers or (2,) * len(channels)
    out, skips, prev = [], [channels[0]], channels[0]
    for i, c in enumerate(channels):
        for _ in range(layers[i]):
            out.append((prev, c, i))
            prev = c
        skips += [c] * (layers[i] + (0 if i == len(channels) - 1 else 1))
    for i in reversed(range(len(channels))):
        for _ in range(layers[i] + 1):
            out.append((prev + skips.pop(), channels[i], i))
            prev = channels[i]
    return out


def _unet_activation_bytes(fp: ModelFootprint, run: RunShape, attention_chunk: int | None) -> tuple[float, float]:
    """Live bytes of one UNet call at its peak, and its largest tensor.

    The skip connections stay live through the call; on top of them, the largest of: one resnet
    (``RESNET_MAPS`` maps of its mean width), or one transformer (``TRANSFORMER_MAPS`` whole maps plus
    ``CHUNK_MAPS`` maps of the tokens processed at once, and the L x L scores of those tokens when
    attention is not fused). ``attention_chunk`` frames bound the tokens per call to
    ``attention_chunk x h x w`` at the latent resolution, at every level (``UNetSpatioTemporal``).
    """
    n = run.batch * run.num_frames * (2 if run.guidance else 1)
    h, w = max(1, run.height // run.downsample), max(1, run.width // run.downsample)
    b = run.bytes_per_element
    levels = len(fp.unet_channels)
    pixels = [max(1, -(-h // 2**i)) * max(1, -(-w // 2**i)) for i in range(levels)]
    layers = fp.unet_layers or (2,) * levels
    skips = fp.unet_channels[0] * pixels[0]
    for i, c in enumerate(fp.unet_channels):
        skips += c * (layers[i] * pixels[i] + (pixels[i + 1] if i < levels - 1 else 0))
    block = max(RESNET_MAPS * (ci + co) / 2 * pixels[i] for ci, co, i in _unet_resnets(fp))
    largest = 0.0
    attention = fp.unet_attention or tuple(i < levels - 1 for i in range(levels))
    for i, (c, heads) in enumerate(zip(fp.unet_channels, fp.unet_heads)):
        if not attention[i]:
            continue
        tokens = n * pixels[i]
        chunk = tokens if attention_chunk is None else min(tokens, attention_chunk * h * w)
        scores = 0.0 if run.fused_attention else chunk / pixels[i] * heads * pixels[i] ** 2
        block = max(block, (TRANSFORMER_MAPS * tokens + CHUNK_MAPS * chunk) * c / n + scores / n)
        largest = max(largest, 8 * chunk * c * b, scores * b)
    inputs = 2 * n * (fp.unet_in_channels + fp.latent_channels) * pixels[0]  # the UNet's input and output
    live = (skips + block) * n * b + inputs * b
    largest = max(largest, 2 * max(ci * pixels[i] for ci, _, i in _unet_resnets(fp)) * n * b)
    return live, largest


# Live token maps (units of L x D) of one Wan block (``vidiff.networks.dit_wan``) at its two peaks: in attention
# the residual, its modulated copy, q, k, v, their normalised / rotated float32 copies and the output (10); in the
# MLP the residual, the modulated input and the output (3) beside the hidden projection and its GELU (2 x L x
# ffn_dim). Counted from the block's forward and checked against peaks measured on the CPU
# (``tests/pipelines/test_memory_dit.py``: predicted / measured 1.25-1.77 with glibc's mmap threshold fixed).
DIT_ATTENTION_MAPS = 10
DIT_MLP_MAPS = 3
DIT_FFN_MAPS = 2


def _dit_activation_bytes(fp: ModelFootprint, run: RunShape) -> tuple[float, float]:
    """Live bytes of one DiT call at its peak, and its largest tensor: the larger of the attention's
    ``DIT_ATTENTION_MAPS`` token maps and the MLP's ``DIT_MLP_MAPS`` of the model width plus ``DIT_FFN_MAPS`` of
    its own width, for all ``L`` tokens (attention runs on the whole sequence: ``attention_chunk`` does not
    apply), the L x L scores per head when attention is not fused, and the network's input (noisy latent +
    concat) and output. Norms and modulation run in float32 whatever the dtype, so every map is counted at
    4 bytes or more."""
    assert fp.dit is not None
    n = run.batch * (2 if run.guidance else 1)
    h, w = max(1, run.height // run.downsample), max(1, run.width // run.downsample)
    pt, ph, pw = fp.dit.patch
    frames = latent_frames(run)
    tokens = -(-frames // pt) * -(-h // ph) * -(-w // pw)
    b = max(run.bytes_per_element, 4)
    per_token = max(DIT_ATTENTION_MAPS * fp.dit.width, DIT_MLP_MAPS * fp.dit.width + DIT_FFN_MAPS * fp.dit.ffn_dim)
    maps = per_token * tokens * n * b
    scores = 0.0 if run.fused_attention else fp.dit.heads * tokens**2 * n * b
    inputs = 2 * n * frames * (fp.unet_in_channels + fp.latent_channels) * h * w * b
    largest = max(tokens * n * max(fp.dit.ffn_dim, 3 * fp.dit.width) * b, scores / max(fp.dit.heads, 1))
    return maps + scores + inputs, largest


def _vae_decode_bytes(fp: ModelFootprint, run: RunShape, chunk: int, tiling: bool) -> tuple[float, float]:
    """Live bytes of a temporal VAE decode of ``chunk`` frames at its peak, and its largest tensor.

    The peak is one resnet of the decoder at the highest resolution it reaches (``RESNET_MAPS`` maps of its
    mean width, for the frames of one call: the chunk and its overlap), plus the decoded video (the frames
    of every chunk, their concatenation and the stacked batch: three copies) and, when tiling, the blended
    accumulator of the call's frames.
    """
    frames = min(run.num_frames, chunk + 2 * run.decode_overlap)
    f = run.downsample
    th, tw = run.height, run.width
    if tiling:
        th, tw = min(th, fp.vae_tile), min(tw, fp.vae_tile)
    lh, lw = max(1, th // f), max(1, tw // f)
    rev = list(reversed(fp.vae_channels))
    block = 0.0
    for i, c in enumerate(rev):
        res = lh * lw * 4**i
        block = max(block, RESNET_MAPS * (rev[max(i - 1, 0)] + c) / 2 * res)
    scores = 0.0 if run.fused_attention else lh * lw * lh * lw  # the mid-block's single-head attention
    video = run.batch * run.num_frames * 3 * run.height * run.width
    accumulator = frames * 3 * run.height * run.width if tiling else 0
    vb = run.vae_bytes_per_element
    live = (frames * run.batch * (block + scores) + 3 * video + accumulator) * vb
    largest = frames * run.batch * max(max(rev[max(i - 1, 0)], c) * lh * lw * 4**i for i, c in enumerate(rev)) * vb
    return live, largest


# Live maps of one causal resnet (``vidiff.autoencoders.wan_vae_blocks.ResidualBlock``), in units of its mean
# width over the frames of a call plus the two its causal padding adds: the input (held for the shortcut), the
# RMS norm and its two scalings, the SiLU, the padded copy, the convolution's output and oneDNN's copies.
# Checked against peaks measured on the CPU (``benchmarks/memory_wan.py``).
CAUSAL_RESNET_MAPS = 10
# PyTorch's native CPU 3D convolution unfolds its input (vol2col): a 3x3x3 kernel's buffer is 27 input maps per
# output frame. It runs when N*C*T*H of the input is at most 20480 (else oneDNN, whose copies the resnet maps
# count), so only small inputs pay it. Not counted on CUDA (cuDNN's workspaces are not modelled).
CONV3D_UNFOLD = 27
CONV3D_NATIVE_MAX = 20480


def _causal_levels(v: CausalVAEShape, pixels: int, frames: int, decode: bool,
                   first: bool) -> list[tuple[str, int, int, int, int]]:
    """``(kind, C_in, C_out, pixels, frames)`` of every causal convolution (``"conv"``) and resampler
    (``"space"``, or ``"time"`` when it also resamples time) of the decoder (``decode``; ``pixels`` at the latent
    resolution, ``frames`` latent frames per call) or the encoder (``pixels`` at the patched resolution,
    ``frames`` pixel frames per call), in the order they run, each at its input's size. The clip's ``first``
    call resamples its first frame alone (time ``1 + 2k`` <-> ``1 + k``)."""
    dims = v.decoder if decode else v.encoder
    temporal = v.temporal[::-1] if decode else v.temporal
    if decode:
        out = [("conv", v.z_dim, dims[0], pixels, frames)] + [("conv", dims[0], dims[0], pixels, frames)] * 4
    else:
        out = [("conv", v.in_channels, dims[0], pixels, frames)]
    last = len(dims) - 2
    for i in range(last + 1):
        c_in = dims[i] // 2 if decode and i > 0 and not v.residual else dims[i]
        for j in range(v.blocks + (1 if decode else 0)):
            out += [("conv", c_in if j == 0 else dims[i + 1], dims[i + 1], pixels, frames),
                    ("conv", dims[i + 1], dims[i + 1], pixels, frames)]
        if i < last:
            out.append(("time" if temporal[i] else "space", dims[i + 1], dims[i + 1], pixels, frames))
            pixels = pixels * 4 if decode else max(1, pixels // 4)
            if temporal[i]:
                frames = (2 * frames - first) if decode else max(1, -(-frames // 2))
    if not decode:
        out += [("conv", dims[-1], dims[-1], pixels, frames)] * 4  # the mid block's two resnets
    return [*out, ("conv", dims[-1], dims[-1], pixels, frames)]  # conv_out (counted at its input's width)


def _causal_vae_bytes(fp: ModelFootprint, run: RunShape, chunk: int | None, decode: bool) -> tuple[float, float]:
    """Live bytes of a causal 3D VAE pass at its peak, and its largest tensor.

    The peak is the largest of one resnet (``CAUSAL_RESNET_MAPS`` maps of its mean width over the frames of a
    call plus two of causal padding) or one resampler (its input and a copy, the resampled map and its
    convolution's output, twice when time doubles; Wan 2.2 adds its shortcut), plus the last two input frames
    every causal convolution keeps for the next call (a chunked pass), plus the video: the decoded frames,
    their concatenation and clamped copy, or the input frames and their patched copy. The decoder runs
    ``chunk`` latent frames per call (``None``: all), the encoder the first frame and then 4 per call.
    """
    v = fp.causal_vae
    assert v is not None
    h, w = max(1, run.height // run.downsample), max(1, run.width // run.downsample)
    t = latent_frames(run)
    if decode:  # the first call (latent frame 0 and the rest of its chunk) and, if any, a later one
        calls, pixels, frames = chunk is not None, h * w, t if chunk is None else min(chunk, t)
        shapes = [(frames, True)] + ([(frames, False)] if frames < t else [])
    else:  # frame 0 alone, then 4 at a time
        calls, pixels = True, max(1, run.height * run.width // v.patch**2)
        shapes = [(1, True)] + ([(run.temporal_downsample, False)] if run.num_frames > 1 else [])
    levels = [level for f, first in shapes for level in _causal_levels(v, pixels, f, decode, first)]
    blocks, tails = [], 0.0  # (live elements, largest tensor, unfold buffer) of each layer's peak; causal tails
    for i, (kind, c_in, c_out, px, f) in enumerate(levels):
        counts_tail = calls and i < len(levels) // len(shapes)  # the tails of one call
        if kind == "conv":
            rows = round((px * run.height / run.width) ** 0.5)  # PyTorch's test for its native kernel:
            native = run.batch * c_in * (f + 2) * (rows + 2) <= CONV3D_NATIVE_MAX  # N*C*T*H of the padded input
            unfold = CONV3D_UNFOLD * c_in * px * f if run.device_type == "cpu" and native else 0
            blocks.append((CAUSAL_RESNET_MAPS * (c_in + c_out) / 2 * px * (f + 2), max(c_in, c_out) * px * (f + 2),
                           unfold))
            tails += 2 * c_in * px if counts_tail else 0
            continue
        timed = kind == "time"
        if decode:  # time_conv's 2C output and its interleaved copy, then the upsampled map and its conv
            grown = c_out * 4 * px * f * (2 if timed else 1)
            blocks.append(((4 if timed else 2) * c_out * px * f + 2 * grown * (2 if v.residual else 1), grown, 0))
        else:  # the strided map, its padded copy and (downsample3d) the strided time convolution
            blocks.append((4 * c_out * px * f, c_out * px * f, 0))
        tails += 2 * c_out * px if timed and counts_tail else 0
    video = run.batch * run.num_frames * 3 * run.height * run.width
    vb = run.vae_bytes_per_element
    peaks = []
    for live, big, unfold in blocks:
        live, big = (run.batch * (live + tails) + (3 if decode else 2) * video) * vb, max(big * run.batch, video) * vb
        unfold *= run.batch * vb
        if unfold >= GLIBC_MMAP_MAX:  # mapped and returned whole when freed: only the rest stays in the heap
            live = unfold + (host_overhead(live, big) - HOST_WORKSPACE) / (host_overhead(1.0, unfold) - HOST_WORKSPACE)
        peaks.append((live + (unfold if unfold < GLIBC_MMAP_MAX else 0), max(big, unfold)))
    # the layer whose peak is largest as the device counts it (on the CPU, with the allocator's retention)
    return max(peaks, key=lambda p: host_overhead(*p) if run.device_type == "cpu" else p[0])


def stage_activations(fp: ModelFootprint, run: RunShape, plan: MemoryPlan) -> dict[str, float]:
    """Predicted bytes each stage (``clip``, ``encode``, ``denoise``: one UNet call, ``decode``) allocates
    while it runs, beyond the weights and the latents: its live activations, and on the CPU the
    allocator's retention and runtime workspaces (:func:`host_overhead`)."""

    def device_bytes(live_and_largest: tuple[float, float]) -> float:
        live, largest = live_and_largest
        return host_overhead(live, largest) if run.device_type == "cpu" else live

    image = run.batch * 3 * run.height * run.width * 4
    clip = (4 * image, image)
    if fp.text_encoder is not None:  # T5: per token the residual, q, k, v, output and the MLP; the scores
        d_model, d_ff, heads = fp.text_encoder
        prompts = run.batch * (2 if run.guidance else 1)
        clip = (prompts * run.text_tokens * (6 * d_model + 2 * d_ff + heads * run.text_tokens) * 4, 0)
    one_frame = replace(run, num_frames=1, decode_overlap=0)
    if fp.causal_vae is not None:  # image-to-video encodes the whole clip (image and black frames), TI2V one frame
        encode = _causal_vae_bytes(fp, run if fp.unet_in_channels > fp.latent_channels else one_frame, None, False)
        decode = _causal_vae_bytes(fp, run, plan.decode_chunk_size, True)
    else:
        chunk = run.num_frames if plan.decode_chunk_size is None else min(plan.decode_chunk_size, run.num_frames)
        encode = _vae_decode_bytes(fp, one_frame, 1, plan.vae_tiling)
        decode = _vae_decode_bytes(fp, run, chunk, plan.vae_tiling)
    return {
        "clip": device_bytes(clip),
        "encode": device_bytes(encode),
        "denoise": device_bytes(_dit_activation_bytes(fp, run) if fp.dit is not None
                                else _unet_activation_bytes(fp, run, plan.attention_chunk)),
        "decode": device_bytes(decode),
    }


def estimate_peak(fp: ModelFootprint, run: RunShape, plan: MemoryPlan) -> dict[str, float]:
    """Predicted peak device bytes of each stage (``clip``, ``encode``, ``denoise``, ``decode``) and overall:
    the weights resident while it runs, plus :func:`stage_activations`, plus the latents held throughout.

    On the CPU the overall peak is not the largest stage: the heap an earlier stage leaves fragmented stays
    resident while the largest one allocates tensors of other sizes; ``HOST_RETAINED`` of each other stage's
    activations is counted (measured on whole generations, ``benchmarks/memory_controls.py``).
    """
    b, vb = run.bytes_per_element, run.vae_bytes_per_element
    weights = {
        "clip": fp.clip_params * (fp.clip_bytes_per_element or b),
        "encode": fp.vae_encoder_params * vb,
        "denoise": fp.unet_params * b,
        "decode": fp.vae_decoder_params * vb,
    }
    if run.device_type == "cpu" or plan.offload == "none":
        resident = dict.fromkeys(weights, float(sum(weights.values())))
    elif plan.offload == "model":
        resident = weights
    else:
        resident = dict.fromkeys(weights, float(fp.largest_layer_params * 4))
    latents = run.batch * latent_frames(run) * fp.latent_channels * (run.height // run.downsample) * (
        run.width // run.downsample) * 4 * 4  # the sampler's state, its derivative, the denoised and the noise
    acts = stage_activations(fp, run, plan)
    stages = {k: resident[k] + act + latents for k, act in acts.items()}
    stages["peak"] = max(stages.values())
    if run.device_type == "cpu":  # heap fragments earlier stages leave stay resident (see the docstring)
        own = sorted(a - HOST_WORKSPACE for a in acts.values())
        stages["peak"] = resident["decode"] + latents + HOST_WORKSPACE + own[-1] + HOST_RETAINED * sum(own[:-1])
    return stages


# Relative slow-down of each control, measured on the reference shapes (benchmarks/memory_controls.py).
_COST = {"offload": {"none": 0.0, "model": 0.05, "sequential": 3.0}, "tiling": 0.15, "attention_chunk": 0.08}


def _plan_cost(plan: MemoryPlan, num_frames: int) -> float:
    cost = _COST["offload"][plan.offload]
    if plan.vae_tiling:
        cost += _COST["tiling"]
    if plan.attention_chunk is not None:
        cost += _COST["attention_chunk"] * 2 / plan.attention_chunk  # more, smaller kernel calls
    if plan.decode_chunk_size is not None and plan.decode_chunk_size < num_frames:
        cost += 0.01 * (num_frames / plan.decode_chunk_size)  # more, smaller decoder calls
    return cost


def candidate_plans(num_frames: int, device_type: str = "cuda", *, chunks_only: bool = False) -> list[MemoryPlan]:
    """Every combination of controls the planner considers (no offloading when the device is the CPU;
    ``chunks_only``: decode chunks alone, the one control of the Wan pipeline, in latent frames)."""
    chunks: list[int | None] = [None, *[c for c in (14, 8, 4, 2, 1) if c < num_frames]]
    offloads = ("none",) if device_type == "cpu" or chunks_only else OFFLOAD_MODES
    attention, tilings = ((None,), (False,)) if chunks_only else ((None, 2, 1), (False, True))
    out = []
    for offload, chunk, attn, tiling in itertools.product(offloads, chunks, attention, tilings):
        out.append(MemoryPlan(offload=offload, decode_chunk_size=chunk, attention_chunk=attn, vae_tiling=tiling))
    return out


SAFETY_MARGIN = 1.15


def _scored(fp: ModelFootprint, run: RunShape) -> list[tuple[float, float, MemoryPlan]]:
    """``(cost, predicted peak x SAFETY_MARGIN, plan)`` of every candidate plan."""
    frames = latent_frames(run) if fp.causal_vae is not None else run.num_frames
    return [(_plan_cost(plan, frames), estimate_peak(fp, run, plan)["peak"] * SAFETY_MARGIN, plan)
            for plan in candidate_plans(frames, run.device_type, chunks_only=fp.causal_vae is not None)]


def _shape_words(run: RunShape) -> str:
    return f"{run.num_frames} frames at {run.width}x{run.height}"


def plan_for_budget(fp: ModelFootprint, run: RunShape, max_memory: int | str) -> tuple[MemoryPlan, float]:
    """The cheapest plan whose predicted peak (times a safety margin) fits ``max_memory``.

    Returns the plan and its predicted peak in bytes. Raises ``ValueError`` naming the budget and the
    smallest predicted peak when no combination fits.
    """
    budget = parse_memory(max_memory)
    scored = _scored(fp, run)
    fitting = [s for s in scored if s[1] <= budget]
    if not fitting:
        smallest = min(s[1] for s in scored)
        raise ValueError(
            f"max_memory={format_bytes(budget)} is too small: the most frugal controls need about "
            f"{format_bytes(smallest)} for {_shape_words(run)}"
        )
    _, peak, plan = min(fitting, key=lambda s: (s[0], s[1]))
    return plan, peak


def check_fits(fp: ModelFootprint, run: RunShape, capacity: int, device: str) -> None:
    """Refuse a generation that cannot fit the device's ``capacity`` bytes even with every memory control.

    Raises ``ValueError`` naming the shape, the smallest predicted peak and the capacity; cheap (no tensor
    is allocated), so callers check before any work starts.
    """
    _, smallest, plan = min(_scored(fp, run), key=lambda s: s[1])
    if smallest > capacity:
        raise ValueError(
            f"{_shape_words(run)} needs about {format_bytes(smallest)} even with the most frugal memory "
            f"controls ({plan.describe()}), more than the {format_bytes(capacity)} of {device}"
        )


def host_memory() -> int:
    """Physical memory of this machine in bytes (the capacity when the device is the CPU)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
