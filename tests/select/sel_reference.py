"""Naive reference implementations, straight from the definitions, with explicit N×N kernels.

Deliberately independent of ubmd.select: kernels are full matrices over [pool; train], the
posterior transform is the GP formula k − k(·,T)(k(T,T) + σ²I)⁻¹k(T,·), max_det maximises an
explicit log det, and distances come from the kernel matrix.
"""

from __future__ import annotations

import numpy as np


def scale(pool: np.ndarray, train: np.ndarray | None) -> float:
    ref = train if train is not None else pool
    return 1.0 / np.sqrt(np.mean(np.sum(ref**2, axis=1)))


def posterior(kmat: np.ndarray, cond: np.ndarray, sigma: float) -> np.ndarray:
    """GP posterior kernel given the points ``cond`` (indices into kmat) with noise σ²."""
    kc = kmat[np.ix_(cond, cond)] + sigma**2 * np.eye(len(cond))
    return kmat - kmat[:, cond] @ np.linalg.solve(kc, kmat[cond, :])


def kernel(pool, train, *, kernel="linear", sigma=1e-2, condition=True, method="max_det"):
    """(full kernel over pool+train, pool indices, center indices or [])."""
    x = pool if train is None else np.vstack([pool, train])
    s = scale(pool, train)
    kmat = s**2 * (x @ x.T)
    n = pool.shape[0]
    tr = list(range(n, x.shape[0]))
    if kernel == "posterior":
        kmat = posterior(kmat, tr, sigma)
    centers: list[int] = []
    if train is not None and condition:
        if method in ("max_det", "max_unc"):
            kmat = posterior(kmat, tr, sigma)
        else:
            centers = tr
    return kmat, n, centers


def sqdist(kmat: np.ndarray) -> np.ndarray:
    d = np.diag(kmat)
    return np.maximum(d[:, None] + d[None, :] - 2 * kmat, 0.0)


def max_det(kmat, n, b, sigma):
    sel: list[int] = []
    for _ in range(b):
        best, arg = -np.inf, None
        for x in range(n):
            if x in sel:
                continue
            idx = [*sel, x]
            val = np.linalg.slogdet(kmat[np.ix_(idx, idx)] + sigma**2 * np.eye(len(idx)))[1]
            if val > best:
                best, arg = val, x
        sel.append(arg)
    return sel


def max_unc(kmat, n, b, unc=None):
    score = np.diag(kmat)[:n] if unc is None else unc
    return list(np.argsort(-score, kind="stable")[:b])


def max_dist(kmat, n, b, centers):
    d2 = sqdist(kmat)
    cen = list(centers)
    sel: list[int] = []
    for _ in range(b):
        crit = np.diag(kmat)[:n].copy() if not cen else d2[:n][:, cen].min(axis=1)
        crit[sel] = -np.inf
        p = int(np.argmax(crit))
        sel.append(p)
        cen.append(p)
    return sel


def lcmd(kmat, n, b, centers):
    d2 = sqdist(kmat)
    cen = list(centers)
    sel: list[int] = []
    for _ in range(b):
        if not cen:
            crit = np.diag(kmat)[:n].copy()
            crit[sel] = -np.inf
            p = int(np.argmax(crit))
        else:
            dc = d2[:n][:, cen]
            assign = dc.argmin(axis=1)
            dist = dc.min(axis=1)
            free = np.array([x not in sel for x in range(n)])
            sizes = np.zeros(len(cen))
            for x in np.nonzero(free)[0]:
                sizes[assign[x]] += dist[x]
            big = int(np.argmax(sizes))
            member = free & (assign == big)
            p = int(np.argmax(np.where(member, dist, -np.inf)))
        sel.append(p)
        cen.append(p)
    return sel


def kmeans_pp(kmat, n, b, centers, seed):
    rng = np.random.default_rng(seed)
    d2 = sqdist(kmat)
    cen = list(centers)
    sel: list[int] = []
    for _ in range(b):
        if not cen:
            free = [x for x in range(n) if x not in sel]
            p = free[int(rng.integers(len(free)))]
        else:
            w = d2[:n][:, cen].min(axis=1)
            w[sel] = 0.0
            p = int(np.searchsorted(np.cumsum(w), rng.random() * w.sum(), side="right"))
        sel.append(p)
        cen.append(p)
    return sel


def design_logdet(pool, train, idx, lam):
    """log det(Φ_TᵀΦ_T + Φ_SᵀΦ_S + λI) on scaled features."""
    s = scale(pool, train)
    rows = pool[list(idx)] * s
    if train is not None:
        rows = np.vstack([rows, train * s])
    return np.linalg.slogdet(rows.T @ rows + lam * np.eye(pool.shape[1]))[1]


def design_trace(pool, train, idx, lam):
    s = scale(pool, train)
    rows = pool[list(idx)] * s
    if train is not None:
        rows = np.vstack([rows, train * s])
    return np.trace(np.linalg.inv(rows.T @ rows + lam * np.eye(pool.shape[1])))
