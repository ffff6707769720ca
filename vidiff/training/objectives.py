"""Training objectives: the EDM denoising loss as SVD trains, DDPM ε-MSE, and the flow-consistency term.

* ``edm`` — denoising score matching in EDM form (Karras et al. 2022, eq. 2 and 8): ``σ ~ exp(N(P_mean,
  P_std²))``, ``x_σ = x₀ + σ·n``, loss ``λ(σ)·‖D(x_σ, σ) − x₀‖²``; SVD (Blattmann et al. 2023) uses the
  v-prediction preconditioning with EDM's ``c_noise = ¼ ln σ`` (``VScalingEDMcNoise``) and, for σ_data = 1,
  the weighting ``λ = (σ² + 1)/σ²`` (``VWeighting``).
* ``flow`` — rectified flow (``vidiff.training.dit``): EDM's loss with ``FlowScaling`` and λ = 1/t², which is
  the velocity MSE ``‖F(x_t, t) − (ε − x₀)‖²`` on ``x_t = (1 − t)·x₀ + t·ε`` (Liu et al. 2022, eq. 1).
* ``ddpm`` — ε-prediction MSE at a uniform discrete timestep (Ho et al. 2020, Alg. 1).
* ``flow`` — motion consistency of the model's denoised prediction ``x̂ = D(x_σ, σ)`` (seed 000 §5.2,
  ``L_flow = Σ_i ‖x̂_i − W(x̂_{i+1}, f_i)‖₁``): the backward flows ``f_i`` between frames i and i+1 come from
  a **fixed** estimator run on the clean training clip ``x₀`` (:func:`reference_flow`, the CLG estimator
  of ``vidiff.metrics.flow``) under ``no_grad``, and the term is the photometric warp error of the
  *prediction* under the clip's own motion (W = differentiable bilinear backward warp), averaged over
  pixels whose sample point ``p + f_i(p)`` lies inside the frame. Gradient reaches the denoiser only:
  the flow is a constant of the step, so the term can only be lowered by predicting frames that move as
  the clip moves — a still prediction is penalised wherever the clip moves (a learned flow that reads the
  prediction would instead be minimised, from its zero initialisation, by still predictions). The
  :class:`~vidiff.networks.motion.MotionPredictor` head, when present, learns to regress that same flow
  from the clean clip (FlowNet's endpoint error, Dosovitskiy et al. 2015) and never judges the prediction.

Random draws are made **per sample** from a generator keyed by ``(seed, step, position in the global
batch)`` (:func:`sample_draws`), which makes a run independent of how the global batch is split over
processes and micro-steps, and exactly resumable.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vidiff.diffusion.denoiser import Denoiser
from vidiff.diffusion.flow_matching import FlowScaling
from vidiff.diffusion.losses import EDMLogNormalSampler, ddpm_eps_loss, denoising_loss, weighting_by_name
from vidiff.diffusion.scalings import DiscreteEpsScaling, scaling_by_name
from vidiff.diffusion.schedules import DiscreteSchedule, alphas_cumprod, make_betas
from vidiff.metrics.flow import estimate_flow, warp
from vidiff.training.config import LossConfig
from vidiff.utils import append_dims

_MIX = 0x9E3779B97F4A7C15


def sample_seed(seed: int, step: int, position: int, stream: int = 0) -> int:
    """A 63-bit seed for one sample's draws (splitmix64-style mixing of the inputs)."""
    z = (seed * 0x100000001B3 + step * 0x1000193 + position * 0x51ED27 + stream + _MIX) % 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return (z ^ (z >> 31)) % 2**63


@dataclass
class Draws:
    """Per-sample randomness of one micro-batch (all on the batch's device, float32)."""

    keep: torch.Tensor  # (B,) 1 = keep conditioning, 0 = dropped for CFG
    aug_strength: torch.Tensor  # (B,) noise-augmentation strength of the conditioning frame
    aug_noise: torch.Tensor  # (B, 3, H, W) noise for the conditioning frame (pixels)
    sigma: torch.Tensor  # (B,) or per frame (B, T) EDM noise level (ddpm: sqrt((1 - ᾱ_t)/ᾱ_t); flow: t/(1 - t))
    timestep: torch.Tensor  # (B,) DDPM timestep index (0 for edm)
    noise: torch.Tensor  # (B, T, C, h, w) diffusion noise


def ddpm_alphas_cumprod(cfg: LossConfig) -> torch.Tensor:
    """ᾱ_t of the β schedule ``cfg.ddpm_beta_schedule`` (``linear``: DDPM's 1e-4 → 0.02), float64."""
    return alphas_cumprod(make_betas(cfg.ddpm_beta_schedule, cfg.ddpm_timesteps, cfg.ddpm_beta_start,
                                     cfg.ddpm_beta_end))


def sample_draws(cfg: LossConfig, *, seed: int, step: int, positions: list[int], image_shape: tuple[int, ...],
                 latent_shape: tuple[int, ...], device: torch.device) -> Draws:
    """Draw every random quantity of the samples at global-batch ``positions`` of optimizer step ``step``.

    Order per sample (fixed): dropout uniform, noise-aug strength normal, noise-aug noise, sigma / timestep,
    diffusion noise. ``cfg.fixed_noise`` keys every step as step 0 (overfit checks).
    """
    sigma_sampler = EDMLogNormalSampler(cfg.p_mean, cfg.p_std)
    alphas = ddpm_alphas_cumprod(cfg) if cfg.objective == "ddpm" else None
    key_step = 0 if cfg.fixed_noise else step
    keep, aug, aug_noise, sigma, tsteps, noise = [], [], [], [], [], []
    for p in positions:
        g = torch.Generator().manual_seed(sample_seed(seed, key_step, p))
        keep.append((torch.rand(1, generator=g) >= cfg.ucg_rate).float())
        z = torch.randn(1, generator=g)
        aug.append(torch.exp(cfg.aug_p_mean + cfg.aug_p_std * z) if cfg.noise_aug == "lognormal"
                   else torch.full((1,), cfg.noise_aug_strength))
        aug_noise.append(torch.randn(image_shape, generator=g))
        if alphas is not None:
            t = torch.randint(0, cfg.ddpm_timesteps, (1,), generator=g)
            a = alphas[t]
            sigma.append(((1 - a) / a).sqrt().float())
            tsteps.append(t.float())
        else:
            # flow: logit t ~ N(p_mean, p_std²) is this log-normal σ (σ = t/(1 − t)); per_frame: one per frame
            sigma.append(sigma_sampler(latent_shape[0] if cfg.per_frame else 1, generator=g).float())
            tsteps.append(torch.zeros(1))
        noise.append(torch.randn(latent_shape, generator=g))
    return Draws(keep=torch.cat(keep).to(device), aug_strength=torch.cat(aug).to(device),
                 aug_noise=torch.stack(aug_noise).to(device),
                 sigma=(torch.stack(sigma) if cfg.per_frame else torch.cat(sigma)).to(device),
                 timestep=torch.cat(tsteps).to(device), noise=torch.stack(noise).to(device))


def make_scaling(cfg: LossConfig) -> object:
    """The preconditioning (Karras et al. 2022 Table 1) named by ``cfg.scaling``; for ddpm the one it trains:
    ε-prediction with ``c_noise`` = the integer timestep of its β schedule (``discrete_eps``)."""
    if cfg.objective == "ddpm":
        return DiscreteEpsScaling(DiscreteSchedule(ddpm_alphas_cumprod(cfg)))
    if cfg.objective == "flow":  # velocity on EDM's state: D = x_t − t·F (vidiff.diffusion.flow_matching)
        return FlowScaling()
    return scaling_by_name(cfg.scaling, cfg.sigma_data)


def make_weighting(cfg: LossConfig) -> object:
    """λ(σ) named by ``cfg.weighting`` (``vidiff.diffusion.WEIGHTINGS``): ``v`` = (σ²+1)/σ² (EDM with
    σ_data = 1), ``edm`` (σ²+σ_d²)/(σσ_d)², ``eps`` 1/σ², ``unit``; for flow 1/t² (the velocity MSE)."""
    return weighting_by_name("flow" if cfg.objective == "flow" else cfg.weighting, cfg.sigma_data)


def flow_consistency_loss(frames: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Per-sample photometric warp error ``mean_p |x_i(p) − x_{i+1}(p + f_i(p))|`` over valid pixels.

    ``frames (B, T, C, H, W)``, ``flow (B, T−1, 2, H, W)`` in pixels (x, y). Pixels whose sample point falls
    outside the frame are excluded (their value would be padding). Returns ``(B,)``.
    """
    b, t, c, h, w = frames.shape
    if flow.shape != (b, t - 1, 2, h, w):
        raise ValueError(f"flow must be {(b, t - 1, 2, h, w)}, got {tuple(flow.shape)}")
    f = flow.flatten(0, 1).to(frames.dtype)
    warped = warp(frames[:, 1:].flatten(0, 1), f).reshape(b, t - 1, c, h, w)
    ys, xs = torch.meshgrid(torch.arange(h, device=frames.device, dtype=frames.dtype),
                            torch.arange(w, device=frames.device, dtype=frames.dtype), indexing="ij")
    px, py = xs + f[:, 0], ys + f[:, 1]
    valid = ((px >= 0) & (px <= w - 1) & (py >= 0) & (py <= h - 1)).to(frames.dtype)
    valid = valid.reshape(b, t - 1, 1, h, w)
    err = (frames[:, :-1] - warped).abs() * valid
    return err.sum(dim=(1, 2, 3, 4)) / (valid.sum(dim=(1, 2, 3, 4)) * c).clamp_min(1.0)


@torch.no_grad()
def reference_flow(x0: torch.Tensor) -> torch.Tensor:
    """Backward flows ``(B, T−1, 2, H, W)`` of the clean clip ``x0 (B, T, C, H, W)`` by the fixed CLG estimator.

    ``x0_i(p) ≈ x0_{i+1}(p + f_i(p))`` (``vidiff.metrics.flow.estimate_flow``), computed without gradient:
    the target of the flow-consistency term is a constant of the training step. Three channels are read
    as pixels in [-1, 1] (luma of ``(x + 1)/2``); any other channel count (latents) as the channel mean
    rescaled to [0, 1] over the clip.
    """
    if x0.ndim != 5 or x0.shape[1] < 2:
        raise ValueError(f"x0 must be (B, T >= 2, C, H, W), got {tuple(x0.shape)}")
    b, t, c, h, w = x0.shape
    x = x0.float()
    if c == 3:
        frames = ((x + 1) / 2).clamp(0, 1)
    else:
        frames = x.mean(dim=2, keepdim=True)
        lo = frames.amin(dim=(1, 2, 3, 4), keepdim=True)
        hi = frames.amax(dim=(1, 2, 3, 4), keepdim=True)
        frames = (frames - lo) / (hi - lo).clamp_min(1e-6)
    flow = estimate_flow(frames[:, :-1].flatten(0, 1), frames[:, 1:].flatten(0, 1))
    return flow.reshape(b, t - 1, 2, h, w).to(x0.dtype)


def endpoint_error(flow: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample mean Euclidean distance ``mean_p ‖flow(p) − target(p)‖`` (FlowNet's EPE), ``(B,)``."""
    return torch.linalg.vector_norm(flow - target, dim=2).flatten(1).mean(1)


class DiffusionObjective(nn.Module):
    """The trained module: network (+ motion head) and the loss in one ``forward``.

    Keeping the loss inside ``forward`` lets DDP / FSDP see every parameter use in one call.
    ``forward(x0, cond, draws) -> {"loss", "diffusion", "flow", "motion_head"}``, each per sample ``(B,)``.
    """

    def __init__(self, unet: nn.Module, cfg: LossConfig, motion_head: nn.Module | None = None) -> None:
        super().__init__()
        self.unet = unet
        self.motion_head = motion_head
        self.cfg = cfg
        self.scaling = make_scaling(cfg)
        self.weighting = make_weighting(cfg)
        self.register_buffer("alphas_cumprod", ddpm_alphas_cumprod(cfg).float(), persistent=False)

    def forward(self, x0: torch.Tensor, cond: object, draws: Draws) -> dict[str, torch.Tensor]:
        noise = draws.noise.to(x0.dtype)
        if self.cfg.objective == "ddpm":
            # Ho et al. 2020 Alg. 1 with the drawn t and ε: ‖ε − ε_θ(√ᾱ x₀ + √(1−ᾱ) ε, t)‖², the network sees t.
            seen = []

            def eps_model(x_t: torch.Tensor, t: torch.Tensor, c: object) -> torch.Tensor:
                dtype = next(self.unet.parameters()).dtype
                eps = self.unet(x_t.to(dtype), t.to(dtype), c).to(x_t.dtype)
                a = append_dims(self.alphas_cumprod[t.long()], x_t.ndim).to(x_t.dtype)
                seen.append((x_t - (1 - a).sqrt() * eps) / a.sqrt())  # x̂₀ for the flow term
                return eps

            per = ddpm_eps_loss(eps_model, x0, cond, self.alphas_cumprod, noise=noise, timesteps=draws.timestep)
            denoised = seen[0]
        else:
            seen: list[torch.Tensor] = []

            def denoiser(x: torch.Tensor, sigma: torch.Tensor, c: object) -> torch.Tensor:
                d = Denoiser(self.unet, self.scaling)(x, sigma, c)  # EDM eq. 7
                seen.append(d)
                return d

            def sigmas(n: int, generator: object = None, device: object = None) -> torch.Tensor:
                return draws.sigma  # this batch's per-sample draws (see sample_draws)

            # EDM eq. 2 and 8 with the drawn σ and n: λ(σ)·mean((D(x₀ + σn, σ) − x₀)²) per sample
            per = denoising_loss(denoiser, x0, cond, sigmas, self.weighting, noise=noise)
            denoised = seen[0]
        flow = head = torch.zeros_like(per)
        if self.cfg.flow_weight > 0:
            target = reference_flow(x0)  # fixed estimator on the clean clip: no gradient reaches it
            flow = flow_consistency_loss(denoised, target)
            if self.motion_head is not None:  # learns the clip's flow; its output never enters `flow`
                head = endpoint_error(self.motion_head(x0), target)
        return {"loss": per + self.cfg.flow_weight * (flow + head), "diffusion": per, "flow": flow,
                "motion_head": head}
