"""FlowWarpAutoencoder: flow latents decoded by warping a real photograph; exact cases in closed form."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from vidiff.autoencoders import FlowWarpAutoencoder, FlowWarpConfig

from ..conftest import SKIMAGE_DATA

PHOTO = SKIMAGE_DATA / "coffee.png"


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    """A real photograph, ``(1, 3, 96, 128)`` in [-1, 1]."""
    img = PIL.Image.open(PHOTO).convert("RGB").resize((128, 96), PIL.Image.LANCZOS)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]


def test_zero_flow_decodes_to_the_reference_exactly(photo: torch.Tensor) -> None:
    ae = FlowWarpAutoencoder(FlowWarpConfig(patch_size=8))
    z = torch.zeros(1, 5, 2, 12, 16)
    frames = ae.decode_latents(z, reference=photo)
    assert frames.shape == (1, 5, 3, 96, 128)
    # identity sampling is exact up to the float rounding of the sample grid (far below one 8-bit level)
    torch.testing.assert_close(frames, photo[:, None].expand_as(frames), atol=1e-5, rtol=0)


def test_integer_translation_round_trips(photo: torch.Tensor) -> None:
    """A constant flow of (3, -2) px: encode → decode gives it back, and the frame is the shifted photo."""
    ae = FlowWarpAutoencoder(FlowWarpConfig(patch_size=8, flow_scale=16.0))
    flow = torch.zeros(1, 2, 96, 128)
    flow[:, 0], flow[:, 1] = 3.0, -2.0
    z = ae.encode_flow(flow)
    assert z.shape == (1, 2, 12, 16)
    torch.testing.assert_close(z[0, 0], torch.full((12, 16), 3.0 / 128 * 16))  # width units × flow_scale
    torch.testing.assert_close(ae.decode_flow(z, (96, 128)), flow)
    frame = ae.decode(z[:, None], reference=photo)[0, 0]
    # frame(p) = photo(p + (3, -2)): row y takes row y - 2, column x takes column x + 3
    torch.testing.assert_close(frame[:, 2:, :-3], photo[0, :, :-2, 3:], atol=1e-5, rtol=0)


def test_affine_flow_survives_the_latent_grid_in_the_interior() -> None:
    """Cell means of a linear (zoom) flow, interpolated back, are the flow itself away from the border."""
    ae = FlowWarpAutoencoder(FlowWarpConfig(patch_size=8))
    ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    flow = torch.stack([0.05 * (xs - 31.5), 0.05 * (ys - 31.5)])[None]  # a 5 % zoom about the centre
    back = ae.decode_flow(ae.encode_flow(flow), (64, 64))
    torch.testing.assert_close(back[..., 4:-4, 4:-4], flow[..., 4:-4, 4:-4], atol=1e-4, rtol=0)


def test_latents_do_not_depend_on_resolution() -> None:
    """The same motion (a shift of 1/32 of the width) has the same latent at 64 and 128 pixels."""
    ae = FlowWarpAutoencoder(FlowWarpConfig(patch_size=8))
    small, large = torch.full((1, 2, 64, 64), 2.0), torch.full((1, 2, 128, 128), 4.0)
    torch.testing.assert_close(ae.encode_flow(small)[..., 0, 0], ae.encode_flow(large)[..., 0, 0])


def test_encode_folds_the_image_and_config_round_trips(photo: torch.Tensor) -> None:
    cfg = FlowWarpConfig(patch_size=8, flow_scale=12.0, padding_mode="border")
    ae = FlowWarpAutoencoder(cfg)
    assert ae.encode(photo).mode().shape == (1, cfg.condition_channels, 12, 16) and cfg.latent_channels == 2
    assert FlowWarpConfig.from_diffusers(cfg.to_diffusers()) == cfg
    with pytest.raises(ValueError, match="unknown FlowWarpAutoencoder config keys"):
        FlowWarpConfig.from_diffusers({**cfg.to_diffusers(), "block_out_channels": [64]})
    with pytest.raises(ValueError, match="padding_mode"):
        FlowWarpConfig(padding_mode="wrap")


def test_decode_errors_name_the_problem(photo: torch.Tensor) -> None:
    ae = FlowWarpAutoencoder(FlowWarpConfig(patch_size=8))
    with pytest.raises(ValueError, match="reference"):
        ae.decode(torch.zeros(1, 2, 2, 12, 16))
    with pytest.raises(ValueError, match="reference must be"):
        ae.decode(torch.zeros(1, 2, 2, 8, 8), reference=photo)
    with pytest.raises(ValueError, match="multiples of 8"):
        ae.encode_flow(torch.zeros(1, 2, 30, 32))


def test_decode_between_draws_the_revealed_strip_from_the_end_image() -> None:
    """A camera pan of 16 px between two crops of a real photo, decoded from its exact flows: frame 0 is the
    start crop and the last the end crop, exactly; in between, the strip the pan reveals at the right edge
    (outside the start crop) comes from the end crop, where warping the start image alone can only mirror it."""
    pan, t = 16, 5
    big = PIL.Image.open(PHOTO).convert("RGB").resize((128 + pan, 96), PIL.Image.LANCZOS)
    big = torch.from_numpy(np.asarray(big, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    start, end = big[..., :128], big[..., pan:]
    ae = FlowWarpAutoencoder(FlowWarpConfig(patch_size=8))
    shifts = torch.arange(t, dtype=torch.float32) * pan / (t - 1)  # 0, 4, 8, 12, 16 px: frame i = big[..., s_i:]
    z = torch.stack([ae.encode_flow(torch.zeros(1, 2, 96, 128) + torch.tensor([s, 0.0]).view(1, 2, 1, 1))
                     for s in shifts], 1)
    weights = torch.linspace(0, 1, t)
    both = ae.decode_between(z, start, end, z[:, -1], weights)[0]
    alone = ae.decode(z, reference=start)[0]
    # the given images (identity sampling: exact up to the float rounding of the sample grid)
    torch.testing.assert_close(both[0], start[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(both[-1], end[0], atol=1e-5, rtol=0)
    for i in (2, 3):  # frames shifted 8 and 12 px: their last 8 / 12 columns are outside the start crop
        s = int(shifts[i])
        truth = big[0, :, :, s:s + 128]
        strip = slice(128 - s, 128)
        err_both = (both[i][..., strip] - truth[..., strip]).abs().max().item()
        err_alone = (alone[i][..., strip] - truth[..., strip]).abs().mean().item()
        assert err_both < 1e-4, (i, err_both)  # the end crop holds those pixels: exact
        assert err_alone > 0.05, (i, err_alone)  # a mirror of the start crop is not the photo there
        # inside both crops the two warps show the same pixels, so the blend is the photo everywhere
        assert (both[i] - truth).abs().max().item() < 1e-4
