"""SV4D (Xie et al. 2024) / SV4D 2.0 (Yao et al. 2025) sampling plans against hand computations of the scripts'
formulas (``simple_video_sample_4d.py``, ``simple_video_sample_4d2.py``, sgm's guiders).

Window starts, the dense steps' forward/backward alternation, the camera radians (numpy, as the scripts compute
them) and their sinusoid vectors, and the guidance scales of each of the ``T·V`` t-major latents.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vidiff.diffusion import spatiotemporal_scales
from vidiff.pipelines.sv4d_schedule import (
    VARIANTS,
    Pass,
    camera_vector,
    pad_frames,
    pass_for_step,
    plan_windows,
    rows,
    sv4d_cameras,
    window_angles,
)
from vidiff.utils import timestep_embedding


def test_sv4d2_4view_windows_are_0_and_9_first_zeroing_the_views() -> None:
    plan = plan_windows(VARIANTS["sv4d2"], 21)
    assert [w.frames for w in plan] == [tuple(range(0, 12)), tuple(range(9, 21))]
    assert [w.passes for w in plan] == [(Pass(tuple(range(12)), 0, True),), (Pass(tuple(range(9, 21)), 9),)]
    assert [w.frames[0] for w in plan_windows(VARIANTS["sv4d2"], 25)] == [0, 12, 13]


def test_sv4d2_8view_windows_share_one_frame() -> None:
    plan = plan_windows(VARIANTS["sv4d2_8views"], 21)
    starts = list(range(0, 21 - 5 + 1, 5 - 1))  # the script's ``range(0, n_frames - T + 1, T - 1)``
    assert [w.frames[0] for w in plan] == starts == [0, 4, 8, 12, 16]
    assert [w.passes[0].view_frame for w in plan] == starts and [w.passes[0].zero_view for w in plan] == [
        True] + [False] * 4
    with pytest.raises(ValueError, match="unrendered"):
        plan_windows(VARIANTS["sv4d2_8views"], 22)
    with pytest.raises(ValueError, match="at least 12 frames"):
        plan_windows(VARIANTS["sv4d2"], 11)


def test_sv4d_anchor_pass_then_dense_windows_alternating_backward_first() -> None:
    plan = plan_windows(VARIANTS["sv4d"], 21)
    anchors = tuple(np.arange(4, 21, 4).tolist())  # ``np.arange(T - 1, n_frames, T - 1)``
    assert plan[0].frames == anchors and plan[0].passes == (Pass(anchors, 0),)
    assert [w.frames[0] for w in plan[1:]] == np.arange(0, 20, 4).tolist()
    dense = plan[2]  # t0 = 4
    forward, backward = dense.passes
    assert forward == Pass((4, 5, 6, 7, 8), 4) and backward == Pass((8, 7, 6, 5, 4), 8)
    # ``if step % 2 == 1: forward else backward``
    assert [pass_for_step(dense, s) for s in range(4)] == [backward, forward, backward, forward]
    with pytest.raises(ValueError, match="renders 21 frames"):
        plan_windows(VARIANTS["sv4d"], 25)


def test_backward_rows_reverse_time_keep_views() -> None:
    p = Pass((8, 7, 6), 8)
    # latent_matrix[frames][:, views].flatten(0, 1): row t·V + v of the pass holds frame frames[t], view v
    assert rows(p, 2) == [4, 5, 2, 3, 0, 1]
    assert rows(Pass((6, 7, 8), 6), 2) == list(range(6))


def _script_angles(elev: list[float], azim: list[float], index: list[int], relative_polar: bool
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The scripts' lines, in numpy."""
    polars_rad = np.array([np.deg2rad(90 - e) for e in elev])
    azimuths_rad = np.array([np.deg2rad((a - azim[-1]) % 360) for a in azim])
    polars = polars_rad[index]
    azims = (azimuths_rad[index] - azimuths_rad[0]) % (math.pi * 2)
    if relative_polar:
        polars = (polars - polars_rad[0] + math.pi / 2) % (math.pi * 2)
    return polars, azims


@pytest.mark.parametrize("name", ["sv4d", "sv4d2", "sv4d2_8views"])
def test_default_cameras_match_the_scripts(name: str) -> None:
    var = VARIANTS[name]
    orbit = sv4d_cameras(var)
    if name == "sv4d":
        elev, azim = [10.0] * 21, (np.linspace(0, 360, 22)[1:] % 360).tolist()
        index = [2, 5, 7, 9, 12, 14, 16, 19]
    else:
        elev, azim = [0.0] * (var.views + 1), list(var.azimuths)
        index = list(range(1, var.views + 1))
    assert list(orbit.azimuths_deg) == pytest.approx(azim, abs=1e-12)
    p, a = window_angles(var, orbit)
    ref_p, ref_a = _script_angles(elev, azim, index, var.relative_polar)
    np.testing.assert_allclose(p.numpy(), ref_p, rtol=0, atol=1e-12)
    np.testing.assert_allclose(a.numpy(), ref_a, rtol=0, atol=1e-12)


def test_custom_cameras_relative_polar_and_azimuth() -> None:
    var = VARIANTS["sv4d2"]
    elev, azim = [5.0, -20.0, 30.0, 0.0, 80.0], [10.0, 70.0, 250.0, 190.0, 300.0]
    p, a = window_angles(var, sv4d_cameras(var, elev, azim))
    ref_p, ref_a = _script_angles(elev, azim, [1, 2, 3, 4], True)
    np.testing.assert_allclose(p.numpy(), ref_p, atol=1e-12)
    np.testing.assert_allclose(a.numpy(), ref_a, atol=1e-12)


def test_camera_vector_tiles_views_over_frames_and_uncond_zeroes_sigma() -> None:
    var = VARIANTS["sv4d2"]
    p, a = window_angles(var, sv4d_cameras(var))
    cond, uncond = camera_vector(var, p, a)
    assert cond.shape == uncond.shape == (48, 1280) and cond.dtype == torch.float32
    sigma = timestep_embedding(torch.tensor([1e-5]), 256)  # sgm's ZeroSampler: σ = 1e-5, not 0
    assert torch.equal(cond[:, :256], sigma.expand(48, -1)) and torch.equal(uncond[:, :256], torch.zeros(48, 256))
    for row in (0, 5, 47):  # row t·V + v holds view v's camera
        v = row % 4
        assert torch.equal(cond[row, 256:768], timestep_embedding(p[v:v + 1], 512)[0])
        assert torch.equal(cond[row, 768:], timestep_embedding(a[v:v + 1], 512)[0])
    assert torch.equal(cond[:, 256:], uncond[:, 256:])


def test_camera_errors_name_the_input() -> None:
    with pytest.raises(ValueError, match="azimuths: 4 values given for 5 cameras of sv4d2"):
        sv4d_cameras(VARIANTS["sv4d2"], None, [0, 1, 2, 3])
    with pytest.raises(ValueError, match="elevations: 3 values given for 21 cameras of sv4d"):
        sv4d_cameras(VARIANTS["sv4d"], [1, 2, 3])
    with pytest.raises(ValueError, match="outside"):
        sv4d_cameras(VARIANTS["sv4d2_8views"], 91)


def test_guidance_scales_closed_forms() -> None:
    lin = VARIANTS["sv4d2"].scales()
    assert torch.equal(lin, torch.linspace(1.0, 2.0, 48))  # LinearPredictionGuider(max 2, min 1): min_cfg unused
    st = VARIANTS["sv4d"].scales().view(5, 8)
    tri = [1 - abs(1 - 2 * v / 7) for v in range(8)]  # triangle over the views: 0 at both ends, 1 opposite
    for t in range(5):
        for v in range(8):
            closed = 1.0 + (2.0 - 1.0) * (0.5 * t / 4 + 0.5 * tri[v])
            assert float(st[t, v]) == pytest.approx(closed, abs=1e-6)
    st8 = VARIANTS["sv4d2_8views"].scales()
    assert float(st8.min()) == pytest.approx(1.5) and float(st8.view(5, 8)[-1].max()) == pytest.approx(
        1.5 + 1.0 * (0.5 + 0.5 * tri[4]))
    assert torch.equal(spatiotemporal_scales(1.5, 2.5, 5, 8), st8)


def test_short_videos_play_back_and_forth() -> None:
    assert pad_frames(30, 21) == list(range(21))
    assert pad_frames(12, 21) == list(range(12)) + list(range(11, 2, -1))
    with pytest.raises(ValueError, match="needs at least 11"):
        pad_frames(10, 21)
