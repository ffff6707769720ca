"""LoRA through the commands: ``vidiff generate --lora``, ``vidiff convert --to lora-*``, ``vidiff train`` with a
``lora:`` section; bad LoRA files fail with one line, exit 2 and nothing written."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from vidiff.adapters import LoRAAdapter, LoRAFile, read_lora, state_sha256, write_lora
from vidiff.cli.main import main
from vidiff.pipelines.loading import load_model

from ..conftest import SKIMAGE_DATA

PHOTO = SKIMAGE_DATA / "coffee.png"
SMALL = ["--num-frames", "3", "--steps", "2", "--height", "48", "--width", "64", "--quiet"]
REPO = Path(__file__).resolve().parents[2]


def _make_lora(net: torch.nn.Module, path: Path, fmt: str = "vidiff") -> LoRAFile:
    adapter = LoRAAdapter.create(net, rank=2, alpha=4.0)
    with torch.no_grad():
        for _, layer in adapter.items():
            layer.up.normal_(0, 0.05)
    lora = LoRAFile(adapter.to_tensors(), {"rank": 2, "alpha": 4.0, "unet_config": net.config.to_dict(),
                                           "base_model_sha256": state_sha256(net.state_dict())})
    write_lora(lora, path, fmt)
    return lora


@pytest.fixture(scope="module")
def lora_file(tiny_svd_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lora") / "style.safetensors"
    _make_lora(load_model(tiny_svd_folder).unet, path, "kohya")
    return path


def test_generate_with_lora_records_it_in_the_sidecar(tiny_svd_folder: Path, lora_file: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "clip.mp4"
    code = main(["generate", "--image", str(PHOTO), "--model", str(tiny_svd_folder), "--output", str(out),
                 "--lora", f"{lora_file}:0.7", *SMALL])
    assert code == 0, capsys.readouterr().err
    sidecar = json.loads(out.with_name("clip.mp4.json").read_text())
    (record,) = sidecar["loras"]
    assert record["scale"] == 0.7 and record["format"] == "kohya"
    assert record["sha256"] == hashlib.sha256(lora_file.read_bytes()).hexdigest()
    assert record["base_model_sha256"] == state_sha256(load_model(tiny_svd_folder).unet.state_dict())


def _bad(kind: str, tmp_path: Path, lora_file: Path) -> tuple[Path, str]:
    if kind == "truncated":
        path = tmp_path / "cut.safetensors"
        path.write_bytes(lora_file.read_bytes()[:-100])
        return path, "cut.safetensors"
    if kind == "other-architecture":
        from vidiff.networks.unet_config import UNetConfig
        from vidiff.networks.unet_st import UNetSpatioTemporal

        net = load_model(REPO / "vidiff" / "assets" / "default_model").unet
        wide = UNetSpatioTemporal(UNetConfig(**dict(net.config.to_dict(), block_out_channels=(32, 64),
                                                    in_channels=8, out_channels=4, cross_attention_dim=64)))
        path = tmp_path / "other.safetensors"
        _make_lora(wide, path, "peft")
        return path, "another architecture"
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = tmp_path / "unknown-keys.safetensors"
    with safe_open(str(lora_file), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    tensors["lora_unet_nowhere.lora_down.weight"] = torch.zeros(2, 4)
    save_file(tensors, str(path))
    return path, "lora_unet_nowhere"


@pytest.mark.parametrize("kind", ["truncated", "other-architecture", "unmatched-keys"])
def test_bad_lora_fails_cleanly(kind: str, tiny_svd_folder: Path, lora_file: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture) -> None:
    path, needle = _bad(kind, tmp_path, lora_file)
    out = tmp_path / "clip.mp4"
    code = main(["generate", "--image", str(PHOTO), "--model", str(tiny_svd_folder), "--output", str(out),
                 "--lora", str(path), *SMALL])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and needle in err, err
    assert not out.exists() and not out.with_name("clip.mp4.json").exists()


def test_convert_between_lora_formats_keeps_every_tensor(lora_file: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    start, _ = read_lora(lora_file)
    src = lora_file
    for fmt in ("peft", "vidiff", "kohya"):
        dst = tmp_path / f"{fmt}.safetensors"
        assert main(["convert", str(src), str(dst), "--to", f"lora-{fmt}"]) == 0, capsys.readouterr().err
        back, _ = read_lora(dst)
        assert back.format == fmt and set(back.tensors) == set(start.tensors)
        assert all(torch.equal(back.tensors[k], v) for k, v in start.tensors.items())
        src = dst
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(lora_file.read_bytes()[:50])
    assert main(["convert", str(cut), str(tmp_path / "x.safetensors"), "--to", "lora-peft"]) == 2
    assert not (tmp_path / "x.safetensors").exists()


def test_train_with_a_lora_section_trains_only_the_adapters(tmp_path: Path) -> None:
    from vidiff.training.config import TrainConfig
    from vidiff.training.loop import train
    from vidiff.training.model import build_models

    cfg = TrainConfig.from_yaml(REPO / "configs" / "tiny_moving_shapes.yaml", [
        f"output_dir={tmp_path / 'run'}", "progress=false", "data.num_samples=4", "data.batch_size=2",
        "schedule.max_steps=3", "schedule.warmup_steps=0", "checkpoint.every_steps=0", "optim.lr=0.01",
        "lora.rank=2", "lora.alpha=2", "lora.targets=['*.to_q', '*.to_v', '*.conv1']"])
    result = train(cfg)
    assert result.model_dir == tmp_path / "run" / "lora.safetensors"
    lora, _ = read_lora(result.model_dir)
    base = build_models(cfg.model, cfg.data, seed=cfg.seed).unet  # the same seeded base weights
    assert lora.metadata["base_model_sha256"] == state_sha256(base.state_dict())
    assert lora.metadata["rank"] == 2 and lora.layers and all(
        t.rsplit(".", 1)[-1] in ("to_q", "to_v", "conv1") for t in lora.layers)
    # B starts at zero: every adapter trained but cross-attention's, whose context is this model's zero CLIP token
    untrained = [t for t in lora.layers if not lora.tensors[t + ".lora_up.weight"].abs().max() > 0]
    assert len(untrained) < len(lora.layers) / 2 and all(".attn2." in t for t in untrained), untrained
    assert not (tmp_path / "run" / "model").exists()
    assert result.model_dir.stat().st_size < sum(v.numel() * 4 for v in base.state_dict().values()) / 10


def test_pan_angle_limits_the_camera_moves_to_leftward_pans() -> None:
    """The LoRA's training data: pans whose exact flow back to frame 0 points left (the camera moves left)."""
    from vidiff.training.data import CameraMoveDataset, skimage_photographs

    photos = skimage_photographs()[:2]
    left = CameraMoveDataset(photos, num_frames=3, size=(24, 24), num_samples=8, moves=("pan",),
                             pan_angle=(160, 200), strength=(0.5, 1.0))
    anywhere = CameraMoveDataset(photos, num_frames=3, size=(24, 24), num_samples=8, moves=("pan",), seed=1)
    flows = [left[i]["flow"][-1].mean(dim=(1, 2)) for i in range(len(left))]
    assert all(fx < 0 and abs(fx) > 2 * abs(fy) for fx, fy in flows), flows
    assert any(anywhere[i]["flow"][-1, 0].mean() > 0 for i in range(len(anywhere)))


@pytest.mark.parametrize(("override", "field"), [("lora.rank=0", "lora.rank"), ("lora.dropout=1.5", "lora.dropout"),
                                                 ("lora.targets=[]", "lora.targets")])
def test_bad_lora_config_names_the_field(override: str, field: str) -> None:
    from vidiff.training.config import ConfigError, TrainConfig

    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        TrainConfig.from_yaml(REPO / "configs" / "tiny_moving_shapes.yaml", [override])
    with pytest.raises(ConfigError, match="lora trains only the adapters"):
        TrainConfig.from_dict({"lora": {"rank": 2}, "stages": [{"name": "a"}]})
