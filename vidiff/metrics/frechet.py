"""Fréchet distance between Gaussians fitted to feature sets, from streaming statistics, in float64.

The Fréchet (2-Wasserstein) distance between N(μ₁, Σ₁) and N(μ₂, Σ₂) (Dowson & Landau 1982; used as FID by
Heusel et al. 2017, eq. 6, and as FVD by Unterthiner et al. 2018) is

    d² = ‖μ₁ − μ₂‖² + tr(Σ₁) + tr(Σ₂) − 2 tr((Σ₁ Σ₂)^{1/2}).

StyleGAN-V (Skorokhodov et al. 2022, ``src/metrics/frechet_video_distance.py``) evaluates the last term with
``scipy.linalg.sqrtm(Σ₁ Σ₂)``. Σ₁Σ₂ is similar to the symmetric positive semi-definite matrix
``Σ₁^{1/2} Σ₂ Σ₁^{1/2}`` (conjugate by Σ₁^{1/2}), so both have the same eigenvalues and

    tr((Σ₁ Σ₂)^{1/2}) = Σ_k √λ_k(Σ₁^{1/2} Σ₂ Σ₁^{1/2}),

which is what :func:`frechet_distance` computes, with two symmetric eigen-decompositions (no complex
round-off, and rank-deficient covariances — fewer videos than feature dimensions — are handled exactly).

The statistics follow StyleGAN2-ADA / StyleGAN-V's ``metric_utils.FeatureStats``: a count, the sum of the
features and the sum of their outer products, accumulated batch by batch in float64; the covariance is the
biased (1/N) one, ``Σ = S₂/N − μμᵀ``. Accumulators of disjoint batches merge by adding the three terms, so
the result does not depend on how the features were split into batches.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

__all__ = ["FeatureStats", "frechet_distance", "frechet_distance_from_stats"]


def _as_float64(x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if not (t.is_floating_point() or t.dtype in (torch.uint8, torch.int32, torch.int64)):
        raise ValueError(f"{name} must be real numbers, got dtype {t.dtype}")
    return t.detach().to(device="cpu", dtype=torch.float64)


class FeatureStats:
    """Streaming first and second moments of feature vectors (float64).

    ``update`` takes a batch ``(N, D)``; ``merge`` adds another accumulator (e.g. from another process or
    another shard of the data); ``mean_cov`` gives ``(μ, Σ)``. Equal, up to float64 round-off, to the mean
    and covariance of all features stacked into one array.
    """

    def __init__(self, num_features: int | None = None) -> None:
        self.count = 0
        self.num_features = num_features
        self.sum: torch.Tensor | None = None
        self.sum_outer: torch.Tensor | None = None
        if num_features is not None:
            self._init(num_features)

    def _init(self, d: int) -> None:
        if d < 1:
            raise ValueError(f"num_features must be >= 1, got {d}")
        self.num_features = d
        self.sum = torch.zeros(d, dtype=torch.float64)
        self.sum_outer = torch.zeros(d, d, dtype=torch.float64)

    def update(self, features: torch.Tensor | np.ndarray) -> FeatureStats:
        """Add a batch ``(N, D)`` of feature vectors; returns ``self``."""
        x = _as_float64(features, "features")
        if x.ndim != 2:
            raise ValueError(f"features must be (N, D), got shape {tuple(x.shape)}")
        if self.num_features is None:
            self._init(x.shape[1])
        if x.shape[1] != self.num_features:
            raise ValueError(f"features have {x.shape[1]} dimensions, these statistics {self.num_features}")
        if not torch.isfinite(x).all():
            raise ValueError("features contain NaN or infinite values")
        assert self.sum is not None and self.sum_outer is not None
        self.count += x.shape[0]
        self.sum += x.sum(0)
        self.sum_outer += x.T @ x
        return self

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Add the statistics of a disjoint set of features; returns ``self``."""
        if other.num_features is None:
            return self
        if self.num_features is None:
            self._init(other.num_features)
        if other.num_features != self.num_features:
            raise ValueError(f"cannot merge statistics of {other.num_features} and {self.num_features} features")
        assert self.sum is not None and self.sum_outer is not None
        assert other.sum is not None and other.sum_outer is not None
        self.count += other.count
        self.sum += other.sum
        self.sum_outer += other.sum_outer
        return self

    def mean_cov(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(μ (D,), Σ (D, D))`` in float64, Σ the biased (1/N) covariance as StyleGAN-V computes it."""
        if self.count == 0 or self.sum is None or self.sum_outer is None:
            raise ValueError("no features have been added to these statistics")
        mean = self.sum / self.count
        cov = self.sum_outer / self.count - torch.outer(mean, mean)
        return mean, 0.5 * (cov + cov.T)

    @classmethod
    def from_features(cls, features: torch.Tensor | np.ndarray) -> FeatureStats:
        """Statistics of one batch ``(N, D)``."""
        return cls().update(features)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors that :meth:`from_state_dict` restores (e.g. to cache reference statistics as safetensors)."""
        if self.sum is None or self.sum_outer is None:
            raise ValueError("no features have been added to these statistics")
        return {"count": torch.tensor(self.count, dtype=torch.int64), "sum": self.sum.clone(),
                "sum_outer": self.sum_outer.clone()}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> FeatureStats:
        """The inverse of :meth:`state_dict`; checks the shapes agree."""
        missing = {"count", "sum", "sum_outer"} - set(state)
        if missing:
            raise ValueError(f"feature statistics lack {sorted(missing)}")
        s, so = _as_float64(state["sum"], "sum"), _as_float64(state["sum_outer"], "sum_outer")
        if s.ndim != 1 or so.shape != (s.shape[0], s.shape[0]):
            raise ValueError(f"feature statistics have sum {tuple(s.shape)} and sum_outer {tuple(so.shape)}")
        out = cls(s.shape[0])
        out.count, out.sum, out.sum_outer = int(state["count"]), s.clone(), so.clone()
        return out


def _psd_sqrt(a: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric PSD matrix (round-off negative eigenvalues clamped to 0)."""
    w, v = torch.linalg.eigh(0.5 * (a + a.T))
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(mu1: torch.Tensor | np.ndarray, sigma1: torch.Tensor | np.ndarray,
                     mu2: torch.Tensor | np.ndarray, sigma2: torch.Tensor | np.ndarray) -> float:
    """Squared Fréchet distance ``d²`` between N(μ₁, Σ₁) and N(μ₂, Σ₂) in float64 (module docstring).

    This is the number FID / FVD report (they do not take the square root).
    """
    m1, m2 = _as_float64(mu1, "mu1"), _as_float64(mu2, "mu2")
    s1, s2 = _as_float64(sigma1, "sigma1"), _as_float64(sigma2, "sigma2")
    d = m1.shape[0] if m1.ndim == 1 else -1
    for name, t, shape in (("mu2", m2, (d,)), ("sigma1", s1, (d, d)), ("sigma2", s2, (d, d))):
        if d < 1 or tuple(t.shape) != shape:
            raise ValueError(f"shapes disagree: mu1 {tuple(m1.shape)}, {name} {tuple(t.shape)} (want {shape})")
    root1 = _psd_sqrt(s1)
    inner = root1 @ s2 @ root1
    tr_sqrt = torch.linalg.eigvalsh(0.5 * (inner + inner.T)).clamp_min(0).sqrt().sum()
    return float((m1 - m2).square().sum() + s1.trace() + s2.trace() - 2 * tr_sqrt)


def frechet_distance_from_stats(a: FeatureStats, b: FeatureStats) -> float:
    """:func:`frechet_distance` between the Gaussians fitted to two feature sets."""
    return frechet_distance(*a.mean_cov(), *b.mean_cov())
