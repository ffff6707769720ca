"""Full-reference fidelity: PSNR, SSIM, and how faithfully a video's first frame keeps its conditioning image.

- :func:`psnr` — ``10 log10(R² / MSE)`` per image, R the data range (1 for [0, 1] images); ``inf`` for
  identical images.
- :func:`ssim` — Wang et al. 2004 ("Image Quality Assessment: From Error Visibility to Structural
  Similarity", eq. 13) with their recommended settings: an 11×11 Gaussian window of σ = 1.5 (truncated at
  3.5σ, normalised to sum 1), ``C₁ = (K₁R)²``, ``C₂ = (K₂R)²``, K₁ = 0.01, K₂ = 0.03, population (1/N)
  local moments:

      SSIM(x, y) = (2μₓμᵧ + C₁)(2σₓᵧ + C₂) / ((μₓ² + μᵧ² + C₁)(σₓ² + σᵧ² + C₂)),

  averaged over the pixels whose window lies inside the image, then over channels — the values of
  ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=R, channel_axis=0)``. Computed in float64.
- :func:`first_frame_fidelity` — PSNR and SSIM of frame 0 against the conditioning image (an image-to-video
  model should reproduce it), plus both along the video (how fast it departs from the image).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["first_frame_fidelity", "gaussian_window", "psnr", "ssim"]

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # skimage/scipy: the window reaches int(3.5·σ + 0.5) = 5 pixels each side (11×11)
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _pair(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.shape != y.shape or x.ndim < 3:
        raise ValueError(f"images must be (..., C, H, W) of equal shapes, got {tuple(x.shape)} and {tuple(y.shape)}")
    return x.double(), y.double()


def psnr(x: torch.Tensor, y: torch.Tensor, *, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of each image ``(..., C, H, W)``: a tensor of shape ``(...)``."""
    a, b = _pair(x, y)
    mse = (a - b).square().mean((-3, -2, -1))
    return 10 * torch.log10(data_range**2 / mse)


def gaussian_window(sigma: float = SSIM_SIGMA, truncate: float = SSIM_TRUNCATE) -> torch.Tensor:
    """The 1-D Gaussian of scipy.ndimage.gaussian_filter (radius ``int(truncate·σ + 0.5)``, sum 1), float64."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def _blur(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter of ``(N, 1, H, W)`` over the valid region only (no padding)."""
    k = w.numel()
    return F.conv2d(F.conv2d(x, w.view(1, 1, 1, k)), w.view(1, 1, k, 1))


def ssim(x: torch.Tensor, y: torch.Tensor, *, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM of each image pair ``(..., C, H, W)`` (module docstring): a tensor of shape ``(...)``."""
    a, b = _pair(x, y)
    w = gaussian_window()
    if min(a.shape[-2:]) < w.numel():
        raise ValueError(f"SSIM needs images of at least {w.numel()}x{w.numel()} pixels, got {tuple(a.shape[-2:])}")
    lead = a.shape[:-3]
    a, b = a.reshape(-1, 1, *a.shape[-2:]), b.reshape(-1, 1, *b.shape[-2:])
    mu_x, mu_y = _blur(a, w), _blur(b, w)
    var_x = _blur(a * a, w) - mu_x.square()  # population (1/N) local moments: use_sample_covariance=False
    var_y = _blur(b * b, w) - mu_y.square()
    cov = _blur(a * b, w) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2))
    channels = x.shape[-3]
    return s.mean((-2, -1)).reshape(*lead, channels).mean(-1)


def first_frame_fidelity(video: torch.Tensor, image: torch.Tensor, *, data_range: float = 1.0) -> dict[str, object]:
    """PSNR and SSIM of ``video`` ``(T, C, H, W)`` against its conditioning ``image`` ``(C, H, W)``.

    Returns ``{"psnr": dB of frame 0, "ssim": SSIM of frame 0, "psnr_per_frame": [...], "ssim_per_frame":
    [...]}`` (per-frame lists against the same image). The image must have the video's frame size.
    """
    if video.ndim != 4 or image.ndim != 3 or video.shape[1:] != image.shape:
        raise ValueError(f"the conditioning image {tuple(image.shape)} does not match the video's frames "
                         f"{tuple(video.shape[1:]) if video.ndim == 4 else tuple(video.shape)}; resize it to the "
                         "video's size first")
    target = image.unsqueeze(0).expand_as(video)
    p, s = psnr(video, target, data_range=data_range), ssim(video, target, data_range=data_range)
    return {"psnr": float(p[0]), "ssim": float(s[0]),
            "psnr_per_frame": p.tolist(),
            "ssim_per_frame": s.tolist()}
