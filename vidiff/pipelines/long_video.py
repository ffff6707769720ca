"""Long videos from a fixed-length video denoiser: latent chaining, keyframes with in-between filling, FIFO.

Every mode is a function over any denoiser ``D(x, σ, cond) -> x̂₀`` on latents ``(B, T, C, h, w)`` with
per-frame noise levels ``σ (B, T)`` (the contract of ``vidiff.diffusion``), run through a sampler with a
per-frame schedule matrix ``S[frame, step]`` (``vidiff.diffusion.samplers``). A frame whose row of ``S`` is
constant is *held*: the sampler leaves it unchanged and the network sees it as conditioning (at
``hold_sigma``; 0 = clean). That one mechanism carries all modes:

* ``chain``: windows of the model's length overlapping by K frames; the overlap is the previous window's
  *latents*, held, and the new frames are sampled jointly with them (no decode/encode round trip). Each new
  window's latents are matched per channel to the first window's mean and std (no drift of the statistics).
* ``keyframes`` (NUWA-XL's "diffusion over diffusion", Yin et al. 2023): a first pass samples keyframes
  spread over the whole duration; each adjacent pair is then filled by a window holding both ends, sampled
  with forward and time-reversed conditioning blended per frame (TRF, Feng et al. 2024), recursively until
  every frame exists.
* ``fifo``: FIFO-Diffusion's diagonal denoising (Kim et al. 2024): a queue of frames at rising noise levels;
  each iteration moves every frame one level down, dequeues the clean head and enqueues fresh noise;
  ``partitions`` queue lengths of W frames and ``lookahead`` windows shifted by W/2.

Modes are generators of finished latents in frame order, ``(first_index, latents (B, n, C, h, w))``, so a
caller can decode and write them while the rest is sampled.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from vidiff.diffusion import initial_noise_scale, sampler_by_name
from vidiff.utils import Generators, randn

LONG_MODES = ("chain", "keyframes", "fifo")
CondFn = Callable[[Sequence[int]], Any]
Chunk = tuple[int, Tensor]


@dataclass
class WindowModel:
    """A video denoiser and what it needs to sample windows of a long video.

    ``cond(frames)``: the conditioning of a window whose frames have these absolute indices (forward:
    anchored at the start image); ``reverse_cond(frames)``: that of the time-reversed window (``frames``
    listed last to first, anchored at the window's last frame; it may return None), or None: forward only.
    ``sigmas``: the descending 1-D schedule ending at 0; ``shape``: one frame's latent ``(B, C, h, w)``;
    ``window``: frames per window (the model's clip length); ``known``: absolute frame -> latent ``(B, C, h,
    w)`` held wherever it appears (a zero first latent, an end image).
    """

    denoiser: Callable[..., Tensor]
    cond: CondFn
    sigmas: Tensor
    shape: tuple[int, int, int, int]
    window: int
    reverse_cond: CondFn | None = None
    sampler: str = "euler"
    hold_sigma: float = 0.0
    generator: Generators = None
    known: dict[int, Tensor] = field(default_factory=dict)
    callback: Callable[[dict[str, Any]], Any] | None = None
    device: torch.device | str = "cpu"
    dtype: torch.dtype = torch.float32
    bridge_sigma: float | None = None

    # ``bridge_sigma``: a window whose first and last frames are both held starts its other frames on the
    # straight line between those two latents, noised to this level (SDEdit, Meng et al. 2022), and samples
    # from there down, instead of from pure noise. For latents that are motion (flows to the first frame) the
    # line is uniform motion from one end to the other and the model puts its own on it. None: pure noise.

    def noise(self, frames: int) -> Tensor:
        b, c, h, w = self.shape
        return randn((b, frames, c, h, w), self.generator, device=self.device, dtype=self.dtype)


class BidirectionalDenoiser:
    """``D̃(x) = (1 − w)·D(x, σ, c_f) + w·flip(D(flip x, flip σ, c_b))``, ``w_t = t/(T−1)``.

    Time-reversal fusion (TRF, Feng et al. 2024, eq. 6): a window whose ends are both given is denoised
    forward (conditioned on its first frame) and backward (the frames reversed, conditioned on its last),
    each direction trusted most near its own anchor. ``cond`` is the pair ``(c_f, c_b)``.
    """

    def __init__(self, denoiser: Callable[..., Tensor]) -> None:
        self.denoiser = denoiser

    def __call__(self, x: Tensor, sigma: Tensor, cond: tuple[Any, Any]) -> Tensor:
        c_f, c_b = cond
        t = x.shape[1]
        d_f = self.denoiser(x, sigma, c_f)
        d_b = self.denoiser(x.flip(1), sigma.flip(-1) if sigma.ndim == 2 else sigma, c_b).flip(1)
        w = torch.linspace(0, 1, t, device=x.device, dtype=d_f.dtype).view(1, t, *([1] * (x.ndim - 2)))
        return (1 - w) * d_f + w * d_b


def schedule_matrix(sigmas: Tensor, frames: int, held: Sequence[int], hold_sigma: float) -> Tensor:
    """``S[frame, step]``: every frame on ``sigmas`` except the ``held`` ones, constant at ``hold_sigma``."""
    s = sigmas.to(torch.float64).repeat(frames, 1)
    for j in held:
        s[j] = hold_sigma
    return s


def sample_window(model: WindowModel, frames: Sequence[int], held: dict[int, Tensor],
                  bidirectional: bool = False) -> Tensor:
    """Sample one window of absolute ``frames`` ``(B, T, C, h, w)``; ``held``: window position -> latent
    ``(B, C, h, w)`` kept (``model.known`` frames are added). The other frames start from noise of std
    ``√(1+σ₀²)`` (the VE prior of unit-variance data, as SVD's samplers draw it)."""
    held = dict(held)
    for j, f in enumerate(frames):
        if f in model.known:
            held[j] = model.known[f]
    t = len(frames)
    sigmas = model.sigmas
    bridge = model.bridge_sigma is not None and t > 2 and 0 in held and t - 1 in held
    if bridge:  # SDEdit from the line between the two held ends: the schedule from bridge_sigma down
        sigmas = torch.cat([sigmas.new_tensor([model.bridge_sigma]), sigmas[sigmas < model.bridge_sigma]])
    scale = float(sigmas[0]) if bridge else float(initial_noise_scale(sigmas.double()))
    x = model.noise(t) * scale
    if bridge:
        a, b = held[0].to(x), held[t - 1].to(x)
        for j in range(1, t - 1):
            x[:, j] += torch.lerp(a, b, (frames[j] - frames[0]) / (frames[-1] - frames[0]))
    for j, lat in held.items():
        x[:, j] = lat.to(x) + model.hold_sigma * x[:, j] / scale
    s = schedule_matrix(sigmas, t, list(held), model.hold_sigma).to(model.device)
    back = model.reverse_cond(frames[::-1]) if bidirectional and model.reverse_cond is not None else None
    if back is not None:
        denoiser, cond = BidirectionalDenoiser(model.denoiser), (model.cond(frames), back)
    else:
        denoiser, cond = model.denoiser, model.cond(frames)
    sample = sampler_by_name(model.sampler)
    x = sample(denoiser, x, s, cond=cond, callback=model.callback, generator=model.generator)
    for j, lat in held.items():  # held frames come back exactly as given
        x[:, j] = lat.to(x)
    return x


def match_statistics(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``(x − μ_x)/σ_x·σ + μ`` per video and channel (moments over frames and pixels of ``(B, T, C, h, w)``)."""
    dims = (1, 3, 4)
    mu, sd = x.mean(dims, keepdim=True), x.std(dims, keepdim=True).clamp_min(1e-8)
    return (x - mu) / sd * std + mean


def channel_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    dims = (1, 3, 4)
    return x.mean(dims, keepdim=True), x.std(dims, keepdim=True)


def chain_starts(num_frames: int, window: int, overlap: int) -> list[int]:
    """First frame of each chained window: stride ``window − overlap``; the last one ends at the last frame."""
    check_overlap(window, overlap)
    if num_frames <= window:
        return [0]
    starts = list(range(0, num_frames - window, window - overlap))
    return [*starts, num_frames - window]


def check_overlap(window: int, overlap: int) -> None:
    if not 0 < overlap < window:
        raise ValueError(f"overlap must be between 1 and the segment length minus 1 ({window - 1}), got {overlap}")


def chain(model: WindowModel, num_frames: int, overlap: int, *, match_stats: bool = True) -> Iterator[Chunk]:
    """Latent chaining: each window holds the previous window's last latents (at least ``overlap``)."""
    w = min(model.window, num_frames)
    done, prev_start = 0, 0
    prev: Tensor | None = None  # the latents of the last window
    ref: tuple[Tensor, Tensor] | None = None
    for start in chain_starts(num_frames, w, overlap):
        frames = list(range(start, start + w))
        held = {} if prev is None else {j: prev[:, start - prev_start + j] for j in range(done - start)}
        x = sample_window(model, frames, held)
        new = x[:, done - start:]
        if match_stats and ref is None:
            ref = channel_moments(new)
        elif match_stats:
            new = match_statistics(new, *ref)
            x = torch.cat([x[:, : done - start], new], 1)
        yield done, new
        done, prev, prev_start = start + w, x, start


def keyframe_indices(first: int, last: int, count: int) -> list[int]:
    """``count`` frames spread evenly from ``first`` to ``last`` (both included), rounded, unique."""
    return sorted({round(first + (last - first) * i / (count - 1)) for i in range(count)}) if count > 1 else [first]


def keyframes(model: WindowModel, num_frames: int) -> Iterator[Chunk]:
    """Diffusion over diffusion: keyframes over the whole duration, then every gap filled recursively by
    windows holding both of its ends (:class:`BidirectionalDenoiser` when ``reverse_cond`` is set)."""
    w = min(model.window, num_frames)
    top = keyframe_indices(0, num_frames - 1, w)
    latents: dict[int, Tensor] = {}
    x = sample_window(model, top, {}, bidirectional=(num_frames - 1) in model.known)
    latents.update({f: x[:, j] for j, f in enumerate(top)})
    yield 0, latents[0][:, None]
    for a, b in itertools.pairwise(top):
        _fill(model, a, b, latents)
        yield a + 1, torch.stack([latents.pop(f) for f in range(a + 1, b)] + [latents[b]], 1)
        latents.pop(a)


def _fill(model: WindowModel, a: int, b: int, latents: dict[int, Tensor]) -> None:
    """Sample the frames strictly between the known frames ``a`` and ``b`` into ``latents``."""
    if b - a <= 1:
        return
    frames = list(range(a, b + 1)) if b - a + 1 <= model.window else keyframe_indices(a, b, model.window)
    x = sample_window(model, frames, {0: latents[a], len(frames) - 1: latents[b]}, bidirectional=True)
    latents.update({f: x[:, j] for j, f in enumerate(frames[1:-1], start=1)})
    for lo, hi in itertools.pairwise(frames):
        _fill(model, lo, hi, latents)


def fifo_windows(length: int, window: int, lookahead: bool) -> list[tuple[int, list[int]]]:
    """FIFO windows over a queue of ``length``: ``(start, positions it updates)``, head first. Without
    lookahead the queue splits into windows; with it, windows start every ``window // 2`` frames and each
    updates from its middle on (the first one all of its frames), so every frame is updated by the window
    in which it has the most frames ahead of it (Kim et al. 2024, §3.3). The paper also pads the queue's front
    with ``window // 2`` finished frames; measured on the Gaussian oracle (tests/diffusion) that padding cost
    more than it gave (2 partitions: KL to the prior 0.39 -> 0.63; 1 partition: 0.27 -> 0.38, because the live
    queue then no longer fits one window) and left the bundled model's seam ratio unchanged, so it is left out."""
    if not lookahead:
        return [(s, list(range(s, s + window))) for s in range(0, length, window)]
    half = max(1, window // 2)
    starts = list(range(0, length - window + 1, half))
    if starts[-1] != length - window:
        starts.append(length - window)
    owner = [max((r for r, s in enumerate(starts) if s + window // 2 <= j), default=0) for j in range(length)]
    return [(s, [j for j in range(length) if owner[j] == r]) for r, s in enumerate(starts)]


def fifo(model: WindowModel, num_frames: int, *, partitions: int = 1, lookahead: bool = True,
         substeps: int | None = None) -> Iterator[Chunk]:
    """FIFO-Diffusion: a queue of ``L = window·partitions`` frames at rising noise, position j at level
    ``L−1−j`` of L levels taken from ``model.sigmas``. Each iteration moves every frame one level down in
    ``substeps`` sampler steps (a per-frame ``S`` of ``substeps + 1`` columns; default: enough for
    ``len(model.sigmas) − 1`` steps per frame), then the clean head leaves and fresh noise at ``σ₀`` enters the
    tail. The queue is filled by a ramp: every frame starts at ``σ₀`` and descends to its diagonal level.
    ``model.known`` frames are held at their latents while in the queue."""
    w = model.window
    length = w * partitions
    k = substeps or max(1, math.ceil((len(model.sigmas) - 1) / length))
    grid = _resample(model.sigmas, length * k)  # level l of frame j is grid[l·k]
    scale = float(initial_noise_scale(grid))
    q = model.noise(length) * scale
    wins = fifo_windows(length, w, lookahead)
    sample = sampler_by_name(model.sampler)

    def step(first: int, level: Callable[[int], int], nxt: Callable[[int], int]) -> None:
        held = [j for j in range(length) if first + j in model.known]
        for j in held:
            q[:, j] = model.known[first + j].to(q)
        snapshot = q.clone()
        for start, owned in reversed(wins):
            pos = range(start, start + w)
            s = torch.stack([grid.new_full((k + 1,), model.hold_sigma) if j in held else
                             _path(grid, level(j) * k, nxt(j) * k, k) for j in pos]).to(model.device)
            out = sample(model.denoiser, snapshot[:, start:start + w], s, cond=model.cond([first + j for j in pos]),
                         callback=model.callback, generator=model.generator)
            q[:, owned] = out[:, [j - start for j in owned]]

    for r in range(1, length):  # ramp: position j descends from σ₀ to its diagonal level L−1−j
        step(0, lambda j, r=r: min(r - 1, length - 1 - j), lambda j, r=r: min(r, length - 1 - j))
    for i in range(num_frames):
        step(i, lambda j: length - 1 - j, lambda j: length - j)
        yield i, q[:, :1].clone()
        q = torch.cat([q[:, 1:], model.noise(1) * scale], 1)


def _path(grid: Tensor, a: int, b: int, k: int) -> Tensor:
    """``k + 1`` levels from ``grid[a]`` to ``grid[b]`` along the grid (constant when ``a == b``)."""
    return grid[a:b + 1] if b > a else grid[a].repeat(k + 1)


def _resample(sigmas: Tensor, steps: int) -> Tensor:
    """``steps`` + 1 levels following ``sigmas`` (log-linear interpolation of its nonzero part), ending at 0."""
    s = sigmas.double()
    nz = s[s > 0].log()
    pos = torch.linspace(0, len(nz) - 1, steps, dtype=torch.float64)
    lo = pos.floor().long().clamp(max=len(nz) - 1)
    hi = (lo + 1).clamp(max=len(nz) - 1)
    frac = pos - lo
    out = (nz[lo] * (1 - frac) + nz[hi] * frac).exp()
    return torch.cat([out, out.new_zeros(1)])


def generate_latents(model: WindowModel, num_frames: int, mode: str, *, overlap: int = 4,
                     match_stats: bool = True, partitions: int = 1, lookahead: bool = True,
                     substeps: int | None = None) -> Iterator[Chunk]:
    """The chunks of ``mode`` (one of :data:`LONG_MODES`) for a video of ``num_frames``."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if mode == "chain":
        return chain(model, num_frames, overlap, match_stats=match_stats)
    if mode == "keyframes":
        return keyframes(model, num_frames)
    if mode == "fifo":
        return fifo(model, num_frames, partitions=partitions, lookahead=lookahead, substeps=substeps)
    raise ValueError(f"unknown long-video mode {mode!r}; valid: {', '.join(LONG_MODES)}")


def plan_indices(mode: str, num_frames: int, window: int, overlap: int) -> dict[str, list]:
    """The frame indices a sidecar records: chained segments ``[first, last]`` or the top keyframes."""
    if mode == "chain":
        return {"segments": [[s, min(s + window, num_frames) - 1]
                             for s in chain_starts(num_frames, min(window, num_frames), overlap)]}
    if mode == "keyframes":
        return {"keyframes": keyframe_indices(0, num_frames - 1, min(window, num_frames))}
    return {"fifo_queue": [0, math.ceil(window) - 1]}
