"""Greedy batch-selection methods of the BMDAL framework (Holzmüller et al., JMLR 2023).

Each method works on kernel features f (N, K) with k(x, x') = f(x)·f(x') and, for the
distance-based methods, on the training points as initial centers (BMDAL's "TP" mode). Memory is
O(N·K + N·B): per pick the work is one (N, K) matrix-vector product.

Conventions shared by all methods:
- a picked candidate, and every candidate within the duplicate tolerance of it, becomes
  unavailable, so no index (and no near-duplicate) is picked twice;
- argmax ties go to the lowest index;
- when fewer available candidates remain than requested, the batch ends early.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ubmd.select.features import DuplicateGuard, nearest_center, sqdist_to, sqnorms


@dataclass
class Pool:
    """Mutable selection state for one call."""

    f: torch.Tensor | None  # (N, K) kernel features, None for methods that need none
    n: int
    centers: torch.Tensor | None  # (T, K) training points in the same kernel space, or None
    available: torch.Tensor  # (N,) bool
    guard: DuplicateGuard
    rng: np.random.Generator
    variances: torch.Tensor | None = None  # max_det: posterior variances after the last pick

    def take(self, p: int) -> None:
        self.available &= ~self.guard.near(p)

    def any_left(self) -> bool:
        return bool(self.available.any())


def _argmax(values: torch.Tensor, available: torch.Tensor) -> int:
    return int(torch.argmax(torch.where(available, values, -torch.inf)))


def _ordered(pool: Pool, order: np.ndarray, scores: np.ndarray, b: int) -> tuple[list, list]:
    """Walk a fixed order, skipping unavailable candidates (used by random and max_unc)."""
    picks: list[int] = []
    vals: list[float] = []
    for p in order:
        if len(picks) == b:
            break
        if bool(pool.available[int(p)]):
            picks.append(int(p))
            vals.append(float(scores[int(p)]))
            pool.take(int(p))
    return picks, vals


def select_random(pool: Pool, b: int) -> tuple[list[int], list[float]]:
    """Uniformly random batch: a seeded permutation, duplicates skipped. Scores are NaN."""
    order = pool.rng.permutation(pool.n)
    return _ordered(pool, order, np.full(pool.n, np.nan), b)


def select_max_unc(pool: Pool, b: int, scores: torch.Tensor) -> tuple[list[int], list[float]]:
    """Top-b candidates by ``scores`` (uncertainties, or the kernel diagonal = posterior variance)."""
    order = torch.argsort(scores, descending=True, stable=True).cpu().numpy()
    return _ordered(pool, order, scores.cpu().numpy(), b)


def select_max_det(pool: Pool, b: int, sigma: float) -> tuple[list[int], list[float]]:
    """Greedy MaxDet: pick argmax of the posterior variance given the picks so far (noise σ²).

    Pivoted-Cholesky form: c_j(x) = k_{j-1}(x, p_j)/sqrt(k_{j-1}(p_j, p_j) + σ²) and
    k_j(x, x) = k_{j-1}(x, x) − c_j(x)². Each pick multiplies det(k(S, S) + σ²I) by
    (σ² + variance), so this is greedy D-optimal design; scores are the variances at pick time.
    The final variances of all candidates are left in ``pool.variances``.
    """
    f = pool.f
    var = sqnorms(f)
    cols = torch.zeros((pool.n, b), dtype=f.dtype, device=f.device)
    picks: list[int] = []
    vals: list[float] = []
    for j in range(b):
        if not pool.any_left():
            break
        p = _argmax(var, pool.available)
        vp = float(var[p])
        picks.append(p)
        vals.append(max(vp, 0.0))
        pool.take(p)
        c = f @ f[p] - cols[:, :j] @ cols[p, :j]
        c /= float(np.sqrt(max(vp, 0.0) + sigma**2))
        cols[:, j] = c
        var -= c.square()
    pool.variances = var
    return picks, vals


def _init_distances(pool: Pool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Squared norms and, with training centers, min squared distances and nearest center ids."""
    sq = sqnorms(pool.f)
    if pool.centers is None or pool.centers.shape[0] == 0:
        return sq, None, torch.full((pool.n,), -1, dtype=torch.long, device=sq.device)
    d2, arg = nearest_center(pool.f, sq, pool.centers)
    return sq, d2, arg


def select_max_dist(pool: Pool, b: int) -> tuple[list[int], list[float]]:
    """Greedy farthest point: argmax_x min_{c ∈ train ∪ picks} d_k(x, c).

    Without training centers the first pick is argmax k(x, x) (as in BMDAL's P mode).
    Scores are the distances d_k at pick time.
    """
    sq, d2, _ = _init_distances(pool)
    picks: list[int] = []
    vals: list[float] = []
    for _ in range(b):
        if not pool.any_left():
            break
        crit = sq if d2 is None else d2
        p = _argmax(crit, pool.available)
        picks.append(p)
        vals.append(float(crit[p].sqrt()))
        pool.take(p)
        new = sqdist_to(pool.f, sq, p)
        d2 = new if d2 is None else torch.minimum(d2, new)
    return picks, vals


def select_lcmd(pool: Pool, b: int) -> tuple[list[int], list[float]]:
    """Largest-cluster maximum distance (BMDAL).

    Every available candidate belongs to its nearest center (training points and picks so far);
    a cluster's size is the sum of its members' squared distances to the center. Pick the member
    farthest from its center in the largest cluster. First pick without centers: argmax k(x, x).
    Scores are the distances d_k at pick time.
    """
    sq, d2, assign = _init_distances(pool)
    t = 0 if pool.centers is None else pool.centers.shape[0]
    picks: list[int] = []
    vals: list[float] = []
    for j in range(b):
        if not pool.any_left():
            break
        if d2 is None:
            p = _argmax(sq, pool.available)
            vals.append(float(sq[p].sqrt()))
        else:
            avail = pool.available
            sizes = torch.zeros(t + b, dtype=d2.dtype, device=d2.device)
            sizes.index_add_(0, assign[avail], d2[avail])
            big = int(torch.argmax(sizes))
            p = _argmax(d2, avail & (assign == big))
            vals.append(float(d2[p].sqrt()))
        picks.append(p)
        pool.take(p)
        new = sqdist_to(pool.f, sq, p)
        if d2 is None:
            d2 = new
            assign = torch.full_like(assign, t + j)
        else:
            closer = new < d2  # ties keep the older center
            d2 = torch.where(closer, new, d2)
            assign = torch.where(closer, t + j, assign)
    return picks, vals


def select_kmeans_pp(pool: Pool, b: int) -> tuple[list[int], list[float]]:
    """k-means++ seeding, sampling variant: P(x) ∝ min_{c ∈ train ∪ picks} d_k(x, c)².

    Random stream (numpy Generator from the seed): without centers the first pick is uniform over
    the available candidates (``rng.integers``); afterwards one ``rng.random()`` per pick,
    inverted on the cumulative weights. If every available weight is 0, the pick is uniform.
    Scores are the squared distances d_k² at pick time (NaN for a uniform pick).
    """
    sq, d2, _ = _init_distances(pool)
    picks: list[int] = []
    vals: list[float] = []
    for _ in range(b):
        if not pool.any_left():
            break
        w = None if d2 is None else torch.where(pool.available, d2, 0.0)
        total = 0.0 if w is None else float(w.sum())
        if total > 0.0:
            cum = torch.cumsum(w, dim=0)
            target = torch.tensor([pool.rng.random() * total], dtype=cum.dtype, device=cum.device)
            p = min(int(torch.searchsorted(cum, target, right=True)), pool.n - 1)
            while not bool(pool.available[p]):  # guards against round-off at a boundary
                p -= 1
            vals.append(float(d2[p]))
        else:
            idx = torch.nonzero(pool.available).flatten()
            p = int(idx[int(pool.rng.integers(idx.shape[0]))])
            vals.append(float("nan"))
        picks.append(p)
        pool.take(p)
        new = sqdist_to(pool.f, sq, p)
        d2 = new if d2 is None else torch.minimum(d2, new)
    return picks, vals
