"""Gaussian-mixture uncertainty on per-atom latent features (−log p(h_i), evaluated in torch)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn


class GMMHead(nn.Module):
    """−log p(h) of a full-covariance Gaussian mixture, differentiable w.r.t. h.

    Parameters are stored as log-weights, means and the Cholesky factors of the precisions
    (P_k = U_k U_kᵀ), so log N(h | μ_k, Σ_k) = −½(L log 2π + ||(h − μ_k)ᵀU_k||²) + Σ log diag U_k.
    """

    def __init__(self, log_weights: Tensor, means: Tensor, prec_chol: Tensor) -> None:
        super().__init__()
        self.register_buffer("log_weights", log_weights)  # (C,)
        self.register_buffer("means", means)  # (C, L)
        self.register_buffer("prec_chol", prec_chol)  # (C, L, L)

    @classmethod
    def fit(
        cls,
        latent: Tensor,
        *,
        n_components: int | Sequence[int] = 8,
        seed: int = 0,
        reg_covar: float = 1e-6,
        dtype: torch.dtype = torch.float64,
    ) -> GMMHead:
        """Fit with scikit-learn; a sequence of component counts picks the lowest BIC."""
        from sklearn.mixture import GaussianMixture

        x = latent.detach().to(torch.float64).cpu().numpy()
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"latent features must be a non-empty (A, L) matrix, got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("latent features contain NaN or inf")
        choices = [n_components] if isinstance(n_components, int) else list(n_components)
        if not choices or any(int(c) < 1 for c in choices):
            raise ValueError(f"n_components must be >= 1 (or a list of such), got {n_components}")
        too_many = [c for c in choices if c > x.shape[0]]
        if too_many:
            raise ValueError(
                f"n_components {too_many} exceed the {x.shape[0]} training atoms; use fewer"
            )
        best, best_bic = None, math.inf
        for c in choices:
            gm = GaussianMixture(
                n_components=int(c), covariance_type="full", reg_covar=reg_covar, random_state=seed
            ).fit(x)
            bic = gm.bic(x) if len(choices) > 1 else 0.0
            if bic < best_bic:
                best, best_bic = gm, bic
        return cls.from_sklearn(best, dtype=dtype, device=latent.device)

    @classmethod
    def from_sklearn(cls, gm, *, dtype=torch.float64, device=None) -> GMMHead:
        """Copy a fitted full-covariance sklearn GaussianMixture."""
        if gm.covariance_type != "full":
            raise ValueError(f"only covariance_type='full' is supported, got {gm.covariance_type}")

        def t(a: np.ndarray) -> Tensor:
            return torch.as_tensor(np.asarray(a), dtype=dtype, device=device)

        return cls(t(np.log(gm.weights_)), t(gm.means_), t(gm.precisions_cholesky_))

    def forward(self, latent: Tensor) -> Tensor:
        """Uncertainty u_i = −log p(h_i) − floor ≥ 0 for latent (A, L) → (A,).

        floor = −log Σ_k w_k max_h N_k(h) is a lower bound of −log p, so u is −log p shifted by
        a constant (same gradients) and never negative, as conformal scores r/u require.
        """
        return self.negative_log_likelihood(latent) - self.nll_floor().to(latent.dtype)

    def nll_floor(self) -> Tensor:
        """−log Σ_k w_k (2π)^(−L/2) det(U_k): a lower bound of −log p(h) over all h."""
        dim = self.means.shape[1]
        log_det = torch.diagonal(self.prec_chol, dim1=-2, dim2=-1).log().sum(dim=-1)
        peak = self.log_weights + log_det - 0.5 * dim * math.log(2.0 * math.pi)
        return -torch.logsumexp(peak, dim=0)

    def negative_log_likelihood(self, latent: Tensor) -> Tensor:
        """−log p(h_i) for each row of latent (A, L) → (A,)."""
        h = latent.to(self.means.dtype)
        dim = h.shape[1]
        # y[a, c, :] = (h_a − μ_c)ᵀ U_c ; computed as h U_c − μ_c U_c to avoid an (A, C, L) diff copy.
        hu = torch.einsum("al,clm->acm", h, self.prec_chol)
        mu_u = torch.einsum("cl,clm->cm", self.means, self.prec_chol)
        maha = (hu - mu_u[None]).pow(2).sum(dim=-1)  # (A, C)
        log_det = torch.diagonal(self.prec_chol, dim1=-2, dim2=-1).log().sum(dim=-1)  # (C,)
        log_prob = -0.5 * (dim * math.log(2.0 * math.pi) + maha) + log_det + self.log_weights
        return (-torch.logsumexp(log_prob, dim=1)).to(latent.dtype)
