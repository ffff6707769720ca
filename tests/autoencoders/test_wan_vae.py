"""Wan's causal 3D VAE against diffusers' AutoencoderKLWan (the oracle) on identical random weights, and
the causality that makes chunked decoding exact."""

from __future__ import annotations

import math

import diffusers
import pytest
import torch

from vidiff.autoencoders.wan_vae import WAN_VAE_PRESETS, WanVAE

TOL = 1e-5


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).norm() / ref.norm()).item()


def _pair(name: str) -> tuple[torch.nn.Module, WanVAE]:
    cfg = WAN_VAE_PRESETS[name]
    ref = diffusers.AutoencoderKLWan(**cfg.to_dict()).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for pname, p in sorted(ref.named_parameters()):
            noise = torch.randn(p.shape, generator=gen)
            if "gamma" in pname:
                p.copy_(1 + 0.2 * noise)
            elif p.ndim >= 2:
                p.copy_(noise / math.sqrt(math.prod(p.shape[1:])))
            else:
                p.copy_(0.1 * noise)
    model = WanVAE(cfg).eval()
    model.load_state_dict(ref.state_dict(), strict=True)
    return ref, model


@pytest.mark.parametrize("name", ["tiny-2.1", "tiny-2.2"])
def test_encode_decode_match_diffusers(name: str) -> None:
    ref, model = _pair(name)
    factor = model.config.spatial_factor
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 9, 3, 2 * factor, 3 * factor, generator=gen).clamp(-1, 1)
    z = torch.randn(1, 3, model.config.z_dim, 2, 3, generator=gen)
    with torch.no_grad():
        enc_ref = ref.encode(x.transpose(1, 2)).latent_dist
        dec_ref = ref.decode(z.transpose(1, 2)).sample.transpose(1, 2)
        enc = model.encode(x)
        dec = model.decode(z)
    assert enc.mean.shape == enc_ref.mean.shape == (1, model.config.z_dim, 3, 2, 3)
    assert _rel(enc.mean, enc_ref.mean) <= TOL and _rel(enc.logvar, enc_ref.logvar) <= TOL
    assert dec.shape == (1, 9, 3, 2 * factor, 3 * factor)
    assert (dec.abs() < 1).float().mean() > 0.5  # not a comparison of clamped constants
    assert _rel(dec, dec_ref) <= TOL


def test_chunked_and_whole_clip_passes_agree() -> None:
    """Causality: decoding 1, 2 or all latent frames at a time, or encoding in chunks or at once, is exact."""
    _, model = _pair("tiny-2.1")
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(1, 4, 4, 2, 3, generator=gen)
    x = torch.randn(1, 13, 3, 8, 8, generator=gen).clamp(-1, 1)
    with torch.no_grad():
        whole = model.decode(z, chunk_frames=None)
        for chunk in (1, 2, 3):
            assert _rel(model.decode(z, chunk_frames=chunk), whole) <= TOL
        assert _rel(model.encode(x).mean, model.encode(x, chunked=False).mean) <= TOL
        # frame k of the output depends only on latents <= its chunk: changing the last latent frame
        # leaves the first 1 + 4·2 frames unchanged
        z2 = z.clone()
        z2[:, -1] += 1.0
        changed = model.decode(z2)
    assert torch.equal(changed[:, :9], model.decode(z)[:, :9]) and not torch.equal(changed[:, 9:], whole[:, 9:])


def test_latent_normalisation_round_trip_and_bad_frame_count() -> None:
    _, model = _pair("tiny-2.1")
    z = torch.randn(2, 3, 4, 2, 2)
    mean = torch.tensor(model.config.latents_mean).reshape(1, 1, -1, 1, 1)
    std = torch.tensor(model.config.latents_std).reshape(1, 1, -1, 1, 1)
    torch.testing.assert_close(model.normalize(z), (z - mean) / std)
    torch.testing.assert_close(model.denormalize(model.normalize(z)), z)
    with pytest.raises(ValueError, match=r"1 \+ 4k frames.*got 8"):
        model.encode(torch.zeros(1, 8, 3, 8, 8))
