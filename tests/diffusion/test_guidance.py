"""Classifier-free guidance and per-frame guidance ramps, against closed forms."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from vidiff.diffusion import (
    FRAME_SCALES,
    CFGDenoiser,
    Denoiser,
    VScalingEDMcNoise,
    cat_conds,
    constant_scales,
    frame_scales,
    linear_frame_scales,
    per_frame,
    triangle_frame_scales,
)
from vidiff.utils import append_dims


def test_linear_frame_scales_closed_form() -> None:
    T, lo, hi = 14, 1.0, 3.0
    scales = linear_frame_scales(lo, hi, T)
    assert scales.shape == (T,) and scales.dtype == torch.float32
    expected = torch.tensor([lo + (hi - lo) * i / (T - 1) for i in range(T)])
    torch.testing.assert_close(scales, expected, rtol=0, atol=1e-6)
    assert scales[0].item() == lo and scales[-1].item() == hi


@pytest.mark.parametrize("T", [1, 2, 8, 21, 25])
def test_triangle_frame_scales_closed_form(T: int) -> None:
    lo, hi = 1.0, 2.5
    scales = triangle_frame_scales(lo, hi, T)
    v = [i / (T - 1) if T > 1 else 0.0 for i in range(T)]
    expected = torch.tensor([lo + (hi - lo) * 2 * min(u, 1 - u) for u in v])  # 0 at the ends, 1 mid-way
    torch.testing.assert_close(scales, expected, rtol=0, atol=1e-6)


def test_triangle_sv3d_21_frames() -> None:
    scales = triangle_frame_scales(1.0, 2.5, 21)
    assert scales[0].item() == pytest.approx(1.0) and scales[20].item() == pytest.approx(1.0)
    assert scales.argmax().item() == 10 and scales[10].item() == pytest.approx(2.5)
    torch.testing.assert_close(scales[:10], scales[11:].flip(0))  # symmetric about the middle frame


def test_constant_scales_and_shaping() -> None:
    torch.testing.assert_close(constant_scales(2.0, 5), torch.full((5,), 2.0))
    assert per_frame(linear_frame_scales(1, 3, 7)).shape == (1, 7, 1, 1, 1)
    assert set(FRAME_SCALES) == {"linear", "triangle"}
    with pytest.raises(ValueError):
        per_frame(torch.ones(2, 3))


@dataclass(frozen=True)
class Cond:
    """A conditioning object that batches itself (like vidiff.conditioning.Cond)."""

    k: torch.Tensor

    def cat(self, other: Cond) -> Cond:
        return Cond(torch.cat([self.k, other.k]))


def _k(cond) -> torch.Tensor:
    if isinstance(cond, torch.Tensor):
        return cond
    if isinstance(cond, dict):
        return cond["k"]
    return cond.k


class Linear:
    """D(x, σ, c) = k_c·x + σ (per-sample k from the conditioning); records batch sizes."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, x, sigma, cond):
        self.batches.append(x.shape[0])
        return append_dims(_k(cond).to(x.dtype), x.ndim) * x + append_dims(sigma, x.ndim)


@pytest.mark.parametrize("wrap", [lambda k: k, lambda k: {"k": k}, Cond], ids=["tensor", "mapping", "cat"])
def test_cfg_is_affine_combination_per_frame(wrap) -> None:
    B, T = 2, 5
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, T, 3, 2, 2, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.7, 3.0], dtype=torch.float64)
    k_u, k_c = torch.tensor([0.1, 0.2]), torch.tensor([0.9, -0.4])
    scales = linear_frame_scales(1.0, 3.0, T)
    den = Linear()
    out = CFGDenoiser(den, wrap(k_u), per_frame(scales))(x, sigma, wrap(k_c))
    assert den.batches == [2 * B]  # one batched call
    for b in range(B):
        for t in range(T):
            d_u = k_u[b].item() * x[b, t] + sigma[b].item()
            d_c = k_c[b].item() * x[b, t] + sigma[b].item()
            torch.testing.assert_close(out[b, t], d_u + scales[t].item() * (d_c - d_u), rtol=1e-6, atol=1e-6)


def test_cfg_scale_one_skips_the_unconditional_branch() -> None:
    x = torch.randn(3, 4, 2, 1, 1)
    sigma = torch.full((3,), 2.0)
    for scale in (1.0, per_frame(constant_scales(1.0, 4))):
        den = Linear()
        out = CFGDenoiser(den, torch.zeros(3), scale)(x, sigma, torch.full((3,), 0.5))
        assert den.batches == [3]
        torch.testing.assert_close(out, 0.5 * x + 2.0)


def test_cfg_on_denoised_equals_cfg_on_v() -> None:
    """D is affine in the network output, so guiding D is guiding v (diffusers' SVD pipeline)."""
    scaling, s = VScalingEDMcNoise(), 2.5
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 2, 2, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.5, 9.0], dtype=torch.float64)

    def network(x_in, c_noise, cond):
        return torch.tanh(x_in * append_dims(cond, x_in.ndim)) + append_dims(c_noise, x_in.ndim)

    u, c = torch.tensor([0.0, 0.0], dtype=torch.float64), torch.tensor([1.5, -0.5], dtype=torch.float64)
    out = CFGDenoiser(Denoiser(network, scaling), u, s)(x, sigma, c)
    c_skip, c_out, c_in, c_noise = scaling(sigma)
    c_skip, c_out, c_in = (append_dims(v, x.ndim) for v in (c_skip, c_out, c_in))
    v_u, v_c = network(c_in * x, c_noise, u), network(c_in * x, c_noise, c)
    torch.testing.assert_close(out, c_skip * x + c_out * (v_u + s * (v_c - v_u)))


def test_cat_conds_rules() -> None:
    assert cat_conds(None, None) is None
    out = cat_conds({"a": torch.ones(1, 2), "b": None}, {"a": torch.zeros(1, 2), "b": None})
    assert out["a"].shape == (2, 2) and out["b"] is None
    with pytest.raises(KeyError):
        cat_conds({"a": torch.ones(1)}, {"b": torch.ones(1)})
    with pytest.raises(TypeError):
        cat_conds(1, 2)
    with pytest.raises(ValueError):
        CFGDenoiser(Linear(), None, linear_frame_scales(1, 3, 4))  # (T,) must be shaped with per_frame


def test_known_values_denoiser_samples_the_conditional_exactly() -> None:
    """Data (a, b) with a ≡ 0.7 (a point mass) and b ~ N(0, 1). A denoiser that is ideal for b but wrong for
    a (it returns x_a) is made ideal by pinning a: Euler sampling then gives a = 0.7 exactly and leaves b as
    it was (about unit variance, within the 40-step Euler error), while the unwrapped denoiser leaves a at
    noise."""
    from vidiff.diffusion import KnownValuesDenoiser, karras_sigmas, sample_euler

    def partly_wrong(x: torch.Tensor, sigma: torch.Tensor, cond: object) -> torch.Tensor:
        s2 = append_dims(sigma, x.ndim) ** 2
        return torch.stack([x[:, 0], x[:, 1] / (1 + s2[:, 0])], dim=1)  # E[b | x_b] = x_b / (1 + σ²)

    mask = torch.tensor([True, False]).view(1, 2)
    pinned = KnownValuesDenoiser(partly_wrong, mask, 0.7)
    sigmas = karras_sigmas(40, 0.002, 80.0, 7.0).double()
    x = torch.randn(20000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * sigmas[0]
    out = sample_euler(pinned, x, sigmas)
    plain = sample_euler(partly_wrong, x, sigmas)
    assert torch.equal(out[:, 0], torch.full_like(out[:, 0], 0.7))
    assert torch.equal(out[:, 1], plain[:, 1]) and 0.8 < out[:, 1].var().item() < 1.1
    assert plain[:, 0].abs().mean() > 1.0  # without it a keeps the noise


def test_frame_scales_selects_through_the_registry() -> None:
    for name, ramp in FRAME_SCALES.items():
        torch.testing.assert_close(frame_scales(name, 1.0, 2.5, 9), ramp(1.0, 2.5, 9), rtol=0, atol=0)
    with pytest.raises(ValueError, match="unknown guidance ramp 'cosine'; valid: linear, triangle"):
        frame_scales("cosine", 1.0, 2.5, 9)
