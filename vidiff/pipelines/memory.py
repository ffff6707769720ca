"""Memory controls for image-to-video, and a planner that picks the cheapest set that fits a budget.

SVD users' most common failure is running out of GPU memory; every control trades speed for memory.
This module predicts the peak memory of one generation from the model's configuration and the
requested shape, for every combination of controls, and picks the combination with the smallest
predicted slow-down whose predicted peak fits ``max_memory``. The predictions are analytic
(bytes of weights resident at once + the largest live activations of each stage) with a safety
margin; ``benchmarks/memory_controls.py`` measures the real peaks they stand for.
"""

from __future__ import annotations

import itertools
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


@dataclass(frozen=True)
class RunShape:
    """The shape of one generation."""

    batch: int
    num_frames: int
    height: int
    width: int
    guidance: bool
    bytes_per_element: int = 2
    downsample: int = 8
    fused_attention: bool = True  # flash / memory-efficient SDPA: no L x L score matrix


def _unet_activation_bytes(fp: ModelFootprint, run: RunShape, attention_chunk: int | None) -> float:
    """Peak live activations of one UNet call: skip connections plus the largest block's temporaries."""
    n = run.batch * run.num_frames * (2 if run.guidance else 1)
    h, w = run.height // run.downsample, run.width // run.downsample
    b = run.bytes_per_element
    skips = 0.0
    block_peak = 0.0
    for level, (c, heads) in enumerate(zip(fp.unet_channels, fp.unet_heads)):
        hw = max(1, (h >> level) * (w >> level))
        fmap = n * c * hw * b
        skips += 3 * fmap  # two resnet outputs and a downsample output per level are kept for the decoder
        seqs = n if attention_chunk is None else min(n, attention_chunk)
        ff = seqs * hw * 8 * c * b * 1.5  # GEGLU projection (2 x 4C) and its activation
        scores = 0.0 if run.fused_attention else seqs * heads * hw * hw * b
        # spatial attention over h*w tokens per frame; temporal attention over T tokens per pixel is smaller
        block_peak = max(block_peak, 6 * fmap + ff + scores)
    return skips + block_peak


def _vae_decode_bytes(fp: ModelFootprint, run: RunShape, chunk: int, tiling: bool) -> float:
    """Peak of a temporal VAE decode of ``chunk`` frames (full-resolution 128-channel maps dominate)."""
    h, w = run.height, run.width
    if tiling:
        h, w = min(h, 512), min(w, 512)  # tiles of 512 px (64 latent px) with overlap
    c_full = fp.vae_channels[0]
    fmap = chunk * run.batch * c_full * h * w * 4  # decode runs in float32 for stability
    mid_tokens = (h // run.downsample) * (w // run.downsample)
    attn = 0.0 if run.fused_attention else chunk * run.batch * mid_tokens * mid_tokens * 4
    return 6 * fmap + attn


def estimate_peak(fp: ModelFootprint, run: RunShape, plan: MemoryPlan) -> dict[str, float]:
    """Predicted peak device bytes of each stage (``clip``, ``encode``, ``denoise``, ``decode``) and overall."""
    b = run.bytes_per_element
    weights = {
        "clip": fp.clip_params * b,
        "encoder": fp.vae_encoder_params * 4,
        "unet": fp.unet_params * b,
        "decoder": fp.vae_decoder_params * 4,
    }
    if plan.offload == "sequential":
        largest = fp.largest_layer_params * 4
        resident = dict.fromkeys(weights, float(largest))
        always = 0.0
    elif plan.offload == "model":
        resident, always = weights, 0.0
    else:
        resident, always = weights, sum(weights.values())

    def with_weights(stage: str, act: float) -> float:
        return (always if plan.offload == "none" else resident[stage]) + act

    chunk = run.num_frames if plan.decode_chunk_size is None else min(plan.decode_chunk_size, run.num_frames)
    image_bytes = run.batch * 3 * run.height * run.width * 4
    stages = {
        "clip": with_weights("clip", image_bytes * 4),
        "encode": with_weights("encoder", _vae_decode_bytes(fp, replace(run, num_frames=1), 1, plan.vae_tiling)),
        "denoise": with_weights("unet", _unet_activation_bytes(fp, run, plan.attention_chunk)),
        "decode": with_weights("decoder", _vae_decode_bytes(fp, run, chunk, plan.vae_tiling)),
    }
    latents = run.batch * run.num_frames * fp.latent_channels * (run.height // 8) * (run.width // 8) * 4 * 4
    stages = {k: v + latents for k, v in stages.items()}
    stages["peak"] = max(stages.values())
    return stages


# Relative slow-down of each control, measured on the reference shapes (benchmarks/memory_controls.py).
_COST = {"offload": {"none": 0.0, "model": 0.05, "sequential": 3.0}, "tiling": 0.15, "attention_chunk": 0.08}


def _plan_cost(plan: MemoryPlan, num_frames: int) -> float:
    cost = _COST["offload"][plan.offload]
    if plan.vae_tiling:
        cost += _COST["tiling"]
    if plan.attention_chunk is not None:
        cost += _COST["attention_chunk"]
    if plan.decode_chunk_size is not None and plan.decode_chunk_size < num_frames:
        cost += 0.01 * (num_frames / plan.decode_chunk_size)  # more, smaller decoder calls
    return cost


def candidate_plans(num_frames: int) -> list[MemoryPlan]:
    """Every combination of controls the planner considers."""
    chunks: list[int | None] = [None, *[c for c in (14, 8, 4, 2, 1) if c < num_frames]]
    out = []
    for offload, chunk, attn, tiling in itertools.product(OFFLOAD_MODES, chunks, (None, 2), (False, True)):
        out.append(MemoryPlan(offload=offload, decode_chunk_size=chunk, attention_chunk=attn, vae_tiling=tiling))
    return out


SAFETY_MARGIN = 1.15


def plan_for_budget(fp: ModelFootprint, run: RunShape, max_memory: int | str) -> tuple[MemoryPlan, float]:
    """The cheapest plan whose predicted peak (times a safety margin) fits ``max_memory``.

    Returns the plan and its predicted peak in bytes. Raises ``ValueError`` naming the budget and the
    smallest predicted peak when no combination fits.
    """
    budget = parse_memory(max_memory)
    scored = []
    for plan in candidate_plans(run.num_frames):
        peak = estimate_peak(fp, run, plan)["peak"] * SAFETY_MARGIN
        scored.append((peak <= budget, _plan_cost(plan, run.num_frames), peak, plan))
    fitting = [s for s in scored if s[0]]
    if not fitting:
        smallest = min(s[2] for s in scored)
        raise ValueError(
            f"max_memory={format_bytes(budget)} is too small: the most frugal controls need about "
            f"{format_bytes(smallest)} for {run.num_frames} frames at {run.width}x{run.height}"
        )
    _, _, peak, plan = min(fitting, key=lambda s: (s[1], s[2]))
    return plan, peak
