"""Dense optical flow in pure torch, backward warping, and flow-based motion measures.

Flow convention (the one OpenCV's Farnebäck and the flow-consistency loss use): ``flow (N, 2, H, W)`` in
pixels, channels ``(dx, dy)``, such that ``frame0(p) ≈ frame1(p + flow(p))``; pixel centres sit at integer
coordinates ``0 … W−1`` / ``0 … H−1``. So :func:`warp` ``(frame1, flow)`` reproduces ``frame0``.

The estimator is the combined local–global (CLG) method of Bruhn, Weickert & Schnörr (2005): Horn &
Schunck's (1981) quadratic data + smoothness energy whose data term is the Gaussian-weighted structure
tensor of Lucas & Kanade (1981),

    E(u, v) = Σ_p  w(p)ᵀ (K_ρ * ∇₃I ∇₃Iᵀ) w(p)  +  α² (|∇u|² + |∇v|²),    w = (du, dv, 1),

minimised by Jacobi iterations of its Euler–Lagrange equations (Horn & Schunck eq. 14 with the 2×2
structure tensor in place of the rank-one ``∇I ∇Iᵀ``), coarse to fine on an image pyramid with warping
(the linearisation is re-done around the current flow at each warp; Brox et al. 2004) and a median filter
of the flow after each warp (Sun, Roth & Black 2010). Grayscale intensities are in [0, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vidiff.utils import warp

__all__ = ["estimate_flow", "flow_magnitude", "flow_to_first", "mean_flow_magnitude", "to_gray", "video_flow", "warp"]

# Horn & Schunck's weighted neighbourhood average (their eq. 9 Laplacian approximation).
_HS_AVG = torch.tensor([[1.0, 2.0, 1.0], [2.0, 0.0, 2.0], [1.0, 2.0, 1.0]]) / 12.0
# Five-point central derivative, more accurate on sub-pixel shifts than [-1, 0, 1] / 2.
_DERIV = torch.tensor([1.0, -8.0, 0.0, 8.0, -1.0]) / 12.0


def to_gray(x: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` → ``(N, 1, H, W)`` luma (BT.601 weights for C = 3; C = 1 is returned as is)."""
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected (N, 1 or 3, H, W), got {tuple(x.shape)}")
    if x.shape[1] == 1:
        return x
    w = x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _conv_sep(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Separable 2D filter with replicate padding; ``k`` is 1D of odd length."""
    r = k.numel() // 2
    c = x.shape[1]
    kx = k.to(x).view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    ky = k.to(x).view(1, 1, -1, 1).repeat(c, 1, 1, 1)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), kx, groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), ky, groups=c)


def _gaussian(sigma: float) -> torch.Tensor:
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).float()


def _deriv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    k = _DERIV.to(x)
    xp = F.pad(x, (2, 2, 2, 2), mode="replicate")
    dx = F.conv2d(xp[:, :, 2:-2], k.view(1, 1, 1, 5))
    dy = F.conv2d(xp[:, :, :, 2:-2], k.view(1, 1, 5, 1))
    return dx, dy


def _neighbour_avg(u: torch.Tensor) -> torch.Tensor:
    return F.conv2d(F.pad(u, (1, 1, 1, 1), mode="replicate"), _HS_AVG.to(u).view(1, 1, 3, 3).repeat(
        u.shape[1], 1, 1, 1), groups=u.shape[1])


def _median3(flow: torch.Tensor) -> torch.Tensor:
    n, c, h, w = flow.shape
    patches = F.unfold(F.pad(flow, (1, 1, 1, 1), mode="replicate"), 3).view(n, c, 9, h, w)
    return patches.median(dim=2).values


def _downsample(x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    return F.interpolate(x, size=(max(1, round(h / 2)), max(1, round(w / 2))), mode="bilinear",
                         antialias=True, align_corners=False)


def _refine(i0: torch.Tensor, i1: torch.Tensor, flow: torch.Tensor, alpha: float, rho: float,
            warps: int, iterations: int) -> torch.Tensor:
    """Warping iterations of CLG at one pyramid level."""
    h, w = i0.shape[-2:]
    k_rho = _gaussian(rho) if rho > 0 else None
    a2 = alpha * alpha
    for _ in range(warps):
        i1w = warp(i1, flow)
        ys = torch.arange(h, device=i0.device, dtype=flow.dtype).view(1, 1, h, 1)
        xs = torch.arange(w, device=i0.device, dtype=flow.dtype).view(1, 1, 1, w)
        px, py = xs + flow[:, :1], ys + flow[:, 1:]
        inside = ((px >= 0) & (px <= w - 1) & (py >= 0) & (py <= h - 1)).to(i0.dtype)
        gx0, gy0 = _deriv(i0)
        gx1, gy1 = _deriv(i1w)
        ix, iy, it = 0.5 * (gx0 + gx1) * inside, 0.5 * (gy0 + gy1) * inside, (i1w - i0) * inside
        j = torch.cat([ix * ix, ix * iy, iy * iy, ix * it, iy * it], dim=1)  # motion tensor entries
        if k_rho is not None:
            j = _conv_sep(j, k_rho)
        j11, j12, j22, j13, j23 = j.unbind(1)
        a, b, d = a2 + j11, j12, a2 + j22
        det = a * d - b * b
        u0, v0 = flow[:, 0], flow[:, 1]
        du, dv = torch.zeros_like(u0), torch.zeros_like(v0)
        for _ in range(iterations):
            avg = _neighbour_avg(torch.stack([u0 + du, v0 + dv], dim=1))
            ru = a2 * (avg[:, 0] - u0) - j13
            rv = a2 * (avg[:, 1] - v0) - j23
            du = (d * ru - b * rv) / det
            dv = (a * rv - b * ru) / det
        flow = _median3(flow + torch.stack([du, dv], dim=1))
    return flow


@torch.no_grad()
def estimate_flow(frame0: torch.Tensor, frame1: torch.Tensor, *, alpha: float = 0.02, rho: float = 2.0,
                  sigma: float = 0.8, levels: int | None = None, min_size: int = 12, warps: int = 3,
                  iterations: int = 40) -> torch.Tensor:
    """Dense flow ``(N, 2, H, W)`` in pixels with ``frame0(p) ≈ frame1(p + flow(p))``.

    ``frame0, frame1``: ``(N, C, H, W)`` in [0, 1], C = 1 or 3 (converted to luma). ``alpha`` weighs
    smoothness (intensity units of [0, 1] per pixel), ``rho`` is the structure-tensor Gaussian (CLG;
    0 gives Horn–Schunck), ``sigma`` the pre-smoothing. The pyramid halves the size down to ``min_size``
    pixels on the short side (or ``levels`` levels). Coarse to fine, ``warps`` re-linearisations per
    level with ``iterations`` Jacobi sweeps each (see the module docstring for the energy).
    """
    if frame0.shape != frame1.shape:
        raise ValueError(f"frames differ in shape: {tuple(frame0.shape)} vs {tuple(frame1.shape)}")
    dtype = frame0.dtype if frame0.dtype in (torch.float32, torch.float64) else torch.float32
    i0, i1 = to_gray(frame0.to(dtype)), to_gray(frame1.to(dtype))
    if sigma > 0:
        k = _gaussian(sigma)
        i0, i1 = _conv_sep(i0, k), _conv_sep(i1, k)
    pyramid = [(i0, i1)]
    while (levels is None or len(pyramid) < levels) and min(pyramid[-1][0].shape[-2:]) >= 2 * min_size:
        a, b = pyramid[-1]
        pyramid.append((_downsample(a), _downsample(b)))
    n = i0.shape[0]
    flow = None
    for a, b in reversed(pyramid):
        h, w = a.shape[-2:]
        if flow is None:
            flow = a.new_zeros(n, 2, h, w)
        else:
            sy, sx = h / flow.shape[-2], w / flow.shape[-1]
            flow = F.interpolate(flow, size=(h, w), mode="bilinear", align_corners=False)
            flow = flow * flow.new_tensor([sx, sy]).view(1, 2, 1, 1)
        flow = _refine(a, b, flow, alpha, rho, warps, iterations)
    return flow


def flow_magnitude(flow: torch.Tensor) -> torch.Tensor:
    """Per-pixel Euclidean length ``(N, H, W)`` of ``flow (N, 2, H, W)``."""
    return torch.linalg.vector_norm(flow, dim=1)


def video_flow(video: torch.Tensor, **kwargs: float) -> torch.Tensor:
    """Flows between consecutive frames of ``video (T, C, H, W)`` in [0, 1]: ``(T−1, 2, H, W)``."""
    if video.ndim != 4 or video.shape[0] < 2:
        raise ValueError(f"video must be (T >= 2, C, H, W), got {tuple(video.shape)}")
    return estimate_flow(video[:-1], video[1:], **kwargs)


def flow_to_first(video: torch.Tensor, **kwargs: float) -> torch.Tensor:
    """Flow of every frame back to frame 0, ``(T, 2, H, W)`` with ``video[t](p) ≈ video[0](p + f_t(p))``.

    Chained from consecutive flows, which stay small where the flow to frame 0 would be too large to
    estimate: ``f_t(p) = g_t(p) + f_{t−1}(p + g_t(p))`` with ``g_t`` the flow from frame t to frame t−1
    (``f_0 = 0``). ``video (T, C, H, W)`` in [0, 1].
    """
    if video.ndim != 4:
        raise ValueError(f"video must be (T, C, H, W), got {tuple(video.shape)}")
    flows = [video.new_zeros(1, 2, *video.shape[-2:])]
    if video.shape[0] > 1:
        back = estimate_flow(video[1:], video[:-1], **kwargs)  # g_t, t = 1 … T−1
        for g in back.split(1):
            flows.append(g + warp(flows[-1], g))
    return torch.cat(flows)


def mean_flow_magnitude(video: torch.Tensor, *, reference_width: int | None = None,
                        **kwargs: float) -> float:
    """Mean over pixels and consecutive frame pairs of ``|flow|``, in pixels per frame.

    ``video (T, C, H, W)`` in [0, 1]. With ``reference_width`` the value is rescaled to what it would be on
    frames resized to that width (flow scales linearly with resolution), so clips of different sizes
    compare. A single frame has no motion (0.0).
    """
    if video.ndim != 4:
        raise ValueError(f"video must be (T, C, H, W), got {tuple(video.shape)}")
    if video.shape[0] < 2:
        return 0.0
    mag = flow_magnitude(video_flow(video, **kwargs)).mean().item()
    return mag * (reference_width / video.shape[-1]) if reference_width else mag
