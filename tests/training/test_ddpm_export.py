"""DDPM training (``loss.objective=ddpm``): the DDPM paper's linear β schedule in closed form, and
train → export → generate samples the model as it was trained: ε output, ``c_noise`` = the integer timestep,
``c_in = √ᾱ_t``, with its β schedule recorded in the exported scheduler config (diffusers as the oracle of
the sampling timesteps)."""

from __future__ import annotations

import math
from pathlib import Path

import diffusers
import pytest
import torch

from vidiff.diffusion import Denoiser
from vidiff.training.config import LossConfig, TrainConfig
from vidiff.training.loop import train
from vidiff.training.model import build_dataset, build_models, prepare_batch
from vidiff.training.objectives import DiffusionObjective, ddpm_alphas_cumprod, sample_draws

T = 1000


def _alpha_bar(beta: list[float]) -> torch.Tensor:
    """ᾱ_t = ∏_{s≤t} (1 − β_s) by a plain running product (Ho et al. 2020, eq. 4)."""
    out, acc = [], 1.0
    for b in beta:
        acc *= 1.0 - b
        out.append(acc)
    return torch.tensor(out, dtype=torch.float64)


LINEAR = _alpha_bar([1e-4 + (0.02 - 1e-4) * s / (T - 1) for s in range(T)])  # Ho et al. 2020, Sec. 4
SCALED_LINEAR = _alpha_bar([(math.sqrt(0.00085) + (math.sqrt(0.012) - math.sqrt(0.00085)) * s / (T - 1)) ** 2
                            for s in range(T)])  # Stable Diffusion / SVD


def test_ddpm_trains_on_the_papers_linear_betas_or_sds_scaled_linear() -> None:
    torch.testing.assert_close(ddpm_alphas_cumprod(LossConfig(objective="ddpm")), LINEAR, rtol=1e-12, atol=0)
    sd = LossConfig(objective="ddpm", ddpm_beta_schedule="scaled_linear")
    torch.testing.assert_close(ddpm_alphas_cumprod(sd), SCALED_LINEAR, rtol=1e-12, atol=0)
    # the σ the training draws are those of the integer timesteps it hands the network
    draws = sample_draws(LossConfig(objective="ddpm"), seed=0, step=0, positions=list(range(16)),
                         image_shape=(3, 4, 4), latent_shape=(2, 3, 4, 4), device=torch.device("cpu"))
    t = draws.timestep.long()
    assert torch.equal(draws.timestep, t.float())
    torch.testing.assert_close(draws.sigma.double(), ((1 - LINEAR[t]) / LINEAR[t]).sqrt(), rtol=1e-6, atol=0)


def test_ddpm_model_is_exported_and_sampled_as_it_was_trained(tmp_path: Path) -> None:
    from vidiff.pipelines import ImageToVideoPipeline

    cfg = TrainConfig.from_dict({
        "output_dir": str(tmp_path / "run"), "progress": False, "device": "cpu",
        "model": {"preset": "tiny", "autoencoder": "patch", "patch_size": 4},
        "data": {"dataset": "moving_shapes", "num_frames": 3, "height": 16, "width": 16, "num_samples": 4,
                 "batch_size": 2},
        "schedule": {"max_steps": 2}, "checkpoint": {"export_weights": "raw"},
        "loss": {"objective": "ddpm", "ucg_rate": 0.0},
    })
    pipe = ImageToVideoPipeline.from_pretrained(train(cfg).model_dir)
    sched = pipe.model.scheduler_config
    assert (sched["prediction_type"], sched["timestep_type"]) == ("epsilon", "discrete")
    assert (sched["beta_schedule"], sched["num_train_timesteps"]) == ("linear", T)
    assert (sched["beta_start"], sched["beta_end"]) == pytest.approx((1e-4, 0.02), rel=1e-12)
    sigmas = ((1 - LINEAR) / LINEAR).sqrt()  # σ_t of the trained steps
    assert sigmas[0] * (1 - 1e-6) <= pipe.sigma_min < pipe.sigma_max <= sigmas[-1] * (1 + 1e-6)

    # the exported parametrisation at the trained noise levels: Ho et al.'s network, written in VE form
    t = torch.tensor([0, 1, 17, 500, 998, 999])
    c_skip, c_out, c_in, c_noise = pipe.scaling(sigmas[t])
    torch.testing.assert_close(c_noise, t.double(), rtol=0, atol=1e-9)  # the integer timestep itself
    torch.testing.assert_close(c_in, LINEAR[t].sqrt(), rtol=1e-12, atol=0)  # x_t = √ᾱ·x_σ
    torch.testing.assert_close(c_out, -sigmas[t], rtol=0, atol=0)  # D = x − σ·ε̂
    assert torch.equal(c_skip, torch.ones_like(c_skip))

    # the pipeline's denoiser on the exported weights reproduces the training loss on a training batch
    bundle = build_models(cfg.model, cfg.data, seed=cfg.seed)
    ds = build_dataset(cfg.data, seed=cfg.seed)
    x0, cond_fn, image_shape = prepare_batch(bundle, [ds[0], ds[1]], torch.device("cpu"))
    draws = sample_draws(cfg.loss, seed=1, step=3, positions=[0, 1], image_shape=image_shape,
                         latent_shape=tuple(x0.shape[1:]), device=torch.device("cpu"))
    cond = cond_fn(draws)
    with torch.no_grad():
        trained = DiffusionObjective(pipe.unet, cfg.loss)(x0, cond, draws)["diffusion"]
        sigma = draws.sigma.view(-1, 1, 1, 1, 1)
        x = x0 + sigma * draws.noise
        eps = (x - Denoiser(pipe.unet, pipe.scaling)(x, draws.sigma, cond)) / sigma
        sampled = (eps - draws.noise).square().flatten(1).mean(1)
    torch.testing.assert_close(sampled, trained, rtol=1e-3, atol=0)

    # diffusers' Euler scheduler built from the exported config hands the network the same timesteps
    euler = diffusers.EulerDiscreteScheduler.from_config(sched)
    euler.set_timesteps(6)
    torch.testing.assert_close(pipe.scaling(euler.sigmas[:-1]).c_noise, euler.timesteps, rtol=0, atol=2e-3)

    out = pipe(torch.rand(3, 16, 16), num_inference_steps=3, output_type="pt", progress=False)
    assert out.frames.shape == (1, 3, 3, 16, 16) and torch.isfinite(out.frames).all()
