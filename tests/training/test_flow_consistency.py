"""The flow-consistency term judges the prediction by the clean clip's motion (fixed estimator, no gradient).

The clip is a real photograph (scikit-image's astronaut) panning by a known whole number of pixels per
frame, so its flow is known in closed form. The prediction is the output of a network that ignores its
input and returns a trainable video, with x₀-prediction (``c_skip = 0``, ``c_out = 1``): the denoised
prediction the term reads is exactly that video.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data as skdata
from torch import nn

from vidiff.networks.motion import MotionPredictor, MotionPredictorConfig
from vidiff.training.config import ConfigError, LossConfig, TrainConfig
from vidiff.training.objectives import DiffusionObjective, reference_flow, sample_draws

SIZE, FRAMES, SHIFT = 48, 4, (2, -1)  # content moves by (+2, −1) px per frame


def _panning_clip() -> torch.Tensor:
    """``(1, T, 3, H, W)`` in [-1, 1]: a window onto the photograph that pans, so the content moves by SHIFT."""
    photo = np.ascontiguousarray(skdata.astronaut()[::4, ::4])
    img = torch.from_numpy(photo).permute(2, 0, 1).float() / 127.5 - 1
    dx, dy = SHIFT
    y0 = x0 = 30
    frames = [img[:, y0 - k * dy:y0 - k * dy + SIZE, x0 - k * dx:x0 - k * dx + SIZE] for k in range(FRAMES)]
    return torch.stack(frames)[None]


class _VideoNet(nn.Module):
    """A network whose output is one trainable video, whatever its input (x₀-prediction reads it as D)."""

    def __init__(self, video: torch.Tensor) -> None:
        super().__init__()
        self.video = nn.Parameter(video.clone())

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: object) -> torch.Tensor:
        return self.video.expand_as(x)


def _objective(prediction: torch.Tensor, head: nn.Module | None = None) -> DiffusionObjective:
    cfg = LossConfig(objective="edm", scaling="x0", weighting="unit", sigma_data=1.0, flow_weight=1.0)
    return DiffusionObjective(_VideoNet(prediction), cfg, head)


def _flow_term(prediction: torch.Tensor, clip: torch.Tensor) -> float:
    return float(_terms(_objective(prediction), clip)["flow"].detach())


def _terms(objective: DiffusionObjective, x0: torch.Tensor) -> dict[str, torch.Tensor]:
    draws = sample_draws(objective.cfg, seed=0, step=0, positions=[0], image_shape=(3, SIZE, SIZE),
                         latent_shape=tuple(x0.shape[1:]), device=x0.device)
    return objective(x0, None, draws)


def test_reference_flow_recovers_the_known_pan() -> None:
    clip = _panning_clip()
    flow = reference_flow(clip)  # backward flow: frame i at p is frame i+1 at p + SHIFT
    assert flow.shape == (1, FRAMES - 1, 2, SIZE, SIZE)
    inner = flow[..., 8:-8, 8:-8]
    assert torch.allclose(inner[:, :, 0].mean(), torch.tensor(float(SHIFT[0])), atol=0.15)
    assert torch.allclose(inner[:, :, 1].mean(), torch.tensor(float(SHIFT[1])), atol=0.15)
    # latents (any channel count but 3) are read through their channel mean
    latents = torch.cat([clip, clip[:, :, :1]], dim=2) * 0.3 + 0.1
    flow4 = reference_flow(latents)[..., 8:-8, 8:-8]
    assert abs(float(flow4[:, :, 0].mean()) - SHIFT[0]) < 0.3 and abs(float(flow4[:, :, 1].mean()) - SHIFT[1]) < 0.3


def test_a_still_prediction_of_a_moving_clip_costs_more_than_the_clip() -> None:
    clip = _panning_clip()
    still = clip[:, :1].expand_as(clip).contiguous()  # frame 0 repeated: no motion at all
    at_truth, at_still = _flow_term(clip, clip), _flow_term(still, clip)
    contrast = float((clip - clip.mean()).abs().mean())
    assert at_truth < 0.05 * contrast  # the clip is consistent with its own motion
    assert at_still > 0.2 * contrast  # a still prediction is not: the term does not reward killing motion
    assert at_truth < 0.2 * at_still


def test_gradient_at_a_still_prediction_points_towards_the_motion() -> None:
    clip = _panning_clip()
    still = clip[:, :1].expand_as(clip).contiguous()
    objective = _objective(still)
    _terms(objective, clip)["flow"].sum().backward()
    grad = objective.unet.video.grad
    assert grad is not None
    # a gradient-descent step moves the prediction towards the moving clip: −∇L · (clip − still) > 0
    towards = float(-(grad * (clip - still)).sum())
    assert towards > 0.1 * float(grad.norm() * (clip - still).norm())


def test_no_gradient_reaches_the_flow_and_the_head_never_judges_the_prediction() -> None:
    clip = _panning_clip().requires_grad_(True)
    head = MotionPredictor(MotionPredictorConfig(in_channels=3, hidden_channels=8))
    objective = _objective(torch.rand_like(clip), head)
    assert reference_flow(clip).grad_fn is None
    terms = _terms(objective, clip)
    # the flow term reaches the prediction, and nothing else: not the clip (through its flow), not the head
    grads = torch.autograd.grad(terms["flow"].sum(), [clip, objective.unet.video, *head.parameters()],
                                allow_unused=True)
    assert grads[0] is None or torch.count_nonzero(grads[0]) == 0  # (c_skip = 0 keeps x in the graph)
    assert grads[1] is not None and float(grads[1].abs().sum()) > 0
    assert all(g is None for g in grads[2:])
    # the head learns the clip's flow from the clip: its term does not depend on the prediction
    other = _objective(torch.randn_like(clip), head)
    assert torch.equal(_terms(other, clip)["motion_head"], terms["motion_head"])
    assert float(terms["motion_head"].detach()) > 1.0  # zero-initialised head vs a |(2, −1)| px/frame pan
    head_grads = torch.autograd.grad(terms["motion_head"].sum(), list(head.parameters()), allow_unused=True)
    assert any(g is not None and float(g.abs().sum()) > 0 for g in head_grads)


@pytest.mark.parametrize("model", [{"residual": True}, {"autoencoder": "flow"}])
def test_the_term_is_refused_where_the_latents_are_not_frames(model: dict) -> None:
    data = {"output_dir": "unused", "model": model, "loss": {"flow_weight": 0.5}}
    with pytest.raises(ConfigError, match=r"loss\.flow_weight"):
        TrainConfig.from_dict(data)
    TrainConfig.from_dict(data | {"loss": {"flow_weight": 0.0}})  # without the term the model is fine
