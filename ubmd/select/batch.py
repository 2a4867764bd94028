"""``select_batch``: choose B candidates from a pool with a BMDAL selection method."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pydantic import StrictBool

from ubmd.select import methods as m
from ubmd.select.features import (
    DuplicateGuard,
    PoolFeatures,
    apply_posterior_,
    as_vector,
    posterior_factor,
    prepare_features,
    scaled,
    sqnorms,
)

METHODS = ("random", "max_unc", "max_dist", "max_det", "lcmd", "kmeans_pp")
KERNELS = ("linear", "posterior")
DEFAULT_DUPLICATE_TOL = 1e-5


@dataclass(frozen=True)
class SelectionResult:
    """Picked candidate indices in pick order, with the method's criterion at each pick.

    ``scores``: max_unc the uncertainty (or posterior variance); max_det the posterior
    variance; max_dist and lcmd the kernel distance to the nearest center; kmeans_pp the squared
    distance (sampling weight); random NaN. ``n_duplicates_excluded`` counts candidates that were
    dropped as near-duplicates of a pick (not counting the picks themselves).
    """

    indices: np.ndarray  # (B,) int64
    scores: np.ndarray  # (B,) float64
    method: str
    kernel: str
    n_duplicates_excluded: int

    def __len__(self) -> int:
        return int(self.indices.shape[0])


@dataclass(frozen=True)
class SelectionSettings:
    """The options of :func:`select_batch` a campaign's ``selection.settings`` may set (built
    with ``ubmd.strict.build``; ``condition_on_train`` must be a real true/false)."""

    kernel: str = "linear"
    sigma: float = 1e-2
    condition_on_train: StrictBool = True
    duplicate_tol: float = DEFAULT_DUPLICATE_TOL

    def __post_init__(self) -> None:
        check_options(METHODS[0], self.kernel, self.sigma, self.duplicate_tol)


def check_options(method: str, kernel: str, sigma: float, duplicate_tol: float) -> None:
    if method not in METHODS:
        raise ValueError(
            f"unknown selection method {method!r}; known methods: {', '.join(METHODS)}"
        )
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; known kernels: {', '.join(KERNELS)}")
    if not (sigma > 0.0 and np.isfinite(sigma)):
        raise ValueError(f"sigma must be a positive number; got {sigma!r}")
    if not duplicate_tol >= 0.0:
        raise ValueError(f"duplicate_tol must be >= 0; got {duplicate_tol!r}")


def select_batch(
    candidate_features: Any,
    batch_size: int,
    *,
    method: str = "max_det",
    train_features: Any = None,
    uncertainties: Any = None,
    kernel: str = "linear",
    sigma: float = 1e-2,
    condition_on_train: bool = True,
    seed: int = 0,
    duplicate_tol: float = DEFAULT_DUPLICATE_TOL,
    device: Any = None,
    dtype: torch.dtype = torch.float64,
) -> SelectionResult:
    """Choose ``batch_size`` candidates.

    Args:
        candidate_features: (N, K) structure features (numpy or torch, any device).
        batch_size: B, at most N.
        method: one of ``METHODS``.
        train_features: (T, K) features of the labeled training set, or None.
        uncertainties: (N,) per-candidate uncertainties; ``max_unc`` ranks by them (without them
            it ranks by the kernel's posterior variance). Ignored by the other methods.
        kernel: ``"linear"`` (scaled features) or ``"posterior"`` (GP posterior given the
            training features with noise σ², needs ``train_features``).
        sigma: σ of the posterior transform and the noise of max_det.
        condition_on_train: BMDAL's TP mode: training points act as already picked (max_det,
            max_unc: variance conditioned on them; max_dist, lcmd, kmeans_pp: initial centers).
        seed: seed of the random stream (random, kmeans_pp).
        duplicate_tol: candidates within this distance of a pick, in features scaled to unit
            RMS norm, are excluded (near-duplicates are never picked twice).
        device: torch device to compute on (default: the candidates' device, else CPU).
        dtype: compute precision (float64 by default: posterior variances span ~1/σ²).
    """
    check_options(method, kernel, sigma, duplicate_tol)
    feats = prepare_features(
        candidate_features, train_features, device=device, batch_size=batch_size
    )
    unc = None
    if uncertainties is not None:
        unc = as_vector(uncertainties, "uncertainties", feats.pool.shape[0], device=feats.device)
    if kernel == "posterior" and feats.train is None:
        raise ValueError("kernel='posterior' needs train_features (the GP posterior is given them)")
    pool = _fresh_pool(feats, duplicate_tol=duplicate_tol, seed=seed)
    if _needs_kernel_features(method, unc):
        pool.f, pool.centers = _kernel_features(
            feats.pool, feats.train, feats.scale, kernel=kernel, sigma=sigma, method=method,
            condition=condition_on_train, dtype=dtype,
        )  # fmt: skip
    b = int(batch_size)
    picks, vals = _pick(pool, method, b, unc, sigma)
    return _selection_result(
        pool, picks, vals, batch_size=b, method=method, kernel=kernel, duplicate_tol=duplicate_tol
    )


def _fresh_pool(feats: PoolFeatures, *, duplicate_tol: float, seed: int) -> m.Pool:
    """Every candidate available, no kernel features yet, the seeded random stream."""
    n = feats.pool.shape[0]
    return m.Pool(
        f=None,
        n=n,
        centers=None,
        available=torch.ones(n, dtype=torch.bool, device=feats.device),
        guard=DuplicateGuard(feats.pool, feats.scale, duplicate_tol),
        rng=np.random.default_rng(seed),
    )


def _needs_kernel_features(method: str, unc: torch.Tensor | None) -> bool:
    """random needs none; max_unc needs none when it ranks by given uncertainties."""
    return method not in ("random",) and not (method == "max_unc" and unc is not None)


def _selection_result(
    pool: m.Pool,
    picks: list[int],
    vals: list[float],
    *,
    batch_size: int,
    method: str,
    kernel: str,
    duplicate_tol: float,
) -> SelectionResult:
    """The result, with a warning when near-duplicates left fewer than ``batch_size`` picks."""
    if len(picks) < batch_size:
        warnings.warn(
            f"only {len(picks)} distinct candidates left after excluding near-duplicates "
            f"(duplicate_tol={duplicate_tol}); returning a batch of {len(picks)} instead of "
            f"{batch_size}",
            stacklevel=3,  # the caller of select_batch
        )
    n_dup = pool.n - int(pool.available.sum()) - len(picks)
    return SelectionResult(
        indices=np.asarray(picks, dtype=np.int64),
        scores=np.asarray(vals, dtype=np.float64),
        method=method,
        kernel=kernel,
        n_duplicates_excluded=n_dup,
    )


def _pick(
    pool: m.Pool, method: str, b: int, unc: torch.Tensor | None, sigma: float
) -> tuple[list[int], list[float]]:
    """Run ``method`` on ``pool``: the picks and the method's criterion at each."""
    if method == "random":
        return m.select_random(pool, b)
    if method == "max_unc":
        return m.select_max_unc(pool, b, unc if unc is not None else sqnorms(pool.f))
    if method == "max_det":
        return m.select_max_det(pool, b, sigma)
    if method == "max_dist":
        return m.select_max_dist(pool, b)
    if method == "lcmd":
        return m.select_lcmd(pool, b)
    return m.select_kmeans_pp(pool, b)


def _kernel_features(
    raw: torch.Tensor,
    train: torch.Tensor | None,
    s: float,
    *,
    kernel: str,
    sigma: float,
    method: str,
    condition: bool,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Kernel features of the pool and, for the distance methods in TP mode, of the centers."""
    f = scaled(raw, s, dtype)
    t = None if train is None else scaled(train, s, dtype)
    if kernel == "posterior":
        factor = posterior_factor(t, sigma)
        apply_posterior_(f, factor, sigma)
        apply_posterior_(t, factor, sigma)
    if t is None or not condition:
        return f, None
    if method in ("max_det", "max_unc"):
        # Conditioning a variance on the training points = posterior transform given them.
        apply_posterior_(f, posterior_factor(t, sigma), sigma)
        return f, None
    return f, t
