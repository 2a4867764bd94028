"""Offline optimal design (Barzdajn & Race 2024): choose structures before any label exists.

Information matrix of a design S given the training set T, with features scaled as in
``ubmd.select.features`` (unit mean squared norm over the training set):

    M(S) = Φ_TᵀΦ_T + Φ_SᵀΦ_S + λI

- D-optimal: maximise log det M(S): greedy (each pick adds log(1 + φᵀM⁻¹φ)), then Fedorov
  exchange: swap a chosen i for an unchosen j while that raises det M by the factor
  (1 + d_j)(1 − d_i) + d_ij² > 1, with d_ij = φ_iᵀM⁻¹φ_j (best pair first). Never decreases it.
- A-optimal: minimise trace M(S)⁻¹: greedy, each pick removes ||M⁻¹φ||²/(1 + φᵀM⁻¹φ).

Everything is feature space: K×K matrices and O(N·K + N·B) memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ubmd.select import methods as m
from ubmd.select.batch import DEFAULT_DUPLICATE_TOL
from ubmd.select.features import (
    CHUNK_ROWS,
    DuplicateGuard,
    PoolFeatures,
    apply_posterior_,
    prepare_features,
    scaled,
)

DEFAULT_LAM = 1e-4  # = σ² of the posterior with σ = 1e-2, so greedy D-optimal = max_det


@dataclass(frozen=True)
class Swap:
    """One accepted Fedorov exchange: ``out_index`` left the design, ``in_index`` joined."""

    out_index: int
    in_index: int
    logdet: float  # log det M after the swap (computed from a fresh Cholesky factor)


@dataclass(frozen=True)
class DesignResult:
    """An optimal design: candidate indices (greedy order, swaps applied in place)."""

    indices: np.ndarray  # (B,) int64
    greedy_indices: np.ndarray  # (B,) int64, before any exchange
    criterion: str  # "D" (value = log det M) or "A" (value = trace M⁻¹)
    value: float  # final criterion value
    greedy_value: float  # criterion value after the greedy phase
    start_value: float  # criterion value of the training design alone
    gains: np.ndarray  # (B,) per greedy pick: log-det gain (D) or trace reduction (A)
    swaps: tuple[Swap, ...]  # accepted exchanges in order (D only)
    lam: float
    scale: float  # feature scale s


def training_design(
    candidate_features: Any,
    train_features: Any,
    batch_size: int | None,
    lam: float,
    device: Any,
    dtype: torch.dtype,
) -> tuple[PoolFeatures, torch.Tensor]:
    """The checked features and M = Φ_TᵀΦ_T + λI of the (scaled) training design."""
    if not (lam > 0.0 and np.isfinite(lam)):
        raise ValueError(f"lam must be a positive number; got {lam!r}")
    feats = prepare_features(
        candidate_features, train_features, device=device, batch_size=batch_size
    )
    k, train, s = feats.pool.shape[1], feats.train, feats.scale
    mat = torch.zeros((k, k), dtype=dtype, device=feats.device)
    if train is not None:
        for i in range(0, train.shape[0], CHUNK_ROWS):
            blk = train[i : i + CHUNK_ROWS].to(dtype) * s
            mat += blk.T @ blk
    mat.diagonal().add_(lam)
    return feats, mat


def _logdet(mat: torch.Tensor) -> tuple[float, torch.Tensor]:
    chol = torch.linalg.cholesky(mat)
    return 2.0 * float(torch.log(chol.diagonal()).sum()), chol


def _quad(f: torch.Tensor, minv: torch.Tensor) -> torch.Tensor:
    """φᵀM⁻¹φ for every row, chunked."""
    out = torch.empty(f.shape[0], dtype=f.dtype, device=f.device)
    for i in range(0, f.shape[0], CHUNK_ROWS):
        blk = f[i : i + CHUNK_ROWS]
        out[i : i + CHUNK_ROWS] = ((blk @ minv) * blk).sum(dim=1)
    return out


def d_optimal(
    candidate_features: Any,
    batch_size: int,
    *,
    train_features: Any = None,
    lam: float = DEFAULT_LAM,
    exchange: bool = True,
    max_swaps: int | None = None,
    rtol: float = 1e-9,
    duplicate_tol: float = DEFAULT_DUPLICATE_TOL,
    device: Any = None,
    dtype: torch.dtype = torch.float64,
) -> DesignResult:
    """D-optimal batch: greedy log det(M), then Fedorov exchange (``max_swaps`` default 10·B).

    A swap is accepted only if it multiplies det M by more than 1 + ``rtol``; near-duplicates
    of chosen candidates (``duplicate_tol``, as in ``select_batch``) are never brought in.
    """
    feats, mat = training_design(candidate_features, train_features, batch_size, lam, device, dtype)
    dev, raw, s = feats.device, feats.pool, feats.scale
    n, b = raw.shape[0], int(batch_size)
    start, chol = _logdet(mat)

    # Greedy phase = max_det on features whitened by the training design (noise λ).
    f = scaled(raw, s, dtype)
    guard = DuplicateGuard(raw, s, duplicate_tol)
    pool = m.Pool(
        f=apply_posterior_(f, chol, float(np.sqrt(lam))),
        n=n,
        centers=None,
        available=torch.ones(n, dtype=torch.bool, device=dev),
        guard=guard,
        rng=np.random.default_rng(0),
    )
    picks, var = m.select_max_det(pool, b, float(np.sqrt(lam)))
    gains = np.log1p(np.asarray(var) / lam)
    # Final posterior variances = λ·φᵀM⁻¹φ with M including the picks: the exchange's start.
    d = pool.variances.clamp(min=0.0) / lam
    del pool, f
    sel = list(picks)
    f = scaled(raw, s, dtype)  # plain scaled features for the exchange phase
    fs = f[sel]
    mat = mat + fs.T @ fs
    greedy, chol = _logdet(mat)
    swaps: list[Swap] = []
    if exchange:
        limit = 10 * b if max_swaps is None else int(max_swaps)
        swaps = _fedorov(f, sel, mat, chol, d, guard, limit, rtol)
    value = swaps[-1].logdet if swaps else greedy
    return DesignResult(
        indices=np.asarray(sel, dtype=np.int64),
        greedy_indices=np.asarray(picks, dtype=np.int64),
        criterion="D",
        value=value,
        greedy_value=greedy,
        start_value=start,
        gains=gains,
        swaps=tuple(swaps),
        lam=lam,
        scale=s,
    )


def _fedorov(
    f: torch.Tensor,
    sel: list[int],
    mat: torch.Tensor,
    chol: torch.Tensor,
    d: torch.Tensor,
    guard: DuplicateGuard,
    limit: int,
    rtol: float,
) -> list[Swap]:
    """Best-pair Fedorov exchange on ``sel`` (modified in place); returns the accepted swaps."""
    n = f.shape[0]
    dev = f.device
    minv = torch.cholesky_inverse(chol)
    # (N, B) duplicates of each pick, and how many picks each candidate duplicates (int16: the
    # (N, B) comparisons below stay small).
    near = torch.stack([guard.near(i) for i in sel], dim=1).to(torch.int16)
    count = near.sum(dim=1, dtype=torch.int16)
    chosen = torch.zeros(n, dtype=torch.bool, device=dev)
    chosen[sel] = True
    swaps: list[Swap] = []
    cols = torch.arange(len(sel), device=dev)
    while len(swaps) < limit:
        idx = torch.as_tensor(sel, device=dev)
        ratio = f @ (minv @ f[idx].T)  # (N, B): d_ji, turned in place into the det ratio
        d_out = ratio[idx, cols].clone()
        ratio.square_().addr_(1.0 + d, 1.0 - d_out)  # (1 + d_j)(1 − d_i) + d_ji²
        # j may replace i if j is new and no remaining pick (other than i) duplicates it.
        ok = (count[:, None] == near) & ~chosen[:, None]
        ratio.masked_fill_(~ok, -torch.inf)
        del ok
        best = int(torch.argmax(ratio))
        j, col = divmod(best, len(sel))
        if not float(ratio[j, col]) > 1.0 + rtol:
            break
        i = sel[col]
        u = torch.stack([f[j], f[i]], dim=1)  # (K, 2): add φ_j, remove φ_i
        mu = minv @ u
        h = torch.diag(torch.tensor([1.0, -1.0], dtype=f.dtype, device=dev)) + u.T @ mu
        q = f @ mu  # (N, 2)
        d -= (q @ torch.linalg.inv(h) * q).sum(dim=1)  # Woodbury on every φᵀM⁻¹φ
        mat = mat + torch.outer(f[j], f[j]) - torch.outer(f[i], f[i])
        logdet, chol = _logdet(mat)
        minv = torch.cholesky_inverse(chol)
        sel[col] = j
        chosen[i], chosen[j] = False, True
        new_near = guard.near(j)
        count += new_near.to(count.dtype) - near[:, col]
        near[:, col] = new_near.to(near.dtype)
        swaps.append(Swap(out_index=i, in_index=j, logdet=logdet))
        if len(swaps) % 16 == 0:
            d = _quad(f, minv)  # refresh against drift of the rank-2 updates
    return swaps


def a_optimal(
    candidate_features: Any,
    batch_size: int,
    *,
    train_features: Any = None,
    lam: float = DEFAULT_LAM,
    duplicate_tol: float = DEFAULT_DUPLICATE_TOL,
    device: Any = None,
    dtype: torch.dtype = torch.float64,
) -> DesignResult:
    """A-optimal batch, greedy: each pick maximises the drop of trace M⁻¹."""
    feats, mat = training_design(candidate_features, train_features, batch_size, lam, device, dtype)
    dev, raw, s = feats.device, feats.pool, feats.scale
    n, b = raw.shape[0], int(batch_size)
    minv = torch.cholesky_inverse(torch.linalg.cholesky(mat))
    start = float(minv.trace())
    f = scaled(raw, s, dtype)
    d = torch.empty(n, dtype=dtype, device=dev)
    a = torch.empty(n, dtype=dtype, device=dev)
    for i in range(0, n, CHUNK_ROWS):
        g = f[i : i + CHUNK_ROWS] @ minv
        d[i : i + CHUNK_ROWS] = (g * f[i : i + CHUNK_ROWS]).sum(dim=1)
        a[i : i + CHUNK_ROWS] = g.square().sum(dim=1)
    guard = DuplicateGuard(raw, s, duplicate_tol)
    available = torch.ones(n, dtype=torch.bool, device=dev)
    sel: list[int] = []
    gains: list[float] = []
    for _ in range(b):
        if not bool(available.any()):
            break
        gain = a / (1.0 + d)
        p = int(torch.argmax(torch.where(available, gain, -torch.inf)))
        sel.append(p)
        gains.append(float(gain[p]))
        available &= ~guard.near(p)
        z = minv @ f[p]
        c = 1.0 + float(d[p])
        r = f @ z
        t = f @ (minv @ z)
        d -= r.square() / c
        a += -2.0 * r * t / c + r.square() * float(z @ z) / c**2
        minv -= torch.outer(z, z) / c
    fs = f[sel]
    value = float(torch.cholesky_inverse(torch.linalg.cholesky(mat + fs.T @ fs)).trace())
    return DesignResult(
        indices=np.asarray(sel, dtype=np.int64),
        greedy_indices=np.asarray(sel, dtype=np.int64),
        criterion="A",
        value=value,
        greedy_value=value,
        start_value=start,
        gains=np.asarray(gains),
        swaps=(),
        lam=lam,
        scale=s,
    )
