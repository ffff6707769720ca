"""SV3D orbit data (Voleti et al. 2024): the numpy renderer's invariants, dataset items' cameras, sidecar
errors, the per-frame camera vector a training batch gets, and exact resume of a tiny SV3D_p run after SIGKILL."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from vidiff.conditioning import sv3d_camera_vector
from vidiff.training.config import DataConfig, ModelConfig
from vidiff.training.model import build_dataset, build_models, prepare_batch
from vidiff.training.objectives import Draws
from vidiff.training.orbits import (
    SHAPES,
    OrbitFolderDataset,
    Solid,
    SyntheticOrbitDataset,
    default_offsets,
    render_orbit,
    render_view,
    write_orbit_folder,
)
from vidiff.utils import timestep_embedding

from .conftest import REPO, assert_sigkill_resume_is_exact, run_cli, train_cmd

CONFIG = REPO / "configs" / "sv3d_p_orbits.yaml"
PALETTE = ((0.8, 0.2, 0.2), (0.2, 0.8, 0.2), (0.2, 0.2, 0.8), (0.8, 0.8, 0.2))


@pytest.mark.parametrize("shape", SHAPES)
def test_render_is_deterministic_and_periodic_in_azimuth(shape: str) -> None:
    solid = Solid(shape, PALETTE)
    a = render_view(solid, 20.0, 0.0, 16)
    assert a.shape == (16, 16, 3) and a.dtype == np.float32 and a.min() >= 0 and a.max() <= 1
    assert np.array_equal(a, render_view(solid, 20.0, 0.0, 16))
    assert np.array_equal(a, render_view(solid, 20.0, 360.0, 16))
    assert np.array_equal(render_view(solid, 5.0, 30.0, 16), render_view(solid, 5.0, -330.0, 16))
    assert not np.array_equal(a, render_view(solid, 20.0, 90.0, 16))  # the texture shows the turn


def test_silhouettes_at_known_angles() -> None:
    for azimuth in (0.0, 45.0, 90.0):  # a cube seen level from a face or an edge: mirror-symmetric outline
        _, mask = render_view(Solid("cube", PALETTE), 0.0, azimuth, 16, return_mask=True)
        assert np.array_equal(mask, mask[:, ::-1]) and np.array_equal(mask, mask[::-1])
    _, face = render_view(Solid("cube", PALETTE), 0.0, 0.0, 16, return_mask=True)
    _, edge = render_view(Solid("cube", PALETTE), 0.0, 45.0, 16, return_mask=True)
    assert face.sum() == pytest.approx(64.0) and edge.sum() == pytest.approx(64.0 * 2**0.5, rel=0.1)
    sphere = [render_view(Solid("sphere", PALETTE), 10.0, a, 16, return_mask=True)[1] for a in (0, 77, 200)]
    assert all(np.array_equal(sphere[0], m) for m in sphere)  # a sphere's outline ignores the camera
    with pytest.raises(ValueError, match="outside"):
        render_view(Solid("sphere", PALETTE), 95.0, 0.0, 8)


def test_synthetic_items_carry_their_cameras() -> None:
    data = SyntheticOrbitDataset(4, 5, (12, 12), seed=3)
    item = data[2]
    solid, elev, azim = data.camera(2)
    assert item["video"].shape == (5, 3, 12, 12) and item["video"].min() >= -1 and item["video"].max() <= 1
    assert torch.equal(item["cond_image"], item["video"][-1])  # the input view ends the orbit
    assert torch.equal(item["video"], render_orbit(solid, elev, azim, (12, 12)) * 2 - 1)
    assert len(set(item["elevations_deg"].tolist())) == 1 and -10 <= elev[0] <= 30
    offsets = (item["azimuths_deg"] - item["azimuths_deg"][-1]) % 360
    assert torch.allclose(offsets, torch.tensor(default_offsets(5), dtype=torch.float64) % 360, atol=1e-9)
    assert torch.equal(SyntheticOrbitDataset(4, 5, (12, 12), seed=3)[2]["video"], item["video"])
    assert not torch.equal(SyntheticOrbitDataset(4, 5, (12, 12), seed=4)[2]["video"], item["video"])
    with pytest.raises(ValueError, match="input view"):
        SyntheticOrbitDataset(2, 3, seed=0, offsets=(10.0, 20.0, 30.0))


def test_folder_orbits_read_back_and_batch_gets_camera_vector(tmp_path: Path) -> None:
    elev, azim = [10.0, 12.0, 14.0, 16.0], [90.0, 180.0, 270.0, 0.0]
    write_orbit_folder(tmp_path / "obj", Solid("cylinder", PALETTE), elev, azim, size=16)
    data = build_dataset(DataConfig(dataset="orbits", root=str(tmp_path), num_frames=4, height=8, width=8),
                         seed=0)
    assert isinstance(data, OrbitFolderDataset) and len(data) == 1
    item = data[0]
    assert item["video"].shape == (4, 3, 8, 8)
    assert item["elevations_deg"].tolist() == elev and item["azimuths_deg"].tolist() == azim
    three = OrbitFolderDataset(tmp_path, num_frames=2, size=(8, 8))[0]  # evenly spaced, ending at the input view
    assert three["azimuths_deg"].tolist() == [180.0, 0.0]

    bundle = build_models(ModelConfig(), DataConfig(dataset="orbits", num_frames=4, height=8, width=8), seed=0)
    assert bundle.unet_config.projection_class_embeddings_input_dim == 1280  # SV3D_p's vector
    _, make_cond, shape = prepare_batch(bundle, [item, item], torch.device("cpu"))
    z = torch.zeros(2)
    cond = make_cond(Draws(keep=torch.ones(2), aug_strength=torch.full((2,), 0.02), aug_noise=torch.zeros(2, *shape),
                           sigma=z, timestep=z, noise=z))
    expected = sv3d_camera_vector(torch.tensor([elev] * 2), torch.tensor([azim] * 2), 0.02).float()
    assert cond.vector.shape == (2, 4, 1280) and torch.allclose(cond.vector, expected)

    # model.camera=false: an SV3D_u, whose vector is the cond_aug sinusoid alone (the cameras are not read)
    bundle = build_models(ModelConfig(camera=False), DataConfig(dataset="orbits", num_frames=4, height=8, width=8),
                          seed=0)
    assert bundle.unet_config.projection_class_embeddings_input_dim == 256
    _, make_cond, shape = prepare_batch(bundle, [item, {**item, "azimuths_deg": item["azimuths_deg"] + 45}],
                                        torch.device("cpu"))
    cond = make_cond(Draws(keep=torch.ones(2), aug_strength=torch.tensor([0.02, 0.5]),
                           aug_noise=torch.zeros(2, *shape), sigma=z, timestep=z, noise=z))
    assert cond.vector.shape == (2, 256)
    assert torch.allclose(cond.vector, timestep_embedding(torch.tensor([0.02, 0.5]), 256))


def test_video_orbit_with_sidecar(tmp_path: Path) -> None:
    from vidiff.io.video import write_video

    azim = [60.0 * i for i in range(1, 7)]
    write_video(render_orbit(Solid("sphere", PALETTE), [5.0] * 6, azim, 16), tmp_path / "obj.mp4", fps=6)
    (tmp_path / "obj.json").write_text(json.dumps({"elevations_deg": 5, "azimuths_deg": azim}))
    item = OrbitFolderDataset(tmp_path, num_frames=3, size=(16, 16))[0]
    assert item["video"].shape == (3, 3, 16, 16)
    assert item["azimuths_deg"].tolist() == [120.0, 240.0, 360.0] and item["elevations_deg"].tolist() == [5.0] * 3


def test_sidecar_of_wrong_length_is_a_one_line_error(tmp_path: Path) -> None:
    folder = write_orbit_folder(tmp_path / "obj", Solid("cube", PALETTE), [10.0] * 3, [0.0, 120.0, 240.0], size=8)
    (folder / "cameras.json").write_text(json.dumps({"elevations_deg": 10, "azimuths_deg": [0, 120]}))
    with pytest.raises(ValueError, match=r"azimuths_deg: 2 values given for 3 frames"):
        OrbitFolderDataset(tmp_path, num_frames=3, size=(8, 8))
    done = run_cli(train_cmd(CONFIG, f"--output_dir={tmp_path / 'run'}", f"--data.root={tmp_path}",
                             "--data.num_frames=3"))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "2 values given for 3 frames" in lines[0], done.stderr[-2000:]
    assert not (tmp_path / "run").exists()


STEPS = 8


def _overrides(out: Path) -> list[str]:
    return [f"--output_dir={out}", "--progress=false", "--deterministic=true", "--data.num_samples=6",
            "--data.num_frames=3", "--data.height=8", "--data.width=8", "--data.batch_size=2",
            f"--schedule.max_steps={STEPS}", "--schedule.warmup_steps=2", "--checkpoint.every_steps=2",
            "--checkpoint.keep_last=2", "--loss.noise_aug=lognormal", "--ema.decay=0.9", "--checkpoint.export=false"]


@pytest.mark.slow
def test_sv3d_p_sigkill_then_resume_matches_uninterrupted(tmp_path: Path) -> None:
    """As ``test_resume_kill`` for SVD: a tiny SV3D_p on orbits, killed after a checkpoint, resumes bit-exactly."""
    assert_sigkill_resume_is_exact(tmp_path, CONFIG, _overrides, STEPS, kill_after=2)


@pytest.mark.parametrize("camera", [True, False], ids=["sv3d_p", "sv3d_u"])
def test_trained_orbit_model_generates_from_the_cli(tmp_path: Path, camera: bool) -> None:
    """The exported run is an SV3D_p / SV3D_u model folder: ``vidiff generate`` reads its family from the vector
    width, takes a camera only for SV3D_p, and writes the orbit's views."""
    from vidiff.cli.main import main
    from vidiff.io.video import read_video, write_image

    run = tmp_path / "run"
    done = run_cli(train_cmd(CONFIG, f"--output_dir={run}", "--progress=false", "--data.num_samples=4",
                             "--data.num_frames=3", "--data.height=8", "--data.width=8", "--schedule.max_steps=1",
                             "--schedule.warmup_steps=1", "--checkpoint.every_steps=0",
                             f"--model.camera={str(camera).lower()}"))
    assert done.returncode == 0, done.stderr[-2000:]
    info = json.loads((run / "model" / "vidiff.json").read_text())
    assert info["model_type"] == ("sv3d_p" if camera else "sv3d_u")
    view = torch.from_numpy(render_view(Solid("cube", PALETTE), 10.0, 0.0, 8)).permute(2, 0, 1)
    write_image(view, tmp_path / "view.png")
    camera_args = ["--elevation", "10", "--azimuths", "120,240,0"]
    args = ["generate", "--model", str(run / "model"), "--image", str(tmp_path / "view.png"), "--steps", "2",
            "--quiet", "--output"]
    if camera:
        assert main([*args, f"{tmp_path / 'orbit'}/", *camera_args]) == 0
        assert read_video(tmp_path / "orbit")[0].shape == (3, 3, 8, 8)
    else:
        assert main([*args, f"{tmp_path / 'orbit'}/"]) == 0
        assert read_video(tmp_path / "orbit")[0].shape == (3, 3, 8, 8)
        assert main([*args, str(tmp_path / "refused.mp4"), *camera_args]) == 2  # SV3D_u takes no camera


@pytest.mark.parametrize("camera", [True, False], ids=["sv3d_p", "sv3d_u"])
def test_released_sv3d_checkpoint_fine_tunes_on_orbits(tmp_path: Path, tiny_svd_folder: Path, camera: bool) -> None:
    """``model.init_from`` an SV3D single file (sgm layout; the tiny goldens' weights): its own vector width
    decides the camera conditioning, the weights move, and the export is again that family."""
    from vidiff.pipelines.image_to_video import ImageToVideoPipeline
    from vidiff.training.config import TrainConfig
    from vidiff.training.loop import train

    from ..pipelines.test_sv3d import write_tiny_sv3d_p

    model = write_tiny_sv3d_p(tmp_path / "sv3d.safetensors", "single-file", tiny_svd_folder, camera=camera)
    cfg = TrainConfig.from_yaml(CONFIG, [f"output_dir={tmp_path / 'run'}", "progress=false", f"model.init_from={model}",
                                         "model.autoencoder=checkpoint", "data.num_frames=5", "data.height=8",
                                         "data.width=8", "data.num_samples=4", "schedule.max_steps=3",
                                         "schedule.warmup_steps=1", "checkpoint.every_steps=0"])
    result = train(cfg)
    assert all(math.isfinite(loss) for loss in result.losses)
    pipe, before = (ImageToVideoPipeline.from_pretrained(p) for p in (result.model_dir, model))
    assert pipe.family.name == before.family.name == ("sv3d_p" if camera else "sv3d_u")
    assert pipe.family.num_frames == 5
    weights = pipe.unet.add_embedding.linear_1.weight  # the vector projection: 1280 or 256 inputs
    assert weights.shape[1] == (1280 if camera else 256)
    assert not torch.equal(weights, before.unet.add_embedding.linear_1.weight)  # trained
