"""Numerical parity of vidiff's Wan transformer with diffusers' WanTransformer3DModel (the oracle).

Both get the same random weights (diffusers' state dict loaded into vidiff's with strict=True) and the
same inputs; diffusers takes (B, C, T, H, W) and a separate image-token argument, vidiff (B, T, C, H, W)
and a conditioning object.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import diffusers
import pytest
import torch

from vidiff.networks.dit_wan import WAN_PRESETS, WanConfig, WanTransformer3D, rope_angles

TOL = 1e-5


@dataclass(frozen=True)
class _Cond:
    crossattn: torch.Tensor
    concat: torch.Tensor | None = None
    image: torch.Tensor | None = None


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).norm() / ref.norm()).item()


def _oracle(cfg: WanConfig, seed: int = 0) -> torch.nn.Module:
    """diffusers' model with every parameter redrawn (norm scales away from 1, tables of order 1)."""
    ref = diffusers.WanTransformer3DModel(**cfg.to_dict()).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(ref.named_parameters()):
            noise = torch.randn(p.shape, generator=gen)
            if "scale_shift_table" in name or "pos_embed" in name:
                p.copy_(noise)
            elif p.ndim >= 2:
                p.copy_(noise / math.sqrt(math.prod(p.shape[1:])))
            elif name.endswith("weight"):
                p.copy_(1 + 0.2 * noise)
            else:
                p.copy_(0.1 * noise)
    return ref


def _pair(name: str) -> tuple[WanConfig, torch.nn.Module, WanTransformer3D]:
    cfg = WAN_PRESETS[name]
    ref = _oracle(cfg)
    model = WanTransformer3D(cfg).eval()
    model.load_state_dict(ref.state_dict(), strict=True)
    return cfg, ref, model


def _inputs(cfg: WanConfig, b: int = 2, t: int = 3, h: int = 4, w: int = 6, tokens: int = 7, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, cfg.out_channels, h, w, generator=gen)
    concat = torch.randn(b, t, cfg.in_channels - cfg.out_channels, h, w, generator=gen)
    text = torch.randn(b, tokens, cfg.text_dim, generator=gen)
    timestep = torch.rand(b, generator=gen) * 1000  # different per sample
    return x, concat, text, timestep


def _ref_forward(ref, x, concat, text, timestep, image=None):
    hidden = torch.cat([x, concat], dim=2).transpose(1, 2)  # (B, C, T, H, W)
    out = ref(hidden, timestep, text, encoder_hidden_states_image=image, return_dict=False)[0]
    return out.transpose(1, 2)


def test_t2v_matches_diffusers() -> None:
    cfg, ref, model = _pair("tiny-t2v")
    x, concat, text, timestep = _inputs(cfg)
    with torch.no_grad():
        expected = _ref_forward(ref, x, concat, text, timestep)
        out = model(x, timestep, _Cond(text))
    assert out.shape == x.shape
    assert _rel(out, expected) <= TOL


def test_i2v_with_image_tokens_matches_diffusers() -> None:
    """Wan 2.1 I2V: concat channels and CLIP tokens through the added key/value projections."""
    cfg, ref, model = _pair("tiny-i2v")
    x, concat, text, timestep = _inputs(cfg, t=2, h=2, w=4)
    # diffusers hard-codes 512 text tokens when splitting image from text tokens.
    text = torch.randn(2, 512, cfg.text_dim, generator=torch.Generator().manual_seed(3))
    image = torch.randn(2, 5, cfg.image_dim, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = _ref_forward(ref, x, concat, text, timestep, image)
        out = model(x, timestep, _Cond(text, concat=concat, image=image))
        no_image = model(x, timestep, _Cond(text, concat=concat, image=torch.zeros_like(image)))
    assert _rel(out, expected) <= TOL
    assert _rel(no_image, expected) > 1e-3  # the image tokens matter


def test_per_frame_timesteps_match_diffusers_per_token() -> None:
    """A (B, T) c_noise equals diffusers' per-token timesteps (Wan 2.2 TI2V) repeated over each frame."""
    cfg, ref, model = _pair("tiny-t2v")
    x, concat, text, _ = _inputs(cfg, t=3, h=4, w=4)
    per_frame = torch.tensor([[0.0, 500.0, 900.0], [10.0, 20.0, 999.0]])
    per_token = per_frame.repeat_interleave(2 * 2, dim=1)  # (B, F·H'·W')
    with torch.no_grad():
        expected = _ref_forward(ref, x, concat, text, per_token)
        out = model(x, per_frame, _Cond(text))
        uniform = model(x, per_frame[:, 1], _Cond(text))
    assert _rel(out, expected) <= TOL
    assert _rel(uniform, expected) > 1e-3


def test_rope_split_matches_wan_head_partition() -> None:
    """Head dim 128 splits 44/42/42 (t = d − 4⌊d/6⌋); frame angles vary only along frames."""
    cos, sin = rope_angles(128, (3, 2, 2))
    assert cos.shape == (12, 64)
    grid = cos.reshape(3, 2, 2, 64)
    assert torch.equal(grid[:, 0, 0, :22], grid[:, 1, 1, :22])  # frame part independent of (h, w)
    assert not torch.equal(grid[0, 0, 0, :22], grid[1, 0, 0, :22])
    assert torch.equal(grid[:, :, 0, 22:43], grid[:, :, 1, 22:43])  # height part independent of w
    torch.testing.assert_close(cos**2 + sin**2, torch.ones_like(cos))
    # pair 1 of the frame part turns by θ^(−2/44) per frame
    torch.testing.assert_close(torch.atan2(sin[4 * 1, 1], cos[4 * 1, 1]), torch.tensor(10000.0 ** (-2 / 44)))


def test_presets_have_released_sizes() -> None:
    counts = {name: sum(p.numel() for p in diffusers.WanTransformer3DModel(**WAN_PRESETS[name].to_dict())
                        .parameters()) for name in ("tiny-t2v",)}
    model = WanTransformer3D(WAN_PRESETS["tiny-t2v"])
    assert sum(p.numel() for p in model.parameters()) == counts["tiny-t2v"]
    with torch.device("meta"):
        n13 = sum(p.numel() for p in WanTransformer3D(WAN_PRESETS["wan2.1-t2v-1.3b"]).parameters())
        n5 = sum(p.numel() for p in WanTransformer3D(WAN_PRESETS["wan2.2-ti2v-5b"]).parameters())
        n14 = sum(p.numel() for p in WanTransformer3D(WAN_PRESETS["wan2.1-t2v-14b"]).parameters())
    assert 1.2e9 < n13 < 1.5e9 and 4.5e9 < n5 < 5.5e9 and 13e9 < n14 < 15e9


def test_bad_inputs_are_named() -> None:
    model = WanTransformer3D(WAN_PRESETS["tiny-i2v"])
    x = torch.randn(1, 2, 4, 4, 4)
    with pytest.raises(ValueError, match="in_channels=12"):
        model(x, torch.tensor([1.0]), _Cond(torch.randn(1, 3, 16)))
    with pytest.raises(ValueError, match="image_dim"):
        WanConfig(image_dim=1280)
    with pytest.raises(ValueError, match="bogus"):
        WanConfig.from_dict({"_class_name": "WanTransformer3DModel", "num_layers": 2, "bogus": 1})
    assert WanConfig.from_dict(WAN_PRESETS["tiny-i2v"].to_diffusers()) == WAN_PRESETS["tiny-i2v"]
    with pytest.raises(ValueError, match="divisible"):
        model(torch.randn(1, 2, 4, 3, 4), torch.tensor([1.0]), _Cond(torch.randn(1, 3, 16)))
