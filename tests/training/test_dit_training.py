"""``model.backbone: dit`` with ``loss.objective: flow``: the loss is the rectified-flow velocity MSE, a run
trains, exports a model the image-to-video pipeline samples (also at twice the trained frame count), and
resumes bit for bit as the UNet's runs do (per-frame timesteps included)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from vidiff.conditioning import Cond
from vidiff.diffusion.flow_matching import sigma_to_flow_time
from vidiff.networks.dit_video import VideoDiT, VideoDiTConfig
from vidiff.training.checkpoint import list_checkpoints
from vidiff.training.config import ConfigError, LossConfig, TrainConfig
from vidiff.training.loop import train
from vidiff.training.objectives import DiffusionObjective, sample_draws

from .conftest import TINY_CONFIG, load_ckpt_tensors

STEPS = 4
DIT = ["model.backbone=dit", "model.addition_time_embed_dim=8", "model.dit.num_layers=1",
       "model.dit.num_attention_heads=2", "model.dit.attention_head_dim=6", "model.dit.ffn_dim=16",
       "model.dit.freq_dim=8", "loss.objective=flow"]


def _config(out: Path, *extra: str) -> TrainConfig:
    return TrainConfig.from_yaml(TINY_CONFIG, [
        f"output_dir={out}", "progress=false", "deterministic=true", "data.num_samples=4", "data.batch_size=2",
        "data.height=8", "data.width=8", f"schedule.max_steps={STEPS}", "schedule.warmup_steps=1",
        "checkpoint.every_steps=1", f"checkpoint.keep_last={STEPS}", "ema.decay=0.9", *DIT, *extra])


def test_flow_objective_is_the_velocity_mse() -> None:
    torch.manual_seed(0)
    cfg = LossConfig(objective="flow", per_frame=True, ucg_rate=0.0)
    net = VideoDiT(VideoDiTConfig(in_channels=3, out_channels=3, num_frames=4, addition_time_embed_dim=8,
                                  num_attention_heads=2, attention_head_dim=6, ffn_dim=16, num_layers=1, freq_dim=8))
    torch.nn.init.normal_(net.transformer.proj_out.weight, std=0.1)  # not the zero init: a non-trivial F
    x0 = torch.randn(2, 4, 3, 4, 4)
    draws = sample_draws(cfg, seed=0, step=0, positions=[0, 1], image_shape=(3, 4, 4), latent_shape=(4, 3, 4, 4),
                         device=torch.device("cpu"))
    assert draws.sigma.shape == (2, 4)  # one t per frame
    cond = Cond(crossattn=torch.zeros(2, 1, 8))
    got = DiffusionObjective(net, cfg)(x0, cond, draws)["diffusion"]
    t = sigma_to_flow_time(draws.sigma)[..., None, None, None]
    x_t = (1 - t) * x0 + t * draws.noise  # rectified flow, Liu et al. 2022 eq. 1
    v = net(x_t, 1000 * sigma_to_flow_time(draws.sigma), cond)
    want = (v - (draws.noise - x0)).square().flatten(1).mean(1)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_dit_config_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model\.backbone"):
        _config(tmp_path, "model.backbone=vit")
    with pytest.raises(ConfigError, match=r"model\.dit\.attention_head_dim"):
        _config(tmp_path, "model.dit.attention_head_dim=5")
    with pytest.raises(ConfigError, match=r"loss\.per_frame"):
        _config(tmp_path, "loss.objective=ddpm", "loss.per_frame=true")
    with pytest.raises(ValueError, match=r"model\.dit\.patch_size"):
        train(_config(tmp_path / "odd", "data.height=9"))


@pytest.mark.parametrize("per_frame", [False, True])
def test_dit_resume_is_exact(tmp_path: Path, per_frame: bool) -> None:
    extra = [f"loss.per_frame={str(per_frame).lower()}"]
    ref = train(_config(tmp_path / "ref", *extra))
    assert all(torch.isfinite(torch.tensor(ref.losses)))
    ckpts = list_checkpoints(tmp_path / "ref" / "checkpoints")
    expected = load_ckpt_tensors(ckpts[-1])
    assert any(k.startswith("unet.transformer.blocks.0.attn1") for k in expected["model"])
    k = 2
    out = tmp_path / "resumed"
    shutil.copytree(ckpts[k - 1], out / "checkpoints" / ckpts[k - 1].name)
    resumed = train(_config(out, *extra, "checkpoint.export=false"), resume=True)
    assert resumed.resumed_from == k
    assert resumed.losses == ref.losses[k:]  # bit for bit
    got = load_ckpt_tensors(out / "checkpoints" / ckpts[-1].name)
    for part in ("model", "ema", "optimizer"):
        assert got[part].keys() == expected[part].keys(), part
        for name, tensor in expected[part].items():
            assert torch.equal(got[part][name], tensor), f"{part}/{name} differs after resume"


def test_exported_dit_samples_through_the_image_to_video_pipeline(tmp_path: Path) -> None:
    from vidiff.pipelines.loading import load_trained_dit
    from vidiff.training.dit import dit_pipeline

    run = train(_config(tmp_path / "run", "model.autoencoder=patch", "model.patch_size=2", "schedule.max_steps=1",
                        "checkpoint.every_steps=0"))
    assert load_trained_dit(run.model_dir).scheduler_config["scaling"] == "flow"
    pipe = dit_pipeline(run.model_dir)
    image = torch.rand(3, 8, 8)
    for frames in (4, 8):  # the trained count and twice it (3D RoPE extrapolation)
        video = pipe(image, num_frames=frames, num_inference_steps=2, output_type="pt", progress=False,
                     generator=torch.Generator().manual_seed(0)).frames
        assert video.shape[1] == frames and torch.isfinite(video).all()
    # `vidiff generate --model` takes the exported folder as it is, and writes what the pipeline makes
    from vidiff.cli.main import main
    from vidiff.io.video import read_image, read_video, write_image

    write_image(image, tmp_path / "in.png")
    out = tmp_path / "clip"  # a png folder: lossless
    assert main(["generate", "--model", str(run.model_dir), "--image", str(tmp_path / "in.png"), "--output",
                 f"{out}/", "--steps", "2", "--num-frames", "8", "--seed", "3", "--quiet"]) == 0
    frames, _ = read_video(out)
    video = pipe(read_image(tmp_path / "in.png"), num_frames=8, num_inference_steps=2, seed=3, output_type="pt",
                 progress=False).frames[0]
    assert frames.shape == video.shape and (frames - video).abs().max() <= 1 / 255 + 1e-6  # uint8 rounding
