"""SVD's VAE against diffusers' AutoencoderKLTemporalDecoder on identical random weights (the oracle)."""

from __future__ import annotations

import diffusers
import pytest
import torch

from vidiff.autoencoders import VAE_PRESETS, AutoencoderKLTemporal, VAEConfig

TINY = dict(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2, layers_per_block=1)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def pair() -> tuple[torch.nn.Module, AutoencoderKLTemporal]:
    torch.manual_seed(0)
    ref = diffusers.AutoencoderKLTemporalDecoder(**TINY).eval()
    with torch.no_grad():
        for p in ref.parameters():  # non-zero mix factors and perturbed weights: no path is trivial
            p.add_(torch.randn_like(p) * 0.05)
    ours = AutoencoderKLTemporal(VAEConfig.from_diffusers(dict(ref.config))).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


@torch.no_grad()
def test_encode_matches(pair) -> None:
    ref, ours = pair
    x = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(1)) * 2 - 1
    a, b = ref.encode(x).latent_dist, ours.encode(x)
    assert _rel(b.mean, a.mean) <= 1e-5 and _rel(b.logvar, a.logvar) <= 1e-5
    assert torch.equal(b.mode(), b.mean)
    assert _rel(ours.encode_latents(x), a.mode() * 0.18215) <= 1e-5


@torch.no_grad()
def test_whole_and_chunked_decode_match(pair) -> None:
    ref, ours = pair
    z = torch.randn(2, 7, 4, 8, 12, generator=torch.Generator().manual_seed(2))
    for video, mine in zip(z, ours.decode(z)):
        assert _rel(mine, ref.decode(video, num_frames=7).sample) <= 1e-5
    # diffusers' pipeline decodes chunks of the flattened frames, each with its own frame count
    chunked = ours.decode(z, chunk_size=3)
    for video, mine in zip(z, chunked):
        parts = [ref.decode(video[i:i + 3], num_frames=len(video[i:i + 3])).sample for i in range(0, 7, 3)]
        assert _rel(mine, torch.cat(parts)) <= 1e-5
    assert (chunked - ours.decode(z)).abs().max() > 1e-3  # chunking really changes the result
    torch.testing.assert_close(ours.decode_latents(z * 0.18215, 3), chunked, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_overlap_approaches_the_whole_clip_decode(pair) -> None:
    _, ours = pair
    z = torch.randn(1, 9, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    whole = ours.decode(z)
    errors = [float((ours.decode(z, chunk_size=3, overlap=ov) - whole).abs().max()) for ov in (0, 1, 2, 9)]
    assert errors[0] > errors[1] > errors[2] and errors[3] < 1e-6  # context covering the clip is exact
    assert errors[0] > 1e-3


@torch.no_grad()
def test_tiled_decode(pair) -> None:
    _, ours = pair
    z = torch.randn(1, 2, 4, 12, 20, generator=torch.Generator().manual_seed(4))
    z = torch.nn.functional.avg_pool2d(z.flatten(0, 1), 3, 1, 1).unflatten(0, (1, 2))  # smooth latents
    plain = ours.decode(z)
    ours.tile_latent_size, ours.tile_latent_overlap = 32, 4
    assert torch.equal(ours.decode(z, tiled=True), plain)  # one tile covers the frame: identical
    ours.tile_latent_size = 8
    tiled = ours.decode(z, tiled=True)
    ours.tile_latent_size, ours.tile_latent_overlap = 64, 8
    assert tiled.shape == plain.shape and torch.isfinite(tiled).all()
    # tiles see only their own GroupNorm statistics: close to the whole-frame decode, not equal
    corr = torch.corrcoef(torch.stack([tiled.flatten(), plain.flatten()]))[0, 1]
    assert corr > 0.8, corr


@pytest.mark.parametrize(("scale", "tile", "overlap"), [(8, 8, 2), (8, 5, 3), (0.125, 24, 8)])
def test_tile_blending_is_a_partition_of_unity(scale: float, tile: int, overlap: int) -> None:
    """For a purely local map (nearest upsampling / average pooling) tiling must change nothing."""
    x = torch.randn(2, 3, 40, 56, generator=torch.Generator().manual_seed(5))

    def local(t: torch.Tensor) -> torch.Tensor:
        if scale > 1:
            return torch.nn.functional.interpolate(t, scale_factor=scale, mode="nearest")
        return torch.nn.functional.avg_pool2d(t, int(1 / scale))

    tiled = AutoencoderKLTemporal._tiled(local, x, tile, overlap, scale)
    torch.testing.assert_close(tiled, local(x), rtol=1e-5, atol=1e-5)


def test_svd_preset_has_diffusers_keys_and_shapes() -> None:
    with torch.device("meta"):
        ref = diffusers.AutoencoderKLTemporalDecoder(block_out_channels=(128, 256, 512, 512),
                                                     down_block_types=("DownEncoderBlock2D",) * 4,
                                                     layers_per_block=2)
        ours = AutoencoderKLTemporal(VAE_PRESETS["svd"])
    shapes = {k: v.shape for k, v in ours.state_dict().items()}
    assert shapes == {k: v.shape for k, v in ref.state_dict().items()}


def test_config_round_trip_and_errors() -> None:
    for cfg in VAE_PRESETS.values():
        assert VAEConfig.from_diffusers(cfg.to_diffusers()) == cfg
    with pytest.raises(ValueError, match="bogus_key"):
        VAEConfig.from_diffusers({**VAE_PRESETS["svd"].to_diffusers(), "bogus_key": 1})
    with pytest.raises(ValueError, match="block_out_channels"):
        VAEConfig(block_out_channels=(30, 64))
    with pytest.raises(ValueError, match="AutoencoderKLTemporalDecoder"):
        VAEConfig.from_diffusers({"_class_name": "AutoencoderKL"})


@pytest.mark.parametrize("post_quant", [True, False])
@torch.no_grad()
def test_image_vae_matches_diffusers_autoencoder_kl(post_quant: bool) -> None:
    """SD's per-frame decoder (SV3D's first stage; without post_quant_conv as SV3D ships it)."""
    from vidiff.autoencoders.image_vae import AutoencoderKL, ImageVAEConfig

    torch.manual_seed(0)
    ref = diffusers.AutoencoderKL(**TINY, up_block_types=("UpDecoderBlock2D",) * 2,
                                  use_post_quant_conv=post_quant).eval()
    for p in ref.parameters():
        p.add_(torch.randn_like(p) * 0.05)
    ours = AutoencoderKL(ImageVAEConfig.from_diffusers(dict(ref.config))).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(6)) * 2 - 1
    assert _rel(ours.encode(x).mean, ref.encode(x).latent_dist.mean) <= 1e-5
    z = torch.randn(1, 5, 4, 8, 12, generator=torch.Generator().manual_seed(7))
    expected = ref.decode(z[0]).sample
    assert _rel(ours.decode(z)[0], expected) <= 1e-5
    assert _rel(ours.decode(z, chunk_size=2)[0], expected) <= 1e-5  # no temporal layers: chunking is exact
    assert ImageVAEConfig.from_diffusers(ours.config.to_diffusers()) == ours.config
