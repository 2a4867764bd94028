"""Feature-space uncertainties: GP-style posterior and nearest-training-point distance.

Both act on (rescaled) features φ̃ = s·φ and are plain tensor maps, differentiable w.r.t. the
query features (and so w.r.t. positions and strain when the features are).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def feature_scale(train_features: Tensor) -> float:
    """Return s = 1/sqrt(mean_j ||φ_j||²) so that rescaled training features have unit mean norm²."""
    if train_features.ndim != 2 or train_features.shape[0] == 0:
        raise ValueError(
            f"training features must be a non-empty (N, K) matrix, got shape {tuple(train_features.shape)}"
        )
    mean_sq = float(train_features.detach().double().pow(2).sum(dim=1).mean())
    if not mean_sq > 0.0:
        raise ValueError("training features are all zero; cannot rescale them")
    return mean_sq**-0.5


class PosteriorHead(nn.Module):
    """u²(φ) = σ² φ̃ᵀ(Φ̃ᵀΦ̃ + σ²I)⁻¹φ̃ with φ̃ = s·φ.

    The K×K matrix is factorised once (Cholesky, float64); a query costs one triangular solve.
    """

    def __init__(self, chol: Tensor, scale: float | Tensor, sigma: float | Tensor) -> None:
        super().__init__()
        self.register_buffer("chol", chol)  # (K, K) lower-triangular factor
        self.register_buffer("scale", torch.as_tensor(scale, dtype=chol.dtype))
        self.register_buffer("sigma", torch.as_tensor(sigma, dtype=chol.dtype))

    @classmethod
    def fit(
        cls, train_features: Tensor, *, sigma: float, dtype: torch.dtype = torch.float64
    ) -> PosteriorHead:
        """Build from training features Φ (N, K)."""
        feature_scale(train_features)  # rejects empty / all-zero features with a clear error
        phi = train_features.detach().to(torch.float64)
        sum_sq = float(phi.pow(2).sum())
        return cls.from_moments(phi.T @ phi, sum_sq, phi.shape[0], sigma=sigma, dtype=dtype)

    @classmethod
    def from_moments(
        cls,
        gram: Tensor,
        sum_sq: float,
        n: int,
        *,
        sigma: float,
        dtype: torch.dtype = torch.float64,
    ) -> PosteriorHead:
        """Build from ΦᵀΦ (K, K), Σ_j ||φ_j||² and the number of rows n (unscaled features)."""
        if not sigma > 0.0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        if n < 1 or not sum_sq > 0.0:
            raise ValueError("training features are empty or all zero; cannot rescale them")
        scale = (sum_sq / n) ** -0.5
        k = gram.shape[0]
        eye = torch.eye(k, dtype=torch.float64, device=gram.device)
        chol, info = torch.linalg.cholesky_ex(scale**2 * gram.to(torch.float64) + sigma**2 * eye)
        if int(info) != 0:
            raise ValueError(
                f"posterior matrix is not positive definite (sigma={sigma}); use a larger sigma"
            )
        return cls(chol.to(dtype), scale, sigma)

    def forward(self, features: Tensor) -> Tensor:
        """Uncertainty u (N,) for query features (N, K)."""
        _check_dim(features, self.chol.shape[0])
        phi = features.to(self.chol.dtype) * self.scale
        # L z = φ̃  =>  φ̃ᵀ(LLᵀ)⁻¹φ̃ = ||z||²
        z = torch.linalg.solve_triangular(self.chol, phi.T, upper=False)
        var = self.sigma**2 * z.pow(2).sum(dim=0)
        # The clamp only guards sqrt'(0); var >= σ²·σ²/(λmax+σ²) > 0 for any φ ≠ 0 anyway.
        return var.clamp_min(torch.finfo(var.dtype).tiny).sqrt().to(features.dtype)


class DistanceHead(nn.Module):
    """u(φ) = min_j ||φ̃ − φ̃_j|| over training features (rescaled with s)."""

    def __init__(self, train: Tensor, scale: float | Tensor, *, chunk_size: int = 4096) -> None:
        super().__init__()
        self.register_buffer("points", train)  # (N, K) rescaled training features
        self.register_buffer("scale", torch.as_tensor(scale, dtype=train.dtype))
        self.chunk_size = int(chunk_size)

    @classmethod
    def fit(cls, train_features: Tensor, *, dtype: torch.dtype = torch.float64) -> DistanceHead:
        scale = feature_scale(train_features)
        return cls((train_features.detach().to(torch.float64) * scale).to(dtype), scale)

    def forward(self, features: Tensor) -> Tensor:
        """Uncertainty u (N,) for query features (N, K)."""
        _check_dim(features, self.points.shape[1])
        phi = features.to(self.points.dtype) * self.scale
        nearest = self.nearest(phi.detach())
        # Exact distance to the chosen neighbour (differentiable, no cancellation).
        diff = phi - self.points[nearest]
        d2 = diff.pow(2).sum(dim=1)
        return d2.clamp_min(torch.finfo(d2.dtype).tiny).sqrt().to(features.dtype)

    @torch.no_grad()
    def nearest(self, phi: Tensor) -> Tensor:
        """Index of the nearest training feature for each row of phi (already rescaled)."""
        best = torch.full((phi.shape[0],), float("inf"), dtype=phi.dtype, device=phi.device)
        arg = torch.zeros(phi.shape[0], dtype=torch.long, device=phi.device)
        q2 = phi.pow(2).sum(dim=1, keepdim=True)
        # Chunk over training rows so memory stays O(N_query · chunk).
        for start in range(0, self.points.shape[0], self.chunk_size):
            block = self.points[start : start + self.chunk_size]
            d2 = q2 + block.pow(2).sum(dim=1)[None, :] - 2.0 * phi @ block.T
            val, idx = d2.min(dim=1)
            better = val < best
            best = torch.where(better, val, best)
            arg = torch.where(better, idx + start, arg)
        return arg


def _check_dim(features: Tensor, k: int) -> None:
    if features.ndim != 2 or features.shape[1] != k:
        raise ValueError(
            f"the estimator was fitted on {k} features per row, got shape "
            f"{tuple(features.shape)}: was it fitted for a different model?"
        )
