"""select_batch behaviour: reproducibility, near-duplicates, input checking, tensor inputs."""

import numpy as np
import pytest
import torch

from ubmd.select import METHODS, select_batch


def _pool(seed=0, n=50, k=10, t=6):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, k)), rng.normal(size=(t, k)), rng.random(n)


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_same_picks(method):
    pool, train, unc = _pool()
    a = select_batch(pool, 7, method=method, train_features=train, uncertainties=unc, seed=3)
    b = select_batch(pool, 7, method=method, train_features=train, uncertainties=unc, seed=3)
    assert a.indices.tolist() == b.indices.tolist()
    np.testing.assert_array_equal(a.scores, b.scores)
    assert len(set(a.indices.tolist())) == 7


@pytest.mark.parametrize("method", ["random", "kmeans_pp"])
def test_seed_matters_for_random_methods(method):
    pool, _, _ = _pool(n=200)
    picks = {tuple(select_batch(pool, 6, method=method, seed=s).indices) for s in range(4)}
    assert len(picks) > 1


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("with_train", [False, True])
def test_near_duplicates_never_picked_twice(method, with_train):
    rng = np.random.default_rng(1)
    base = rng.normal(size=(12, 6))
    # Each structure appears three times: exactly, and perturbed far below the tolerance.
    pool = np.vstack([base, base, base + 1e-9 * rng.normal(size=base.shape)])
    order = rng.permutation(pool.shape[0])
    pool = pool[order]
    group = (np.arange(36) % 12)[order]
    train = rng.normal(size=(3, 6)) if with_train else None
    unc = np.repeat(rng.random(12), 3)[order]  # duplicates share their uncertainty
    res = select_batch(pool, 10, method=method, train_features=train, uncertainties=unc)
    assert len(res) == 10
    assert len(set(group[res.indices].tolist())) == 10, "a structure was picked twice"
    assert res.n_duplicates_excluded == 20


def test_exhausted_pool_returns_fewer_picks_with_a_warning():
    base = np.random.default_rng(2).normal(size=(4, 5))
    pool = np.vstack([base, base])
    with pytest.warns(UserWarning, match="only 4 distinct candidates"):
        res = select_batch(pool, 6, method="max_det")
    assert sorted(res.indices % 4) == [0, 1, 2, 3]


def test_duplicate_tolerance_is_relative_to_feature_scale():
    rng = np.random.default_rng(3)
    base = rng.normal(size=(10, 4))
    for scale in (1e-3, 1.0, 1e3):  # the same verdict at any overall feature scale
        pool = scale * np.vstack([base, base + 1e-3 * rng.normal(size=base.shape)])
        with pytest.warns(UserWarning, match="only 10 distinct"):
            loose = select_batch(pool, 12, method="max_dist", duplicate_tol=1e-1)
        assert sorted((loose.indices % 10).tolist()) == list(range(10))
        assert len(select_batch(pool, 12, method="max_dist", duplicate_tol=1e-6)) == 12


def test_torch_float32_input_matches_numpy():
    pool, train, _unc = _pool(4)
    p32 = pool.astype(np.float32)
    t32 = train.astype(np.float32)
    for method in ("max_det", "lcmd"):
        a = select_batch(p32, 5, method=method, train_features=t32)
        b = select_batch(
            torch.from_numpy(p32),
            5,
            method=method,
            train_features=torch.from_numpy(t32),
            device="cpu",
        )
        assert a.indices.tolist() == b.indices.tolist()


def test_bad_input_errors():
    pool, train, unc = _pool()
    with pytest.raises(ValueError, match="larger than the candidate pool"):
        select_batch(pool, 51)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        select_batch(pool, 0)
    nan_pool = pool.copy()
    nan_pool[3, 2] = np.nan
    with pytest.raises(ValueError, match=r"candidate_features contain NaN.*rows \[3\]"):
        select_batch(nan_pool, 2)
    nan_train = train.copy()
    nan_train[0, 0] = np.inf
    with pytest.raises(ValueError, match="train_features contain NaN"):
        select_batch(pool, 2, train_features=nan_train)
    with pytest.raises(ValueError, match="K=10.*K=9"):
        select_batch(pool, 2, train_features=train[:, :9])
    with pytest.raises(ValueError, match="known methods: random, max_unc, max_dist"):
        select_batch(pool, 2, method="maxdet")
    with pytest.raises(ValueError, match="known kernels"):
        select_batch(pool, 2, kernel="rbf")
    with pytest.raises(ValueError, match="needs train_features"):
        select_batch(pool, 2, kernel="posterior")
    with pytest.raises(ValueError, match=r"shape \(50,\)"):
        select_batch(pool, 2, method="max_unc", uncertainties=unc[:-1])
    with pytest.raises(ValueError, match="uncertainties contain NaN"):
        select_batch(pool, 2, method="max_unc", uncertainties=np.full(50, np.nan))
    with pytest.raises(ValueError, match="2-D"):
        select_batch(pool[0], 1)
    with pytest.raises(ValueError, match="sigma must be a positive"):
        select_batch(pool, 2, sigma=0.0)


@pytest.mark.parametrize("method", METHODS)
def test_whole_pool_and_float32_compute(method):
    pool, train, unc = _pool(5, n=15, k=6)
    res = select_batch(pool, 15, method=method, train_features=train, uncertainties=unc)
    assert sorted(res.indices.tolist()) == list(range(15))
    res32 = select_batch(pool, 5, method=method, train_features=train, dtype=torch.float32)
    assert len(set(res32.indices.tolist())) == 5


def test_all_zero_features_are_rejected():
    with pytest.raises(ValueError, match="all reference features are zero"):
        select_batch(np.zeros((5, 3)), 2, method="max_dist")
    # with a training set to set the scale, zero candidates are fine
    with pytest.warns(UserWarning, match="only 1 distinct"):
        res = select_batch(np.zeros((5, 3)), 2, method="max_det", train_features=np.eye(3))
    assert len(res) == 1  # all five candidates are duplicates of each other


@pytest.mark.parametrize("method", ["max_det", "max_dist", "lcmd", "kmeans_pp", "max_unc"])
def test_picks_do_not_depend_on_overall_feature_units(method):
    # s = 1/sqrt(mean_train ||φ||²) makes the kernel (and σ) unit-free.
    pool, train, _ = _pool(6, n=40, k=8)
    a = select_batch(pool, 6, method=method, train_features=train, kernel="posterior")
    b = select_batch(
        250.0 * pool, 6, method=method, train_features=250.0 * train, kernel="posterior"
    )
    assert a.indices.tolist() == b.indices.tolist()


def test_device_argument_is_checked():
    pool, _, _ = _pool(n=10)
    with pytest.raises(ValueError, match="invalid device"):
        select_batch(pool, 2, device="abacus")
    if torch.cuda.is_available():
        res = select_batch(torch.as_tensor(pool, device="cuda"), 3, method="lcmd")
        assert res.indices.tolist() == select_batch(pool, 3, method="lcmd").indices.tolist()
    else:
        with pytest.raises(ValueError, match="CUDA is not available"):
            select_batch(pool, 2, device="cuda")
