"""The flow-consistency term on a known translation of a real photograph, and the motion head."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data as skdata

from vidiff.networks.motion import MotionPredictor, MotionPredictorConfig
from vidiff.training.objectives import flow_consistency_loss, sample_seed


def _photo_pair(shift: tuple[int, int]) -> torch.Tensor:
    """Frames (1, 2, 3, H, W): a crop of skimage's astronaut and the scene moved by ``shift`` (dx, dy)."""
    photo = np.ascontiguousarray(skdata.astronaut()[::4, ::4])
    img = torch.from_numpy(photo).permute(2, 0, 1).float() / 127.5 - 1
    dx, dy = shift
    h = w = 64
    y0, x0 = 20, 20
    f0 = img[:, y0:y0 + h, x0:x0 + w]
    f1 = img[:, y0 - dy:y0 - dy + h, x0 - dx:x0 - dx + w]  # content moves by (+dx, +dy)
    return torch.stack([f0, f1])[None]


def test_true_flow_gives_zero_loss_wrong_flow_does_not() -> None:
    dx, dy = 3, -2
    frames = _photo_pair((dx, dy))
    # backward flow of frame 0: pixel p of frame 0 is found at p + (dx, dy) in frame 1
    true = torch.zeros(1, 1, 2, 64, 64)
    true[:, :, 0], true[:, :, 1] = dx, dy
    loss_true = flow_consistency_loss(frames, true)
    assert loss_true.shape == (1,)
    assert float(loss_true) < 1e-5  # interior only: out-of-frame sample points are masked

    zero = torch.zeros_like(true)
    wrong = true.clone()
    wrong[:, :, 0] = -dx
    contrast = float((frames[:, 0] - frames[:, 0].mean()).abs().mean())
    for bad in (zero, wrong):
        assert float(flow_consistency_loss(frames, bad)) > 0.1 * contrast

    # sub-pixel: the loss is continuous and minimal near the true flow along a 1-D sweep
    sweep = [float(flow_consistency_loss(frames, true + torch.tensor([e, 0.0]).view(1, 1, 2, 1, 1)))
             for e in (-1.0, -0.5, 0.0, 0.5, 1.0)]
    assert int(np.argmin(sweep)) == 2

    # differentiable in the flow as well as in the frames
    f = zero.clone().requires_grad_(True)
    flow_consistency_loss(frames, f).sum().backward()
    assert f.grad is not None and float(f.grad.abs().sum()) > 0


def test_motion_predictor_shapes_and_identity_init() -> None:
    head = MotionPredictor(MotionPredictorConfig(in_channels=4, hidden_channels=16))
    x = torch.randn(2, 5, 4, 8, 8)
    flow = head(x)
    assert flow.shape == (2, 4, 2, 8, 8)
    assert torch.count_nonzero(flow) == 0  # zero-initialised output: identity warp
    with pytest.raises(ValueError, match="channels"):
        head(torch.randn(1, 3, 3, 8, 8))


def test_sample_seeds_are_distinct() -> None:
    seeds = {sample_seed(0, s, p) for s in range(20) for p in range(20)}
    assert len(seeds) == 400
