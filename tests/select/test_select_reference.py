"""Every selection method picks exactly what the naive N×N reference picks."""

import numpy as np
import pytest
import sel_reference as ref

from ubmd.select import select_batch

SIGMA = 1e-2
# (kernel, condition_on_train, with training points)
CONFIGS = [
    ("linear", True, False),
    ("linear", True, True),
    ("linear", False, True),
    ("posterior", True, True),
    ("posterior", False, True),
]


def _problem(seed: int, with_train: bool):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(30, 61))
    k = int(rng.integers(5, 21))
    # Anisotropic features, like real gradient features, so the kernels are not trivial.
    mix = rng.normal(size=(k, k)) * np.geomspace(1.0, 0.05, k)[None, :]
    pool = rng.normal(size=(n, k)) @ mix.T + 0.3
    train = None
    if with_train:
        t = int(rng.integers(2, k + 6))  # fewer and more training points than K
        train = rng.normal(size=(t, k)) @ mix.T + 0.3
    return pool, train, k


def _reference(method, pool, train, b, *, kernel, condition, seed, unc=None):
    kmat, n, centers = ref.kernel(
        pool, train, kernel=kernel, sigma=SIGMA, condition=condition, method=method
    )
    if method == "max_det":
        return ref.max_det(kmat, n, b, SIGMA)
    if method == "max_unc":
        return ref.max_unc(kmat, n, b, unc)
    if method == "max_dist":
        return ref.max_dist(kmat, n, b, centers)
    if method == "lcmd":
        return ref.lcmd(kmat, n, b, centers)
    return ref.kmeans_pp(kmat, n, b, centers, seed)


@pytest.mark.parametrize("method", ["max_det", "max_unc", "max_dist", "lcmd", "kmeans_pp"])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c[0]}-cond{c[1]}-train{c[2]}")
def test_matches_naive_reference(method, config):
    kernel, condition, with_train = config
    for seed in range(4):
        pool, train, k = _problem(seed, with_train)
        b = min(8, k + 2)  # sometimes past the feature dimension: variances become ~σ²
        got = select_batch(
            pool,
            b,
            method=method,
            train_features=train,
            kernel=kernel,
            sigma=SIGMA,
            condition_on_train=condition,
            seed=seed,
        )
        want = _reference(method, pool, train, b, kernel=kernel, condition=condition, seed=seed)
        assert got.indices.tolist() == [int(i) for i in want], (seed, got.indices, want)
        assert len(set(got.indices.tolist())) == b


def test_max_unc_with_uncertainties_is_top_b():
    pool, train, _ = _problem(7, True)
    unc = np.random.default_rng(1).random(pool.shape[0])
    got = select_batch(pool, 6, method="max_unc", train_features=train, uncertainties=unc)
    assert got.indices.tolist() == [int(i) for i in ref.max_unc(None, 0, 6, unc)]
    np.testing.assert_allclose(got.scores, np.sort(unc)[::-1][:6])


def test_max_det_scores_are_posterior_variances():
    # The score of pick j is the variance conditioned on train + picks 1..j-1 (noise σ²).
    pool, train, _ = _problem(3, True)
    got = select_batch(pool, 5, method="max_det", train_features=train, sigma=SIGMA)
    kmat, _n, _ = ref.kernel(pool, train, sigma=SIGMA)
    for j, p in enumerate(got.indices):
        prev = list(got.indices[:j])
        var = kmat[p, p]
        if prev:
            kss = kmat[np.ix_(prev, prev)] + SIGMA**2 * np.eye(j)
            var -= kmat[p, prev] @ np.linalg.solve(kss, kmat[prev, p])
        assert got.scores[j] == pytest.approx(var, rel=1e-8, abs=1e-12)


def test_max_dist_scores_are_distances_to_nearest_center():
    pool, train, _ = _problem(4, True)
    got = select_batch(pool, 5, method="max_dist", train_features=train)
    kmat, _n, centers = ref.kernel(pool, train, method="max_dist")
    d2 = ref.sqdist(kmat)
    for j, p in enumerate(got.indices):
        cen = list(centers) + list(got.indices[:j])
        assert got.scores[j] == pytest.approx(np.sqrt(d2[p, cen].min()), rel=1e-8)
