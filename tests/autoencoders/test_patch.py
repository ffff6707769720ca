"""PatchAutoencoder: space-to-depth encode and depth-to-space decode are exact inverses."""

from __future__ import annotations

import pytest
import torch

from vidiff.autoencoders import PatchAutoencoder, PatchConfig


@pytest.mark.parametrize("p", [1, 2, 4, 8])
def test_encode_decode_are_exact_inverses(p: int) -> None:
    ae = PatchAutoencoder(PatchConfig(patch_size=p, scaling_factor=0.5))
    video = torch.rand(2, 3, 3, 16, 24) * 2 - 1  # (B, T, C, H, W)
    z = ae.encode(video.flatten(0, 1)).mode()
    assert z.shape == (6, 3 * p * p, 16 // p, 24 // p)
    assert torch.equal(ae.encode(video.flatten(0, 1)).sample(), z)
    assert torch.equal(ae.decode(z.unflatten(0, (2, 3))), video)
    scaled = ae.encode_latents(video.flatten(0, 1))
    assert torch.equal(scaled, z * 0.5)
    assert torch.allclose(ae.decode_latents(scaled.unflatten(0, (2, 3))), video)


def test_latent_channels_hold_one_patch_each() -> None:
    ae = PatchAutoencoder(PatchConfig(patch_size=2))
    img = torch.arange(3 * 4 * 4, dtype=torch.float32).view(1, 3, 4, 4)
    z = ae.encode(img).mode()
    # latent pixel (i, j) holds exactly the pixels of patch (i, j), every channel
    for i in range(2):
        for j in range(2):
            patch = img[0, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
            assert sorted(z[0, :, i, j].tolist()) == sorted(patch.flatten().tolist())


def test_config_round_trip_and_validation() -> None:
    cfg = PatchConfig(patch_size=8, scaling_factor=2.0)
    d = cfg.to_diffusers()
    assert d["_class_name"] == "PatchAutoencoder"
    assert PatchConfig.from_diffusers(d) == cfg
    assert cfg.downsample_factor == 8 and cfg.latent_channels == 192
    with pytest.raises(ValueError, match="patch_size"):
        PatchConfig(patch_size=0)
    with pytest.raises(ValueError, match="unknown"):
        PatchConfig.from_diffusers({"patch_size": 4, "latent_channels": 4})
    with pytest.raises(ValueError, match="multiples"):
        PatchAutoencoder(cfg).encode(torch.zeros(1, 3, 12, 16))
    assert list(PatchAutoencoder(cfg).parameters()) == []
