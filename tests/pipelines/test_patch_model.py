"""Models without a CLIP image encoder, with the parameter-free PatchAutoencoder and model-level settings:
io (vidiff layout), loading, and generation through ImageToVideoPipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vidiff.autoencoders import PatchAutoencoder, PatchConfig
from vidiff.io import Checkpoint, CheckpointError, Component, read_checkpoint, write_checkpoint
from vidiff.io.components import default_scheduler_config
from vidiff.networks.unet_st import UNET_PRESETS, UNetSpatioTemporal
from vidiff.pipelines import ImageToVideoPipeline
from vidiff.pipelines.image_to_video import image_at_size
from vidiff.pipelines.loading import load_model

PATCH = PatchConfig(patch_size=4)
DEFAULTS = {"height": 32, "width": 32, "num_frames": 3, "num_inference_steps": 2, "motion_bucket_id": 40}


def _checkpoint(residual: bool) -> Checkpoint:
    torch.manual_seed(0)
    ucfg = UNET_PRESETS["tiny"].replace(in_channels=2 * PATCH.latent_channels, out_channels=PATCH.latent_channels,
                                        num_frames=3)
    unet = UNetSpatioTemporal(ucfg)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return Checkpoint("vidiff", {
        "unet": Component({"_class_name": "UNetSpatioTemporalConditionModel", **ucfg.to_diffusers()},
                          {k: v.clone() for k, v in unet.state_dict().items()}),
        "vae": Component(PATCH.to_diffusers(), None),
        "scheduler": Component({**default_scheduler_config(), "sigma_max": 80.0}),
    }, extra={"residual": residual, "generation_defaults": DEFAULTS})


@pytest.fixture(scope="module")
def patch_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, Path]:
    root = tmp_path_factory.mktemp("patch_models")
    out = {}
    for residual in (False, True):
        out[residual] = root / f"residual_{residual}"
        write_checkpoint(_checkpoint(residual), out[residual], "vidiff")
    return out


def test_vidiff_layout_round_trip_without_clip(patch_folders: dict[bool, Path]) -> None:
    folder = patch_folders[True]
    manifest = json.loads((folder / "vidiff.json").read_text())
    assert "image_encoder" not in manifest["components"] and manifest["generation_defaults"] == DEFAULTS
    assert not (folder / "vae" / "model.safetensors").exists()
    ckpt = read_checkpoint(folder)
    assert ckpt.extra == {"residual": True, "generation_defaults": DEFAULTS}
    assert ckpt["vae"].config["_class_name"] == "PatchAutoencoder"
    original = _checkpoint(True)
    for k, v in original["unet"].state_dict.items():
        assert torch.equal(ckpt["unet"].state_dict[k], v)


def test_other_layouts_refuse_what_they_cannot_hold(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="lacks components: image_encoder"):
        write_checkpoint(_checkpoint(False), tmp_path / "d", "diffusers")
    ckpt = _checkpoint(False)
    ckpt.components["vae"] = Component(PATCH.to_diffusers(), {"stray": torch.zeros(1)})
    with pytest.raises(CheckpointError):
        write_checkpoint(ckpt, tmp_path / "v", "vidiff")


def test_load_model_builds_patch_vae_and_no_image_encoder(patch_folders: dict[bool, Path]) -> None:
    model = load_model(patch_folders[False])
    assert isinstance(model.vae, PatchAutoencoder) and model.vae.config == PATCH
    assert model.image_encoder is None
    assert model.extra["generation_defaults"] == DEFAULTS


def test_pipeline_uses_model_defaults(patch_folders: dict[bool, Path]) -> None:
    pipe = ImageToVideoPipeline.from_pretrained(patch_folders[False])
    image = torch.rand(3, 40, 48)
    out = pipe(image, output_type="pt", progress=False)
    assert out.frames.shape == (1, 3, 3, 32, 32)
    for k, v in DEFAULTS.items():
        assert getattr(out.settings, k) == v
    assert pipe.sigma_max == 80.0
    assert pipe.footprint().vae_channels == (3,)
    assert torch.isfinite(out.frames).all()


def test_residual_model_adds_the_image_latents_back(patch_folders: dict[bool, Path]) -> None:
    """Same UNet weights, seed and inputs: the residual model's output latents are the plain model's plus
    the conditioning image's latents, for every frame."""
    image = torch.rand(3, 32, 32)
    plain = ImageToVideoPipeline.from_pretrained(patch_folders[False])
    res = ImageToVideoPipeline.from_pretrained(patch_folders[True])
    a = plain(image, output_type="latent", progress=False).frames
    b = res(image, output_type="latent", progress=False).frames
    s = plain._resolve(plain.default_settings())
    img = plain._image_latents(image_at_size(image, s.height, s.width))  # the image as given, at the output size
    assert torch.allclose(b - a, img[:, None].expand_as(a), atol=1e-5)
