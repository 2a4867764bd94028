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

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

# Rows per chunk for (N, K) work; keeps temporaries at O(CHUNK_ROWS · max(K, T)).
CHUNK_ROWS = 4096


def resolve_device(device: Any, *arrays: Any) -> torch.device:
    """``device`` if given, else the device of the first torch tensor among ``arrays``, else CPU."""
    if device is not None:
        try:
            dev = torch.device(device)
        except RuntimeError as exc:
            raise ValueError(f"invalid device {device!r}: {exc}") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available; use 'cpu'")
        return dev
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
    bad = torch.zeros(t.shape[0], dtype=torch.bool, device=t.device)
    for i in range(0, t.shape[0], CHUNK_ROWS):  # chunked: no (N, K) boolean temporary
        bad[i : i + CHUNK_ROWS] = ~torch.isfinite(t[i : i + CHUNK_ROWS]).all(dim=1)
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


def check_batch_size(batch_size: int, n: int) -> None:
    """Raise ValueError unless 1 <= batch_size <= n (the pool size), naming both."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer):
        raise ValueError(f"batch_size must be an integer; got {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    if batch_size > n:
        raise ValueError(
            f"batch_size={batch_size} is larger than the candidate pool ({n} candidates); "
            f"ask for at most {n}"
        )


@dataclass(frozen=True)
class PoolFeatures:
    """Candidate and training features, checked, on one device, with the kernel's scale."""

    device: torch.device
    pool: torch.Tensor  # (N, K) candidate features as given (floating, finite)
    train: torch.Tensor | None  # (T, K) training features; None when absent or empty
    scale: float  # s of feature_scale: unit mean squared norm over the training set


def prepare_features(
    candidate_features: Any,
    train_features: Any = None,
    *,
    device: Any = None,
    batch_size: int | None = None,
) -> PoolFeatures:
    """Check candidate and training features and put them on one device; ValueError naming what
    is wrong. ``batch_size``, when given, must be 1..N (the pool size)."""
    dev = resolve_device(device, candidate_features, train_features)
    pool = as_matrix(candidate_features, "candidate_features", device=dev)
    if pool.shape[0] == 0:
        raise ValueError("the candidate pool is empty")
    if batch_size is not None:
        check_batch_size(batch_size, pool.shape[0])
    train = None
    if train_features is not None:
        train = as_matrix(train_features, "train_features", device=dev)
        check_pair(pool, train)
        if train.shape[0] == 0:
            train = None
    return PoolFeatures(dev, pool, train, feature_scale(pool, train))


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
    """Row-wise squared norms (the kernel diagonal k(x, x)), chunked: no (N, K) temporary."""
    out = torch.empty(f.shape[0], dtype=f.dtype, device=f.device)
    for i in range(0, f.shape[0], CHUNK_ROWS):
        out[i : i + CHUNK_ROWS] = f[i : i + CHUNK_ROWS].square().sum(dim=1)
    return out


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
    rows = max(1, min(CHUNK_ROWS, 2**20 // max(1, centers.shape[0])))
    for i in range(0, n, rows):
        d2 = f[i : i + rows] @ centers.T  # one (rows, T) temporary, updated in place
        d2.mul_(-2.0).add_(sq[i : i + rows, None]).add_(csq[None, :])
        val, idx = d2.min(dim=1)
        best[i : i + rows] = val.clamp_(min=0.0)
        arg[i : i + rows] = idx
    return best, arg


class DuplicateGuard:
    """Finds candidates within a tiny distance of a picked one, in scaled base features.

    The test is ||s·(φ_x − φ_p)|| <= tol, i.e. relative to the RMS norm of the (training)
    features. A cheap exact prefilter runs first: a near-duplicate has (up to round-off) the
    same norm and the same projections on a few fixed random directions (|r·(x − p)| <=
    ||r||·||x − p||), so per pick only O(N·P) work is done; the few survivors get the exact test
    on the caller's features, computed as a difference (no cancellation).
    """

    N_PROJ = 8

    def __init__(self, raw: torch.Tensor, scale: float, tol: float) -> None:
        self.raw = raw
        self.tol_raw = tol / scale  # the tolerance in the caller's units
        gen = torch.Generator(device="cpu").manual_seed(0)
        k = raw.shape[1]
        proj = torch.randn((k, self.N_PROJ), generator=gen, dtype=torch.float64)
        proj = torch.cat([proj / proj.norm(dim=0, keepdim=True), proj.new_zeros((k, 1))], dim=1)
        proj = proj.to(raw.device)
        n = raw.shape[0]
        self.keys = torch.empty((n, self.N_PROJ + 1), dtype=torch.float64, device=raw.device)
        for i in range(0, n, CHUNK_ROWS):
            blk = raw[i : i + CHUNK_ROWS].to(torch.float64)
            out = blk @ proj
            out[:, -1] = blk.norm(dim=1)
            self.keys[i : i + CHUNK_ROWS] = out
        # Round-off slack of the keys, relative to the largest norm.
        self.slack = 1e-9 * float(self.keys[:, -1].max()) + 1e-300

    def near(self, p: int) -> torch.Tensor:
        """Boolean mask (N,) of candidates that duplicate candidate ``p`` (``p`` included)."""
        n = self.raw.shape[0]
        out = torch.zeros(n, dtype=torch.bool, device=self.raw.device)
        out[p] = True
        gap = (self.keys - self.keys[p]).abs().amax(dim=1)
        cand = torch.nonzero(gap <= self.tol_raw + self.slack).flatten()
        if cand.numel() > 1:
            ref = self.raw[p].to(torch.float64)
            for i in range(0, cand.numel(), CHUNK_ROWS):
                idx = cand[i : i + CHUNK_ROWS]
                d2 = (self.raw[idx].to(torch.float64) - ref).square().sum(dim=1)
                out[idx[d2 <= self.tol_raw**2]] = True
        return out
