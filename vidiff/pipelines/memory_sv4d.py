"""The memory planner for SV4D / SV4D 2.0 (:mod:`vidiff.pipelines.sv4d`): VAE encode and decode chunks.

An SV4D run holds, throughout, every component's weights, the input video, the output grid of ``N`` frames ×
``V + 1`` views in float32 and the latents of the input frames; on top of that one stage runs at a time:

- ``encode``: SD's VAE encoder on ``encode_chunk_size`` images at a time (the input frames, then each pass's
  ``V`` reference views);
- ``denoise``: one network call on a window's ``T·V`` latents, batched with the unconditional branch;
- ``decode``: SD's decoder on ``decode_chunk_size`` of a window's ``T·V`` latents at a time, with the window's
  decoded views and the pipeline's clamped copies of them;
- ``sv3d`` (SV4D only): the SV3D_u orbit of frame 0, planned by :func:`~vidiff.pipelines.memory.estimate_peak`
  with the same decode chunk.

Each stage's live activations are :mod:`vidiff.pipelines.memory`'s counts (the per-frame VAE's resnets, the
spatio-temporal UNet's skips, resnets and transformers); on the CPU the allocator's retention is added as
there (:func:`~vidiff.pipelines.memory.host_overhead`). The chunks change no value (the VAE is per image), so
the planner picks the fewest, largest calls whose predicted peak (× ``SAFETY_MARGIN``) fits ``max_memory``.
``tests/pipelines/test_memory_sv4d.py`` holds the predictions above peaks measured on the CPU in fresh
processes. The SV4D network has no attention chunking, so the VAE chunks are the only controls.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

from vidiff.pipelines.memory import (
    HOST_RETAINED,
    HOST_WORKSPACE,
    SAFETY_MARGIN,
    MemoryPlan,
    ModelFootprint,
    RunShape,
    _unet_activation_bytes,
    _vae_decode_bytes,
    estimate_peak,
    format_bytes,
    host_overhead,
    parse_memory,
)

__all__ = ["SV4DMemoryPlan", "SV4DRunShape", "sv4d_candidate_plans", "sv4d_estimate_peak", "sv4d_plan_for_budget"]

CHUNKS = (8, 4, 2, 1)  # the chunk sizes tried besides "all at once"
# Copies of a window's decoded pixels beside the decoder's own (its output, the rescaled, clamped and rescaled
# copies of ``SV4DPipeline.decode``, the reshaped view grid on its way into the output).
DECODED_COPIES = 4
# SD's per-frame VAE on the CPU: its counted live tensors already bound the measured peaks without glibc's
# retention factor (fresh processes, VAE widths 32/64 at 128x128: decode of 6 latents 133 MiB measured, 188
# counted; encode of 5 images 106 measured, 155 counted), so those stages are counted as live bytes.
VAE_STAGES = ("encode", "decode")


@dataclass(frozen=True)
class SV4DMemoryPlan:
    """Images per VAE encoder call and latents per decoder call (``None``: all at once)."""

    encode_chunk_size: int | None = None
    decode_chunk_size: int | None = None

    def __post_init__(self) -> None:
        for name in ("encode_chunk_size", "decode_chunk_size"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive int or None, got {v!r}")

    def describe(self) -> str:
        return (f"encode_chunk_size={self.encode_chunk_size or 'all'}, "
                f"decode_chunk_size={self.decode_chunk_size or 'all'}")


@dataclass(frozen=True)
class SV4DRunShape:
    """One SV4D run: ``num_frames`` video frames at ``height`` × ``width``, windows of ``frames`` × ``views``
    latents; ``sv3d_frames``: the SV3D orbit's frames (0: SV4D 2.0, no SV3D); dtypes as bytes per element."""

    num_frames: int
    height: int
    width: int
    frames: int
    views: int
    downsample: int = 8
    bytes_per_element: int = 2
    vae_bytes_per_element: int = 4
    device_type: str = "cuda"
    sv3d_frames: int = 0

    @property
    def latents(self) -> int:
        return self.frames * self.views

    def vae_run(self, images: int) -> RunShape:
        """The :class:`RunShape` of a VAE pass over ``images`` images (one clip of that many frames)."""
        return RunShape(batch=1, num_frames=images, height=self.height, width=self.width, guidance=False,
                        bytes_per_element=self.bytes_per_element, downsample=self.downsample,
                        vae_bytes_per_element=self.vae_bytes_per_element, device_type=self.device_type)


def _chunk(size: int | None, images: int) -> int:
    return images if size is None else min(size, images)


def sv4d_stage_activations(fp: ModelFootprint, run: SV4DRunShape,
                           plan: SV4DMemoryPlan) -> dict[str, tuple[float, float]]:
    """``(live bytes, largest tensor)`` of each stage's activations beyond what the run holds throughout."""
    pixels = 3 * run.height * run.width * run.vae_bytes_per_element  # one float32 image
    images = max(run.num_frames, run.views)
    ce = _chunk(plan.encode_chunk_size, images)
    enc_live, enc_big = _vae_decode_bytes(fp, run.vae_run(ce), ce, False)
    encode = (enc_live + 2 * images * pixels, max(enc_big, images * pixels))  # the noised copy and its cast
    network = replace(run.vae_run(run.latents), guidance=True)
    denoise = _unet_activation_bytes(fp, network, None)
    cd = _chunk(plan.decode_chunk_size, run.latents)
    dec_live, dec_big = _vae_decode_bytes(fp, run.vae_run(run.latents), cd, False)
    decode = (dec_live + DECODED_COPIES * run.latents * pixels, max(dec_big, run.latents * pixels))
    return {"encode": encode, "denoise": denoise, "decode": decode}


def _held(fp: ModelFootprint, run: SV4DRunShape) -> float:
    """Bytes held throughout: the weights, the video (read, resized, in [-1, 1]), the output grid, the input
    frames' latents and a window's sampler state (its noise, state, derivative and denoised, both branches)."""
    weights = (fp.unet_params + fp.clip_params) * run.bytes_per_element + (
        fp.vae_encoder_params + fp.vae_decoder_params) * run.vae_bytes_per_element
    image = 3 * run.height * run.width * 4
    latent = fp.latent_channels * max(1, run.height // run.downsample) * max(1, run.width // run.downsample) * 4
    video = 3 * run.num_frames * image + run.num_frames * (run.views + 1) * image
    return weights + video + run.num_frames * latent + 8 * run.latents * latent


def sv4d_estimate_peak(fp: ModelFootprint, run: SV4DRunShape, plan: SV4DMemoryPlan,
                       sv3d: ModelFootprint | None = None) -> dict[str, float]:
    """Predicted peak device bytes of each stage and overall (``peak``), as
    :func:`~vidiff.pipelines.memory.estimate_peak` counts them: on the CPU the largest stage's resident
    activations plus ``HOST_RETAINED`` of the others' (the heap they leave fragmented). ``sv3d``: the
    footprint of SV4D's SV3D_u model (its weights are held throughout, its orbit is a stage)."""
    held = _held(fp, run)
    acts = sv4d_stage_activations(fp, run, plan)
    cpu = run.device_type == "cpu"
    own = {k: (host_overhead(*a) - HOST_WORKSPACE) if cpu and k not in VAE_STAGES else a[0] for k, a in acts.items()}
    if sv3d is not None and run.sv3d_frames:
        orbit = replace(run.vae_run(run.sv3d_frames), guidance=True)
        sv3d_peak = estimate_peak(sv3d, orbit, MemoryPlan(decode_chunk_size=plan.decode_chunk_size))["peak"]
        held += (sv3d.unet_params + sv3d.clip_params) * run.bytes_per_element + (
            sv3d.vae_encoder_params + sv3d.vae_decoder_params) * run.vae_bytes_per_element
        own["sv3d"] = sv3d_peak  # its own weights included: counted twice, an upper bound
    stages = {k: held + a + (HOST_WORKSPACE if cpu else 0) for k, a in own.items()}
    if cpu:
        ranked = sorted(own.values())
        stages["peak"] = held + HOST_WORKSPACE + ranked[-1] + HOST_RETAINED * sum(ranked[:-1])
    else:
        stages["peak"] = max(stages.values())
    return stages


def sv4d_candidate_plans(run: SV4DRunShape) -> list[SV4DMemoryPlan]:
    """Every pair of chunk sizes: all at once, or each of :data:`CHUNKS` smaller than the images of a call."""
    enc = [None, *[c for c in CHUNKS if c < max(run.num_frames, run.views)]]
    dec = [None, *[c for c in CHUNKS if c < run.latents]]
    return [SV4DMemoryPlan(e, d) for e, d in itertools.product(enc, dec)]


def _cost(plan: SV4DMemoryPlan, run: SV4DRunShape) -> float:
    """Relative slow-down: more, smaller VAE calls (as ``memory._plan_cost``'s decode chunks)."""
    images = max(run.num_frames, run.views)
    calls = -(-images // _chunk(plan.encode_chunk_size, images))
    return 0.01 * (calls + -(-run.latents // _chunk(plan.decode_chunk_size, run.latents)))


def sv4d_plan_for_budget(fp: ModelFootprint, run: SV4DRunShape, max_memory: int | str,
                         sv3d: ModelFootprint | None = None) -> tuple[SV4DMemoryPlan, float]:
    """The cheapest plan whose predicted peak × ``SAFETY_MARGIN`` fits ``max_memory``, and that prediction.
    A ``ValueError`` naming the budget and the most frugal plan's need when none fits."""
    budget = parse_memory(max_memory)
    scored = [(_cost(p, run), sv4d_estimate_peak(fp, run, p, sv3d)["peak"] * SAFETY_MARGIN, p)
              for p in sv4d_candidate_plans(run)]
    fitting = [s for s in scored if s[1] <= budget]
    if not fitting:
        raise ValueError(f"max_memory={format_bytes(budget)} is too small: the most frugal controls need about "
                         f"{format_bytes(min(s[1] for s in scored))} for {run.num_frames} frames x "
                         f"{run.views} views at {run.width}x{run.height}")
    _, peak, plan = min(fitting, key=lambda s: (s[0], s[1]))
    return plan, peak
