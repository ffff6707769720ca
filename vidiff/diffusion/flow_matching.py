"""Flow matching (rectified flow, Liu et al. 2022; Lipman et al. 2023) inside the EDM framework.

Rectified flow interpolates ``x_t = (1 − t)·x₀ + t·ε`` and trains the network on the velocity
``v = ε − x₀``. This is EDM's scaled process ``x_t = s(t)·(x₀ + σ·ε)`` (Karras et al. 2022, eq. 4) with
``s = 1 − t`` and ``σ = t / (1 − t)``, so a velocity network is one more preconditioning:

* :class:`FlowScaling` works on EDM's unscaled state ``x = x₀ + σ·ε`` (every EDM sampler, the EDM
  training losses, per-frame σ): ``c_in = c_skip = 1/(1 + σ)``, ``c_out = −σ/(1 + σ)``, ``c_noise = 1000·t``.
* :class:`FlowTimeScaling` works on ``x_t`` itself with "σ" read as the flow time ``t`` (``c_in = c_skip = 1``,
  ``c_out = −t``): the reference samplers of Wan and diffusers start at ``t = 1`` (``σ = ∞``), which EDM's
  state cannot hold. Euler on this denoiser, ``x' = x + (t' − t)·(x − D)/t``, is exactly the flow Euler step
  ``x' = x + (t' − t)·v`` and exactly EDM's Euler step on ``x/s`` (both are DDIM; Karras et al. 2022, Sec. 4),
  so :func:`vidiff.diffusion.sample_euler` is the flow Euler sampler; :func:`sample_flow_unipc` is UniPC,
  the reference's default.

Wan (like SD3, Esser et al. 2024, eq. 23) samples on shifted times ``t' = s·t / (1 + (s − 1)·t)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vidiff.diffusion.scalings import SCALINGS, Coefficients, Scaling
from vidiff.utils import append_dims

NUM_TRAIN_TIMESTEPS = 1000


def sigma_to_flow_time(sigma: Tensor) -> Tensor:
    """EDM σ -> flow time ``t = σ/(1 + σ)`` (``σ = ∞`` gives 1)."""
    return torch.where(torch.isinf(sigma), torch.ones_like(sigma), sigma / (1 + sigma))


def flow_time_to_sigma(t: Tensor) -> Tensor:
    """Flow time -> EDM σ ``= t/(1 − t)``."""
    return t / (1 - t)


def shift_flow_time(t: Tensor | np.ndarray | float, shift: float) -> Tensor | np.ndarray | float:
    """Timestep shift ``s·t / (1 + (s − 1)·t)`` (SD3, Esser et al. 2024, eq. 23; Wan's ``flow_shift``).

    Equivalent to scaling the noise level by ``s`` in EDM terms: ``σ' = s·σ``.
    """
    return shift * t / (1 + (shift - 1) * t)


def flow_add_noise(x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """The rectified-flow interpolant ``x_t = (1 − t)·x₀ + t·ε`` (``t`` of shape ``(B,)`` or ``(B, T)``)."""
    t = append_dims(t.to(x0.dtype), x0.ndim)
    return (1 - t) * x0 + t * noise


class FlowScaling(Scaling):
    """Velocity prediction on EDM's state ``x = x₀ + σ·ε``: ``D = x/(1 + σ) − σ/(1 + σ)·F(x/(1 + σ), 1000·t)``.

    From ``x_t = x/(1 + σ)`` and ``x₀ = x_t − t·v``; the ideal ``F`` is ``ε − x₀`` (EDM eq. 8).
    """

    prediction_type = "flow_prediction"

    def __call__(self, sigma: Tensor) -> Coefficients:
        c_in = 1 / (1 + sigma)
        t = sigma * c_in
        return Coefficients(c_in, -t, c_in, NUM_TRAIN_TIMESTEPS * t)

    def __repr__(self) -> str:
        return "FlowScaling()"


class FlowTimeScaling(Scaling):
    """Velocity prediction on ``x_t`` with σ read as flow time ``t``: ``D = x_t − t·F(x_t, 1000·t)``.

    With ``integer_timesteps`` the network sees ``⌊1000·t⌋``, as diffusers' UniPC scheduler feeds Wan.
    """

    prediction_type = "flow_prediction"

    def __init__(self, integer_timesteps: bool = False) -> None:
        self.integer_timesteps = integer_timesteps

    def __call__(self, t: Tensor) -> Coefficients:
        one = torch.ones_like(t)
        c_noise = NUM_TRAIN_TIMESTEPS * t
        if self.integer_timesteps:
            c_noise = c_noise.floor()
        return Coefficients(one, -t, one, c_noise)

    def target(self, x0: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
        """The velocity ``ε − x₀`` (the state here is ``x_t``, not EDM's ``x₀ + σ·ε``)."""
        return noise - x0

    def __repr__(self) -> str:
        return f"FlowTimeScaling(integer_timesteps={self.integer_timesteps})"


def flow_euler_times(num_steps: int, shift: float = 1.0, *,
                     num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> Tensor:
    """Flow times ``t₀ > … > t_{N−1} > 0`` and a final 0, as diffusers' ``FlowMatchEulerDiscreteScheduler``
    (``shift`` set, no dynamic shifting) builds them: N points evenly spaced from ``shift(1) = 1`` down to
    ``shift(1/N_train)``, then shifted (the lower end is shifted twice there, kept for parity). float32.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    t_min = float(np.float32(shift_flow_time(np.float32(1.0 / num_train_timesteps), shift)))
    t = np.linspace(1.0, t_min, num_steps)
    t = shift_flow_time(t, shift).astype(np.float32)
    return torch.cat([torch.from_numpy(t), torch.zeros(1)])


def flow_unipc_times(num_steps: int, shift: float = 1.0, *,
                     num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> Tensor:
    """Flow times of diffusers' ``UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=shift)`` (Wan's
    default): ``linspace(1, 1/N_train, N + 1)`` without its last point, shifted, the first nudged to
    ``1 − 10⁻⁶``, and a final 0. float32."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    t = shift_flow_time(np.linspace(1.0, 1.0 / num_train_timesteps, num_steps + 1)[:-1], shift)
    if abs(t[0] - 1) < 1e-6:
        t[0] -= 1e-6
    return torch.from_numpy(np.concatenate([t, [0.0]]).astype(np.float32))


# --- UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion
# Models") in its data-prediction, B(h) = e^h − 1 ("bh2") form on the rectified-flow path x_t = α_t·x₀ + σ_t·ε,
# α_t = 1 − t, σ_t = t, half-log-SNR λ_t = log(α_t/σ_t): the sampler of Wan's reference and of diffusers'
# UniPCMultistepScheduler(use_flow_sigmas=True). The denoiser is the flow-time one (D(x_t, t) = x̂₀). Each step
# corrects the previous prediction with the new model evaluation (UniC, Alg. 2) and predicts the next point
# (UniP, Alg. 1) from the last `order` evaluations; the order is lowered for warm-up and for the final step.


def _lambda(t: Tensor) -> Tensor:
    return torch.log(1 - t) - torch.log(t)  # λ = log α − log σ (∞ at t = 0)


def _coefficients(h: Tensor, order: int) -> tuple[Tensor, Tensor, Tensor]:
    """``h·φ₁(h)``, ``B(h)`` and the right-hand side ``b`` of the order conditions (UniPC eq. 8, bh2)."""
    hh = -h  # data prediction integrates in −λ
    h_phi_1 = torch.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    b, factorial = [], 1
    for k in range(1, order + 1):
        b.append(h_phi_k * factorial / h_phi_1)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return h_phi_1, h_phi_1, torch.stack(b)


def _update(x: Tensor, t_s0: Tensor, t_next: Tensor, history: list[tuple[Tensor, Tensor]], order: int,
            new: Tensor | None) -> Tensor:
    """One UniP step from ``(x, t_s0)`` to ``t_next`` (``new`` None) or the UniC correction of it, ``new``
    being the model's ``x̂₀`` at ``t_next``. ``history``: ``(x̂₀, t)`` of earlier points, newest last."""
    m0, lam_s0 = history[-1][0], _lambda(t_s0)
    h = _lambda(t_next) - lam_s0
    rks, d1s = [], []
    for m_i, t_i in history[-order:-1][::-1]:  # previous points, nearest first
        rk = (_lambda(t_i) - lam_s0) / h
        rks.append(rk)
        d1s.append((m_i - m0) / rk)
    rks.append(torch.ones((), dtype=h.dtype))
    h_phi_1, b_h, b = _coefficients(h, order)
    R = torch.stack([torch.stack(rks) ** (k - 1) for k in range(1, order + 1)])
    res: Tensor | float = 0.0
    if new is None:  # predictor: uses the order−1 previous differences
        if d1s:
            rhos = torch.full((1,), 0.5) if order == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1])
            res = sum(r * d for r, d in zip(rhos.to(x.dtype), d1s, strict=True))
    else:  # corrector: also the difference to the new evaluation
        rhos = torch.full((1,), 0.5) if order == 1 else torch.linalg.solve(R, b)
        rhos = rhos.to(x.dtype)
        res = sum((r * d for r, d in zip(rhos[:-1], d1s, strict=True)), torch.zeros_like(x)) + rhos[-1] * (new - m0)
    alpha_t, sigma_t, sigma_s0 = 1 - t_next, t_next, t_s0
    return (sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * m0 - alpha_t * b_h * res).to(x.dtype)


@torch.no_grad()
def sample_flow_unipc(denoiser: Callable[..., Tensor], x: Tensor, times: Tensor, *, cond: Any = None,
                      order: int = 2, callback: Callable[[dict[str, Any]], Any] | None = None) -> Tensor:
    """UniPC-``order`` from flow time ``times[0]`` (< 1) to ``times[-1]`` (= 0), lower order at the last step."""
    if times.ndim != 1 or len(times) < 2 or not math.isclose(float(times[-1]), 0.0) or float(times[0]) >= 1:
        raise ValueError("UniPC needs flow times t₀ < 1 decreasing to a final 0 (see flow_unipc_times)")
    ts = times.detach().cpu().to(torch.float32)
    n = len(ts) - 1
    history: list[tuple[Tensor, Tensor]] = []
    last_x, last_order = None, 1
    for i in range(n):
        t_vec = torch.full((x.shape[0],), float(ts[i]), device=x.device, dtype=x.dtype)
        m = denoiser(x, t_vec, cond).to(x.dtype)
        if last_x is not None:  # UniC: correct x_t with the evaluation just made
            x = _update(last_x, ts[i - 1], ts[i], history, last_order, m)
        history = [*history, (m, ts[i])][-order:]
        last_order = min(order, n - i, i + 1)
        last_x = x
        x = _update(x, ts[i], ts[i + 1], history, last_order, None)
        if callback is not None:
            callback({"i": i, "x": x, "t": float(ts[i]), "denoised": m})
    return x


SCALINGS.setdefault("flow", FlowScaling)
