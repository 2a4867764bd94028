"""Feature-space kernels shared by batch selection and optimal design.

Every kernel used here is linear in some feature map, k(x, x') = f(x)·f(x'), so it is held as an
(N, K) feature matrix and no N×N kernel matrix is ever formed:

- ``linear``: f = s·φ with s = 1/sqrt(mean_train ||φ||²) (the pool's mean when there is no
  training set), so training features have unit mean squared norm.
- posterior transform given features C (T, K) and noise σ²:
  k_C(x, x') = k(x, x') − k(x, C)(k(C, C) + σ²I)⁻¹k(C, x') = σ² f(x)ᵀ(CᵀC + σ²I)⁻¹f(x'),
  i.e. the linear kernel of σ·L⁻¹f with L Lᵀ = CᵀC + σ²I (push-through identity); K×K work only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

# Rows per chunk for (N, K) work; keeps temporaries at O(CHUNK_ROWS · max(K, T)).
CHUNK_ROWS = 8192


def resolve_device(device: Any, *arrays: Any) -> torch.device:
    """``device`` if given, else the device of the first torch tensor among ``arrays``, else CPU."""
    if device is not None:
        return torch.device(device)
    for a in arrays:
        if isinstance(a, torch.Tensor):
            return a.device
    return torch.device("cpu")


def as_matrix(x: Any, name: str, *, device: torch.device) -> torch.Tensor:
    """``x`` as a finite 2-D floating tensor on ``device`` (no copy when already there)."""
    t = torch.as_tensor(x, device=device)
    if not t.is_floating_point():
        t = t.to(torch.float64)
    if t.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n, K); got shape {tuple(t.shape)}")
    if t.shape[1] == 0:
        raise ValueError(f"{name} has no feature columns (shape {tuple(t.shape)})")
    bad = ~torch.isfinite(t).all(dim=1)
    if bool(bad.any()):
        rows = torch.nonzero(bad).flatten()[:5].tolist()
        raise ValueError(
            f"{name} contain NaN or infinite values in {int(bad.sum())} row(s), e.g. rows {rows}; "
            "drop or repair those candidates first"
        )
    return t


def as_vector(x: Any, name: str, n: int, *, device: torch.device) -> torch.Tensor:
    """``x`` as a finite 1-D float64 tensor of length ``n``."""
    t = torch.as_tensor(x, device=device).to(torch.float64)
    if t.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) (one per candidate); got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contain NaN or infinite values")
    return t


def check_pair(pool: torch.Tensor, train: torch.Tensor | None) -> None:
    """Candidate and training features must share the feature dimension K."""
    if train is not None and train.shape[1] != pool.shape[1]:
        raise ValueError(
            f"feature dimensions differ: candidates have K={pool.shape[1]}, "
            f"training features have K={train.shape[1]}; both must come from the same model"
        )


def feature_scale(pool: torch.Tensor, train: torch.Tensor | None) -> float:
    """s = 1/sqrt(mean ||φ||²) over the training set (over the pool when there is none)."""
    ref = train if train is not None and train.shape[0] > 0 else pool
    msq = 0.0
    for i in range(0, ref.shape[0], CHUNK_ROWS):
        msq += float(ref[i : i + CHUNK_ROWS].to(torch.float64).square().sum())
    msq /= ref.shape[0]
    if not msq > 0.0:
        raise ValueError("all reference features are zero; cannot scale the kernel")
    return 1.0 / float(np.sqrt(msq))


def scaled(x: torch.Tensor, s: float, dtype: torch.dtype) -> torch.Tensor:
    """s·x as a new tensor of ``dtype`` (always a copy, so it may be transformed in place)."""
    out = torch.empty(x.shape, dtype=dtype, device=x.device)
    for i in range(0, x.shape[0], CHUNK_ROWS):
        out[i : i + CHUNK_ROWS] = x[i : i + CHUNK_ROWS].to(dtype) * s
    return out


def posterior_factor(cond: torch.Tensor, sigma: float) -> torch.Tensor:
    """Lower Cholesky factor L of CᵀC + σ²I (K×K)."""
    gram = cond.T @ cond
    gram.diagonal().add_(sigma**2)
    return torch.linalg.cholesky(gram)


def apply_posterior_(f: torch.Tensor, factor: torch.Tensor, sigma: float) -> torch.Tensor:
    """In place: rows f ← σ·L⁻¹f, so that f·f' becomes the posterior kernel. Returns ``f``."""
    upper = factor.T
    for i in range(0, f.shape[0], CHUNK_ROWS):
        block = f[i : i + CHUNK_ROWS]
        # X Lᵀ = block  <=>  X = block L⁻ᵀ (rows of σ L⁻¹ φ)
        block.copy_(torch.linalg.solve_triangular(upper, block, upper=True, left=False))
    f.mul_(sigma)
    return f


def sqnorms(f: torch.Tensor) -> torch.Tensor:
    """Row-wise squared norms (the kernel diagonal k(x, x))."""
    return f.square().sum(dim=1)


def sqdist_to(f: torch.Tensor, sq: torch.Tensor, p: int) -> torch.Tensor:
    """Squared kernel distances d²(x, x_p) = k(x,x) + k(p,p) − 2k(x,p) for all rows, clamped ≥ 0."""
    return (sq + sq[p] - 2.0 * (f @ f[p])).clamp_(min=0.0)


def nearest_center(
    f: torch.Tensor, sq: torch.Tensor, centers: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Min squared distance of each row to ``centers`` (T, K) and the index of the nearest one.

    Chunked so the temporary is (CHUNK_ROWS, T); ties go to the lower center index.
    """
    csq = sqnorms(centers)
    n = f.shape[0]
    best = torch.empty(n, dtype=f.dtype, device=f.device)
    arg = torch.empty(n, dtype=torch.long, device=f.device)
    rows = max(1, min(CHUNK_ROWS, 2**22 // max(1, centers.shape[0])))
    for i in range(0, n, rows):
        d2 = sq[i : i + rows, None] + csq[None, :] - 2.0 * (f[i : i + rows] @ centers.T)
        val, idx = d2.min(dim=1)
        best[i : i + rows] = val.clamp_(min=0.0)
        arg[i : i + rows] = idx
    return best, arg


class DuplicateGuard:
    """Finds candidates within a tiny distance of a picked one, in scaled base features.

    The test is ||s·(φ_x − φ_p)|| <= tol, i.e. relative to the RMS norm of the (training)
    features; it uses the caller's features chunk by chunk (no extra N×K copy) and computes the
    difference directly, avoiding the cancellation of ||x||² + ||p||² − 2x·p.
    """

    def __init__(self, raw: torch.Tensor, scale: float, tol: float) -> None:
        self.raw = raw
        self.scale = scale
        self.tol = tol

    def near(self, p: int) -> torch.Tensor:
        """Boolean mask (N,) of candidates that duplicate candidate ``p`` (``p`` included)."""
        n = self.raw.shape[0]
        out = torch.zeros(n, dtype=torch.bool, device=self.raw.device)
        ref = self.raw[p].to(torch.float64)
        limit = (self.tol / self.scale) ** 2
        for i in range(0, n, CHUNK_ROWS):
            d2 = (self.raw[i : i + CHUNK_ROWS].to(torch.float64) - ref).square().sum(dim=1)
            out[i : i + CHUNK_ROWS] = d2 <= limit
        out[p] = True
        return out
