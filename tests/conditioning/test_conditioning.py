"""Conditioning against diffusers' SVD pipeline (the oracle) and closed forms."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import diffusers
import numpy as np
import PIL.Image
import pytest
import torch
from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import (
    _resize_with_antialiasing,
)
from diffusers.utils.torch_utils import randn_tensor

from vidiff.conditioning import (
    CLIPImageEmbedder,
    Cond,
    Conditioner,
    drop_conditions,
    embed_scalars,
    noise_augment,
    resize_antialiased,
    scalar_values,
    sv3d_camera_vector,
    sv3d_default_orbit,
)
from vidiff.utils import timestep_embedding

PHOTOS = Path(importlib.util.find_spec("skimage").origin).parent / "data"  # found through the package


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().detach())


@pytest.mark.parametrize(("shape", "size"), [((2, 3, 300, 451), (224, 224)), ((1, 3, 64, 96), (224, 224)),
                                             ((1, 3, 224, 224), (224, 224)), ((1, 3, 97, 33), (20, 61))])
def test_resize_matches_diffusers(shape: tuple[int, ...], size: tuple[int, int]) -> None:
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ours, ref = resize_antialiased(x, size), _resize_with_antialiasing(x, size)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["chelsea.png", "astronaut.png"])
def test_clip_embedding_matches_diffusers_pipeline(tiny_svd_folder: Path, name: str) -> None:
    pipe = diffusers.StableVideoDiffusionPipeline.from_pretrained(tiny_svd_folder)
    image = PIL.Image.open(PHOTOS / name).convert("RGB")  # a real photograph at its own resolution
    ref = pipe._encode_image(image, "cpu", 1, False)  # (1, 1, D)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None] * 2 - 1
    fe = pipe.feature_extractor
    with torch.no_grad():
        ours = CLIPImageEmbedder(pipe.image_encoder, mean=fe.image_mean, std=fe.image_std)(pixels)
    assert ours.shape == ref.shape
    assert _rel(ours, ref) <= 1e-5


def test_scalar_vector_matches_diffusers_add_time_proj(tiny_svd_folder: Path) -> None:
    unet = diffusers.UNetSpatioTemporalConditionModel.from_pretrained(tiny_svd_folder / "unet")
    dim = unet.config.addition_time_embed_dim
    fps, bucket, aug = torch.tensor([7.0, 25.0]), torch.tensor([127.0, 3.0]), torch.tensor([0.02, 0.5])
    ids = torch.stack([fps - 1, bucket, aug], dim=1)  # diffusers' added_time_ids (fps already minus one)
    ref = unet.add_time_proj(ids.flatten()).reshape(2, -1)
    ours = embed_scalars(scalar_values({"fps": fps, "motion_bucket_id": bucket, "noise_aug_strength": aug},
                                       ("fps", "motion_bucket_id", "noise_aug_strength"), 2), dim)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)


def test_noise_augmentation_draws_as_diffusers() -> None:
    image = torch.rand(1, 3, 16, 24) * 2 - 1
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    ref = image + 0.1 * randn_tensor(image.shape, generator=g1, device=image.device, dtype=image.dtype)
    torch.testing.assert_close(noise_augment(image, 0.1, g2), ref, rtol=0, atol=0)
    # the generator advanced by exactly one draw, as in diffusers (then the latents are drawn)
    assert torch.equal(torch.randn(3, generator=g1), torch.randn(3, generator=g2))


def test_conditioner_cond_and_uncond() -> None:
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(4, 3, 1, 1, generator=g)

    def encode(pixels: torch.Tensor) -> torch.Tensor:  # a real (if tiny) encoder: 1x1 conv + 2x pooling
        return torch.nn.functional.avg_pool2d(torch.nn.functional.conv2d(pixels, weight), 2)

    cond_fn = Conditioner(None, encode, crossattn_dim=8)
    image = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    cond, uncond = cond_fn(image, num_frames=5, fps=7, motion_bucket_id=40, noise_aug_strength=0.3,
                           generator=torch.Generator().manual_seed(1))
    noisy = noise_augment(image, 0.3, torch.Generator().manual_seed(1))
    torch.testing.assert_close(cond.concat, encode(noisy))  # unscaled latent of the noisy image
    assert cond.crossattn.shape == (2, 1, 8) and cond.vector.shape == (2, 3 * 256)
    expected = torch.cat([timestep_embedding(torch.tensor([v] * 2), 256) for v in (6.0, 40.0, 0.3)], dim=1)
    torch.testing.assert_close(cond.vector, expected)
    assert torch.count_nonzero(uncond.concat) == 0 and torch.count_nonzero(uncond.crossattn) == 0
    assert torch.equal(uncond.vector, cond.vector)
    both = uncond.cat(cond)
    assert both.batch_size == 4 and torch.equal(both.concat[2:], cond.concat)


def test_drop_conditions_gives_the_unconditional_rows_where_dropped() -> None:
    g = torch.Generator().manual_seed(0)
    cond = Cond(crossattn=torch.randn(4, 1, 4, generator=g), vector=torch.randn(4, 6, generator=g),
                concat=torch.randn(4, 3, 4, 2, 2, generator=g))
    keep = torch.tensor([1.0, 0.0, 1.0, 0.0])
    dropped = drop_conditions(cond, keep)
    uncond = cond.zeros_like()
    for field in ("crossattn", "vector", "concat"):
        got, full, zero = getattr(dropped, field), getattr(cond, field), getattr(uncond, field)
        assert torch.equal(got[[0, 2]], full[[0, 2]]), field
        assert torch.equal(got[[1, 3]], zero[[1, 3]]), field
    assert torch.equal(dropped.vector, cond.vector)  # micro-conditioning is never dropped
    with pytest.raises(ValueError, match=r"keep must have shape \(4,\)"):
        drop_conditions(cond, keep[:3])
    with pytest.raises(ValueError, match="only 0 and 1"):
        drop_conditions(cond, torch.full((4,), 0.5))


def test_noise_augment_with_given_noise_per_image_strength() -> None:
    """Training passes its own per-sample noise and strengths: ``image + s_b·ε`` exactly."""
    g = torch.Generator().manual_seed(4)
    image, noise = torch.rand(3, 3, 5, 4, generator=g) * 2 - 1, torch.randn(3, 3, 5, 4, generator=g)
    strength = torch.tensor([0.0, 0.02, 1.5])
    out = noise_augment(image, strength, noise=noise)
    for b in range(3):
        assert torch.equal(out[b], image[b] + strength[b] * noise[b])
    with pytest.raises(ValueError, match=r"noise must have the image's shape \(3, 3, 5, 4\)"):
        noise_augment(image, strength, noise=noise[:, :1])


def test_training_draws_the_cfg_dropout_at_ucg_rate() -> None:
    """Training's per-sample keep mask (the one passed to drop_conditions) drops at ``loss.ucg_rate``."""
    from vidiff.training.config import LossConfig
    from vidiff.training.objectives import sample_draws

    n, p = 4000, 0.2
    draws = sample_draws(LossConfig(ucg_rate=p), seed=3, step=5, positions=list(range(n)), image_shape=(3, 1, 1),
                         latent_shape=(1, 1, 1, 1), device=torch.device("cpu"))
    assert set(draws.keep.unique().tolist()) == {0.0, 1.0}
    rate = 1 - draws.keep.mean().item()
    assert abs(rate - p) < 4 * math.sqrt(p * (1 - p) / n)  # within 4 binomial standard deviations


def test_sv3d_camera_closed_form() -> None:
    elev, azim = sv3d_default_orbit(21, elevation_deg=10.0)
    assert azim[0, -1] == 0 and math.isclose(azim[0, 0].item(), 360 / 21 * 1, rel_tol=1e-12)
    vec = sv3d_camera_vector(elev, azim, 1e-5)
    assert vec.shape == (1, 21, 256 + 512 + 512)
    polar = vec[0, :, 256:768]
    torch.testing.assert_close(polar[3], timestep_embedding(torch.tensor([math.radians(80.0)]), 512)[0])
    az = vec[0, :, 768:]
    # relative to the last frame (0 deg): frame k sits at 360(k+1)/21 degrees
    torch.testing.assert_close(az[4], timestep_embedding(torch.tensor([math.radians(360 * 5 / 21)]), 512)[0])
    torch.testing.assert_close(az[-1], timestep_embedding(torch.tensor([0.0]), 512)[0])
