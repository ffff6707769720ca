"""Preconditionings (EDM, Karras et al. 2022, Table 1 and eq. 7): ``(c_skip, c_out, c_in, c_noise)`` of σ.

A scaling turns a raw network ``F`` into a denoiser
``D(x, σ) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x, c_noise(σ))``.
Each class also gives the network's ideal training target ``F_target`` (EDM eq. 8): the output for which
``D(x₀ + σn, σ) = x₀`` exactly.

All coefficients are elementwise in σ and come back with its shape and dtype: ``(B,)``, or ``(B, T)`` for
per-frame noise levels; broadcasting against data ``(B, T, C, H, W)`` is done by the caller with
:func:`vidiff.utils.append_dims`. Coefficients whose ``c_noise`` is ``¼ ln σ`` are −∞ at σ = 0: the
:class:`vidiff.diffusion.Denoiser` never evaluates a network there (frames at σ = 0 are held clean).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor

from vidiff.diffusion.schedules import DiscreteSchedule, edm_add_noise
from vidiff.utils import append_dims, build_named


class Coefficients(NamedTuple):
    """The four preconditioning coefficients, each of σ's shape (``(B,)`` or ``(B, T)``)."""

    c_skip: Tensor
    c_out: Tensor
    c_in: Tensor
    c_noise: Tensor


class Scaling:
    """Base class: subclasses implement :meth:`__call__`; :meth:`target` follows from it (EDM eq. 8).

    ``prediction_type`` names what the network outputs in diffusers' scheduler vocabulary (``epsilon``,
    ``v_prediction``, ``sample``; ``edm`` for EDM's own F), written next to vidiff's scaling name on export.
    """

    prediction_type: ClassVar[str]

    def __call__(self, sigma: Tensor) -> Coefficients:
        raise NotImplementedError

    def target(self, x0: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
        """Ideal network output at ``x = x₀ + σ·n``: ``F = (x₀ − c_skip·x)/c_out`` (EDM eq. 8)."""
        c_skip, c_out, _, _ = self(sigma)
        x = edm_add_noise(x0, sigma, noise)
        return (x0 - append_dims(c_skip, x0.ndim) * x) / append_dims(c_out, x0.ndim)


class EDMScaling(Scaling):
    """EDM preconditioning (Karras et al. 2022, Table 1): unit-variance input and target for σ_data data."""

    prediction_type = "edm"

    def __init__(self, sigma_data: float = 0.5) -> None:
        self.sigma_data = float(sigma_data)

    def __call__(self, sigma: Tensor) -> Coefficients:
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2).sqrt()
        c_in = 1.0 / (sigma**2 + sd2).sqrt()
        c_noise = 0.25 * sigma.log()
        return Coefficients(c_skip, c_out, c_in, c_noise)

    def __repr__(self) -> str:
        return f"EDMScaling(sigma_data={self.sigma_data})"


class EpsScaling(Scaling):
    """ε-prediction (DDPM, Ho et al. 2020) written in VE form: ``D = x − σ·F`` (Karras et al. 2022, Table 1).

    ``c_noise = σ``. A network trained on discrete DDPM timesteps expects ``t``, not σ: convert with
    :meth:`vidiff.diffusion.DiscreteSchedule.sigma_to_t` (or use :class:`DiscreteEpsScaling`). ``c_in =
    1/√(σ²+1) = √ᾱ`` maps the VE state back to the VP state ``x_t`` the network was trained on.
    """

    prediction_type = "epsilon"

    def __call__(self, sigma: Tensor) -> Coefficients:
        c_skip = torch.ones_like(sigma)
        c_out = -sigma
        c_in = 1.0 / (sigma**2 + 1.0).sqrt()
        return Coefficients(c_skip, c_out, c_in, sigma.clone())

    def target(self, x0: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
        """The ideal ε-network output is the noise itself."""
        return noise

    def __repr__(self) -> str:
        return "EpsScaling()"


class DiscreteEpsScaling(EpsScaling):
    """:class:`EpsScaling` whose ``c_noise`` is the (continuous) DDPM timestep ``t(σ)`` of ``schedule``."""

    def __init__(self, schedule: DiscreteSchedule) -> None:
        self.schedule = schedule

    def __call__(self, sigma: Tensor) -> Coefficients:
        c_skip, c_out, c_in, _ = super().__call__(sigma)
        return Coefficients(c_skip, c_out, c_in, self.schedule.sigma_to_t(sigma))

    def __repr__(self) -> str:
        return f"DiscreteEpsScaling({self.schedule!r})"


class VScaling(Scaling):
    """v-prediction (Salimans & Ho 2022) in VE form: EDM preconditioning with σ_data = 1, ``c_out`` negated.

    ``c_skip = 1/(σ²+1)``, ``c_out = −σ/√(σ²+1)``, ``c_in = 1/√(σ²+1)``, ``c_noise = σ``.
    """

    prediction_type = "v_prediction"

    def __call__(self, sigma: Tensor) -> Coefficients:
        c_skip = 1.0 / (sigma**2 + 1.0)
        c_out = -sigma / (sigma**2 + 1.0).sqrt()
        c_in = 1.0 / (sigma**2 + 1.0).sqrt()
        return Coefficients(c_skip, c_out, c_in, self._c_noise(sigma))

    def _c_noise(self, sigma: Tensor) -> Tensor:
        return sigma.clone()

    def target(self, x0: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
        """``v = α·n − σ_vp·x₀`` with ``α = 1/√(σ²+1)``, ``σ_vp = σ/√(σ²+1)`` (Salimans & Ho 2022, Sec. 4)."""
        s = append_dims(sigma, x0.ndim)
        return (noise - s * x0) / (s**2 + 1.0).sqrt()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class VScalingEDMcNoise(VScaling):
    """SVD's preconditioning (Blattmann et al. 2023): v coefficients with EDM's ``c_noise = ¼ ln σ``."""

    def _c_noise(self, sigma: Tensor) -> Tensor:
        return 0.25 * sigma.log()


class X0Scaling(Scaling):
    """x₀-prediction ("sample" in diffusers' ``prediction_type``) with EDM's input scaling and ``c_noise``.

    ``c_skip = 0``, ``c_out = σ_data``, ``c_in = 1/√(σ²+σ_data²)``, ``c_noise = ¼ ln σ``: the network outputs
    the clean sample (in units of σ_data) and nothing of ``x`` is passed through. That matters when the
    network is narrower than its input (a patch-space UNet): with ``c_skip → 1`` at small σ it would have to
    carry every noise dimension to its output to remove it; here noise it cannot represent is dropped.
    """

    prediction_type = "sample"

    def __init__(self, sigma_data: float = 1.0) -> None:
        self.sigma_data = float(sigma_data)

    def __call__(self, sigma: Tensor) -> Coefficients:
        c_skip = torch.zeros_like(sigma)
        c_out = torch.full_like(sigma, self.sigma_data)
        c_in = 1.0 / (sigma**2 + self.sigma_data**2).sqrt()
        return Coefficients(c_skip, c_out, c_in, 0.25 * sigma.log())

    def target(self, x0: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
        """The ideal output is the clean sample itself, in units of σ_data."""
        return x0 / self.sigma_data

    def __repr__(self) -> str:
        return f"X0Scaling(sigma_data={self.sigma_data})"


SCALINGS: dict[str, type[Scaling]] = {
    "edm": EDMScaling,
    "eps": EpsScaling,
    "v": VScaling,
    "v_edm": VScalingEDMcNoise,
    "x0": X0Scaling,
    "discrete_eps": DiscreteEpsScaling,  # DDPM training (Ho et al. 2020, Alg. 1): ε on integer timesteps
}


def scaling_by_name(name: str, sigma_data: float = 1.0, schedule: DiscreteSchedule | None = None) -> Scaling:
    """The scaling ``SCALINGS[name]``; ``sigma_data`` goes to those that have one (EDM, x₀), ``schedule`` (the
    DDPM schedule trained on) to the discrete-time one.

    An unknown name is a ``ValueError`` listing the valid ones."""
    if isinstance(name, str) and SCALINGS.get(name) is DiscreteEpsScaling and schedule is None:
        raise ValueError(f"scaling {name!r} needs the DDPM schedule the model was trained with")
    return build_named(SCALINGS, name, "scaling", sigma_data=sigma_data, schedule=schedule)


def scaling_from_config(config: Mapping[str, Any]) -> Scaling:
    """The scaling a model's scheduler config records: vidiff's ``scaling`` / ``sigma_data`` keys; a
    discrete-time one reads its β schedule from diffusers' keys (:meth:`DiscreteSchedule.from_config`)."""
    name = config["scaling"]
    discrete = isinstance(name, str) and SCALINGS.get(name) is DiscreteEpsScaling
    return scaling_by_name(name, float(config.get("sigma_data", 1.0)),
                           schedule=DiscreteSchedule.from_config(config) if discrete else None)
