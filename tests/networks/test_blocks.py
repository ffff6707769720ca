"""Block-level parity with diffusers' modules (the oracle) for the options the full UNet does not exercise:
merge strategies, image-only frames, blocks without time embedding (as a temporal VAE uses them)."""

from __future__ import annotations

import pytest
import torch
from diffusers.models import resnet as diffusers_resnet
from diffusers.models.transformers import transformer_temporal as diffusers_tt

from vidiff.networks.resnet import AlphaBlender, SpatioTemporalResBlock
from vidiff.networks.transformer import SpatioTemporalTransformer

B, T, H, W = 2, 3, 4, 5


def _indicator() -> torch.Tensor:
    return torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # some frames flagged as images


@pytest.mark.parametrize("strategy", ["fixed", "learned", "learned_with_images"])
@pytest.mark.parametrize("switch", [False, True])
def test_alpha_blender(strategy: str, switch: bool) -> None:
    ref = diffusers_resnet.AlphaBlender(0.3, strategy, switch)
    ours = AlphaBlender(0.3, strategy, switch)
    ours.load_state_dict(ref.state_dict(), strict=True)
    gen = torch.Generator().manual_seed(0)
    xs, xt = torch.randn(2, B, 8, T, H, W, generator=gen)  # diffusers layout (B, C, T, H, W)
    ind = _indicator()
    expected = ref(xs, xt, ind)
    got = ours(xs.transpose(1, 2), xt.transpose(1, 2), ind).transpose(1, 2)  # ours: frames on dim 1
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("temb_channels", "kwargs"),
    [
        (16, {"eps": 1e-6, "merge_strategy": "learned_with_images"}),  # the UNet's resnet
        (None, {"eps": 1e-6, "temporal_eps": 1e-5, "merge_factor": 0.0, "merge_strategy": "learned",
                "switch_spatial_to_temporal_mix": True}),  # SVD's temporal VAE decoder resnet
    ],
)
def test_spatio_temporal_res_block(temb_channels, kwargs, randomize) -> None:
    ref = randomize(diffusers_resnet.SpatioTemporalResBlock(32, 64, temb_channels, **kwargs))
    ours = SpatioTemporalResBlock(32, 64, temb_channels, **kwargs)
    ours.load_state_dict(ref.state_dict(), strict=True)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(B * T, 32, H, W, generator=gen)
    temb = torch.randn(B, T, 16, generator=gen) if temb_channels else None  # per-frame embedding
    ind = _indicator()
    with torch.no_grad():
        expected = ref(x, None if temb is None else temb.flatten(0, 1), image_only_indicator=ind)
        got = ours(x, temb, T, ind)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_spatio_temporal_res_block_per_video_embedding(randomize) -> None:
    """A (B, 1, E) embedding broadcast over frames equals diffusers' per-frame repeat of it."""
    ref = randomize(diffusers_resnet.SpatioTemporalResBlock(32, 32, 16))
    ours = SpatioTemporalResBlock(32, 32, 16)
    ours.load_state_dict(ref.state_dict(), strict=True)
    gen = torch.Generator().manual_seed(2)
    x, temb = torch.randn(B * T, 32, H, W, generator=gen), torch.randn(B, 1, 16, generator=gen)
    with torch.no_grad():
        expected = ref(x, temb.repeat_interleave(T, dim=0)[:, 0], image_only_indicator=torch.zeros(B, T))
        got = ours(x, temb, T)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tokens", [1, 2])
def test_spatio_temporal_transformer(tokens: int, randomize) -> None:
    ref = randomize(diffusers_tt.TransformerSpatioTemporalModel(2, 16, in_channels=32, num_layers=2,
                                                                cross_attention_dim=24))
    ours = SpatioTemporalTransformer(32, 2, 24, depth=2)
    ours.load_state_dict(ref.state_dict(), strict=True)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(B * T, 32, H, W, generator=gen)
    context = torch.randn(B, tokens, 24, generator=gen)
    ind = _indicator()
    with torch.no_grad():
        expected = ref(x, context.repeat_interleave(T, dim=0), image_only_indicator=ind).sample
        got = ours(x, context, T, ind)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("frames", "cut"), [(7, 3), (25, 13), (5, 1)])
def test_frame_group_norm_is_group_norm_and_splits_to_the_bit(frames: int, cut: int) -> None:
    # the temporal resnets' GroupNorm merges per-frame moments (Chan et al.): torch's GroupNorm up to float32
    # rounding, and a clip cut in two (the moments of both parts joined, as frame-parallel ranks gather them)
    # normalises each part with the whole clip's bits
    from vidiff.utils.norms import FrameGroupNorm, centered_frames, normalize_centered

    gen = torch.Generator().manual_seed(frames)
    norm = FrameGroupNorm(8, 32, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.2 * torch.randn(32, generator=gen))
        norm.bias.copy_(0.1 * torch.randn(32, generator=gen))
        x = 3 * torch.randn(2, 32, frames, 6, 5, generator=gen) + 2  # an offset mean tests the merge
        whole = norm(x)
        reference = torch.nn.functional.group_norm(x, 8, norm.weight, norm.bias, 1e-5)
        torch.testing.assert_close(whole, reference, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(norm(x.double()), torch.nn.functional.group_norm(
            x.double(), 8, norm.weight.double(), norm.bias.double(), 1e-5), rtol=1e-12, atol=1e-12)
        parts = [centered_frames(p) for p in (x[:, :, :cut].contiguous(), x[:, :, cut:].contiguous())]
        moments = torch.cat([local for _, local in parts], dim=3)
        split = torch.cat([normalize_centered(d, local[0], moments, norm) for d, local in parts], dim=2)
        assert torch.equal(split.reshape(whole.shape), whole)
        assert torch.equal(norm(x[..., :4, :]), norm(x[..., :4, :].contiguous()))  # views as their copies
    xg = x.clone().requires_grad_(True)  # training differentiates through the merge as through torch's kernel
    ours = torch.autograd.grad((norm(xg) ** 3).sum(), [xg, norm.weight, norm.bias])
    theirs = torch.autograd.grad((torch.nn.functional.group_norm(xg, 8, norm.weight, norm.bias, 1e-5) ** 3).sum(),
                                 [xg, norm.weight, norm.bias])
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
