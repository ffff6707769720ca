"""Camera control (``vidiff.adapters.camera``): a zero adapter is the base model exactly, files round-trip bit for
bit, the path convention is the training data's, bad ``--camera`` input fails with one line and exit 2, and the
adapter shipped with the bundled model turns a pan-left request into leftward flow and pan-right into rightward."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vidiff.adapters import unet_from_config
from vidiff.adapters.camera import (
    CameraAdapter,
    attach_camera,
    camera_flow,
    camera_preset,
    detach_camera,
    read_camera_adapter,
    resolve_camera,
    write_camera_adapter,
)
from vidiff.cli.main import main
from vidiff.metrics.flow import flow_to_first
from vidiff.pipelines.image_to_video import ImageToVideoPipeline, bundled_model_path
from vidiff.pipelines.loading import load_model
from vidiff.training.data import CameraMoveDataset

from ..conftest import SKIMAGE_DATA

BUNDLED = bundled_model_path()
SHIPPED = BUNDLED / "camera_adapter.safetensors"
PHOTO = SKIMAGE_DATA / "coffee.png"  # held out of the bundled model's and the adapter's training


@pytest.fixture(scope="module")
def unet() -> torch.nn.Module:
    return load_model(BUNDLED).unet.float().eval()


def _inputs(net: torch.nn.Module, t: int = 4) -> tuple[torch.Tensor, torch.Tensor, object]:
    from vidiff.conditioning import Cond

    g = torch.Generator().manual_seed(0)
    cfg = net.config
    x = torch.randn(2, t, cfg.in_channels, 8, 8, generator=g)
    cond = Cond(crossattn=torch.zeros(2, 1, cfg.cross_attention_dim),
                vector=torch.randn(2, cfg.projection_class_embeddings_input_dim, generator=g))
    return x, torch.tensor([0.3, -0.5]), cond


def _random_adapter(net: torch.nn.Module) -> CameraAdapter:
    adapter = CameraAdapter.create(net, hidden=16)
    with torch.no_grad():
        for p in adapter.parameters():
            p.normal_(0, 0.2)
    return adapter


def test_zero_initialised_adapter_is_the_base_model_exactly(unet: torch.nn.Module) -> None:
    x, c_noise, cond = _inputs(unet)
    with torch.no_grad():
        base = unet(x, c_noise, cond)
        adapter = CameraAdapter.create(unet, hidden=16)
        attach_camera(unet, adapter)
        try:
            adapter.set_camera("zoom-in")
            assert torch.equal(unet(x, c_noise, cond), base)
            with torch.no_grad():  # a trained adapter does change the output: the camera input is live
                for p in adapter.parameters():
                    p.normal_(0, 0.2)
            assert not torch.allclose(unet(x, c_noise, cond), base, atol=1e-4)
        finally:
            detach_camera(unet)
        assert torch.equal(unet(x, c_noise, cond), base)


def test_save_load_round_trip_is_bit_exact(unet: torch.nn.Module, tmp_path: Path) -> None:
    adapter = _random_adapter(unet)
    path = tmp_path / "cam.safetensors"
    write_camera_adapter(adapter, path, base_model_sha256="ab" * 32, unet_config=unet.config.to_dict(),
                         motion_bucket_scale=64.0)
    back, meta = read_camera_adapter(path)
    assert back.config() == adapter.config()
    assert meta["base_model_sha256"] == "ab" * 32 and meta["motion_bucket_scale"] == 64.0
    want, got = adapter.state_dict(), back.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    x, c_noise, cond = _inputs(unet)
    outs = []
    with torch.no_grad():
        for a in (adapter, back):
            attach_camera(unet, a)
            a.set_camera("pan-right")
            outs.append(unet(x, c_noise, cond))
            detach_camera(unet)
    assert torch.equal(outs[0], outs[1])


def test_camera_path_flow_is_the_training_data_flow() -> None:
    ds = CameraMoveDataset(None, num_frames=6, height=40, width=56, num_samples=9, jitter=True, max_pan=0.25,
                           max_angle=15, seed=3)
    moves = set()
    for i in range(len(ds)):
        item = ds[i]
        moves.add(item["path"].rsplit("/", 1)[-1])
        torch.testing.assert_close(camera_flow(item["camera"], 40, 56), item["flow"], atol=1e-4, rtol=0)
    assert moves == {"pan", "zoom", "rotate"}
    # the presets move the way their names say: pan-left slides the view left, zoom-in magnifies
    assert camera_flow(camera_preset("pan-left", 5), 8, 8)[-1, 0].mean() < 0
    zoom = camera_flow(camera_preset("zoom-in", 5), 9, 9)[-1, 0]
    assert zoom[:, -1].mean() < 0 < zoom[:, 0].mean()  # right edge samples from nearer the centre


def test_adapter_for_another_architecture_is_refused(unet: torch.nn.Module) -> None:
    cfg = {**unet.config.to_dict(), "block_out_channels": [32, 64]}
    other = CameraAdapter.create(unet_from_config(cfg), hidden=8)
    with pytest.raises(ValueError, match="another architecture"):
        attach_camera(unet, other)


def _json_path(tmp_path: Path, frames: int) -> Path:
    path = tmp_path / "path.json"
    path.write_text(json.dumps([[0.01 * k, 0.0, 1.0, 0.0] for k in range(frames)]))
    return path


@pytest.mark.parametrize("case", ["unknown-name", "wrong-length", "other-architecture", "long-video", "video"])
def test_bad_camera_input_fails_with_one_line(case: str, unet: torch.nn.Module, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "clip.mp4"
    args = ["generate", "--image", str(PHOTO), "--output", str(out), "--steps", "1", "--quiet"]
    if case == "unknown-name":
        args += ["--camera", "dolly-zoom"]
        named = "dolly-zoom"
    elif case == "wrong-length":
        args += ["--camera", str(_json_path(tmp_path, 9)), "--num-frames", "6"]
        named = "9 frames"
    elif case == "long-video":  # a path covers one clip: refused, not silently dropped
        args += ["--camera", "pan-left", "--num-frames", "30"]
        named = "not a long video"
    elif case == "video":
        args += ["--camera", "pan-left", "--video", str(tmp_path / "any.mp4")]
        named = "image-to-video only"
    else:
        adapter = tmp_path / "other.safetensors"
        cfg = {**unet.config.to_dict(), "block_out_channels": [32, 64]}
        write_camera_adapter(CameraAdapter.create(unet_from_config(cfg), hidden=8), adapter)
        args += ["--camera", "pan-left", "--camera-adapter", str(adapter)]
        named = "other.safetensors"
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err, err
    assert not out.exists() and not out.with_name("clip.mp4.json").exists()


def test_wrong_length_from_the_model_default_is_refused_after_loading(tmp_path: Path) -> None:
    pipe_frames = load_model(BUNDLED).unet.config.num_frames or 14
    with pytest.raises(ValueError, match=f"3 frames, but num_frames is {pipe_frames}"):
        resolve_camera(str(_json_path(tmp_path, 3)), pipe_frames)


def _mean_flow_x(pipe: ImageToVideoPipeline, image: torch.Tensor, camera: str) -> float:
    pipe.set_camera(camera)
    frames = pipe(image, num_frames=8, num_inference_steps=8, motion_bucket_id=200, output_type="pt",
                  generator=torch.Generator().manual_seed(0), progress=False).frames[0]
    return float(flow_to_first(frames.float())[1:, 0].mean())


def test_shipped_adapter_pans_the_way_it_is_asked(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from vidiff.io.video import read_image

    assert SHIPPED.is_file(), "the bundled model ships without its camera adapter"
    pipe = ImageToVideoPipeline.from_pretrained(BUNDLED)
    pipe.load_camera_adapter(SHIPPED)
    image = read_image(PHOTO)
    left, right = _mean_flow_x(pipe, image, "pan-left"), _mean_flow_x(pipe, image, "pan-right")
    assert left < -0.5 and right > 0.5, (left, right)  # same seed and settings: only the camera path differs
    # and through the command line, the sidecar records the path of every frame
    out = tmp_path / "clip.mp4"
    assert main(["generate", "--image", str(PHOTO), "--output", str(out), "--camera", "zoom-in", "--num-frames",
                 "4", "--steps", "2", "--quiet"]) == 0, capsys.readouterr().err
    camera = json.loads(out.with_name("clip.mp4.json").read_text())["camera"]
    assert camera["request"] == "zoom-in" and len(camera["path"]) == 4
    torch.testing.assert_close(torch.tensor(camera["path"]), camera_preset("zoom-in", 4))
    again = tmp_path / "again.mp4"  # --settings replays the camera too: the same frames, the same path
    assert main(["generate", "--image", str(PHOTO), "--output", str(again), "--settings",
                 str(out.with_name("clip.mp4.json")), "--quiet"]) == 0, capsys.readouterr().err
    assert json.loads(again.with_name("again.mp4.json").read_text())["camera"] == camera
    assert again.read_bytes() == out.read_bytes()  # one x264 thread: identical frames, identical bytes


def test_train_with_a_camera_section_trains_only_the_adapter(tmp_path: Path) -> None:
    from vidiff.adapters import state_sha256
    from vidiff.training.config import TrainConfig
    from vidiff.training.loop import train
    from vidiff.training.model import build_models

    repo = Path(__file__).resolve().parents[2]
    cfg = TrainConfig.from_yaml(repo / "configs" / "tiny_moving_shapes.yaml", [
        f"output_dir={tmp_path / 'run'}", "progress=false", "data.dataset=camera_move", "data.num_samples=4",
        "data.batch_size=2", "schedule.max_steps=2", "schedule.warmup_steps=0", "checkpoint.every_steps=0",
        "optim.lr=0.01", "camera.hidden=8"])
    result = train(cfg)
    assert result.model_dir == tmp_path / "run" / "camera_adapter.safetensors"
    adapter, meta = read_camera_adapter(result.model_dir)
    base = build_models(cfg.model, cfg.data, seed=cfg.seed).unet  # the same seeded base weights
    assert meta["base_model_sha256"] == state_sha256(base.state_dict())
    assert meta["motion_bucket_scale"] == cfg.data.motion_bucket_scale
    assert all(h.weight.abs().max() > 0 for h in adapter.flow_heads.values())  # trained from each clip's path
    assert not (tmp_path / "run" / "model").exists()
