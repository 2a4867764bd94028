"""Offline optimal design: greedy D/A against explicit determinants/traces, Fedorov exchange,
max_det vs random/max_unc, and the informativeness report."""

import numpy as np
import pytest
import sel_reference as ref

from ubmd.select import a_optimal, d_optimal, design_report, select_batch

LAM = 1e-4


def _problem(seed, n=40, k=8, t=4):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(k, k)) * np.geomspace(1.0, 0.1, k)[None, :]
    pool = rng.normal(size=(n, k)) @ mix.T
    train = rng.normal(size=(t, k)) @ mix.T if t else None
    return pool, train


@pytest.mark.parametrize("t", [0, 3, 12])
def test_d_optimal_greedy_matches_explicit_logdet(t):
    for seed in range(3):
        pool, train = _problem(seed, t=t)
        res = d_optimal(pool, 6, train_features=train, lam=LAM, exchange=False)
        sel: list[int] = []
        for _ in range(6):
            vals = [
                ref.design_logdet(pool, train, [*sel, x], LAM) if x not in sel else -np.inf
                for x in range(pool.shape[0])
            ]
            sel.append(int(np.argmax(vals)))
        assert res.indices.tolist() == sel
        assert res.value == pytest.approx(ref.design_logdet(pool, train, sel, LAM), abs=1e-8)
        assert res.start_value == pytest.approx(ref.design_logdet(pool, train, [], LAM), abs=1e-8)
        # per-pick gains add up to the log-det increase
        assert res.gains.sum() == pytest.approx(res.value - res.start_value, rel=1e-8)


def test_fedorov_exchange_never_decreases_logdet():
    n_swapped = 0
    for seed in range(6):
        pool, train = _problem(seed, n=30, k=6, t=2)
        res = d_optimal(pool, 5, train_features=train, lam=LAM)
        sel = res.greedy_indices.tolist()
        prev = ref.design_logdet(pool, train, sel, LAM)
        assert res.greedy_value == pytest.approx(prev, abs=1e-8)
        for sw in res.swaps:  # replay every accepted swap with explicit determinants
            assert sw.out_index in sel and sw.in_index not in sel
            sel[sel.index(sw.out_index)] = sw.in_index
            now = ref.design_logdet(pool, train, sel, LAM)
            assert now > prev
            assert sw.logdet == pytest.approx(now, abs=1e-8)
            prev = now
        n_swapped += len(res.swaps)
        assert sel == res.indices.tolist()
        assert res.value == pytest.approx(prev, abs=1e-8)
        # the result is a local optimum: no single exchange improves it
        best = max(
            ref.design_logdet(pool, train, [j if s == i else s for s in sel], LAM)
            for i in sel
            for j in range(pool.shape[0])
            if j not in sel
        )
        assert best <= res.value + 1e-9
    assert n_swapped > 0, "greedy was optimal on every problem: the exchange was never exercised"


def test_a_optimal_greedy_matches_explicit_trace():
    for seed in range(3):
        pool, train = _problem(seed, t=3)
        res = a_optimal(pool, 5, train_features=train, lam=LAM)
        sel: list[int] = []
        for _ in range(5):
            vals = [
                ref.design_trace(pool, train, [*sel, x], LAM) if x not in sel else np.inf
                for x in range(pool.shape[0])
            ]
            sel.append(int(np.argmin(vals)))
        assert res.indices.tolist() == sel
        assert res.value == pytest.approx(ref.design_trace(pool, train, sel, LAM), rel=1e-8)
        assert res.start_value - res.gains.sum() == pytest.approx(res.value, rel=1e-6)


def test_max_det_logdet_beats_random_and_max_unc():
    for seed in range(5):
        pool, train = _problem(seed, n=60, k=12, t=3)
        unc = np.linalg.norm(pool, axis=1)  # "uncertainty" that favours large, similar norms
        logdets = {}
        for method in ("max_det", "random", "max_unc"):
            res = select_batch(
                pool, 8, method=method, train_features=train, uncertainties=unc, seed=seed
            )
            logdets[method] = ref.design_logdet(pool, train, res.indices, LAM)
        assert logdets["max_det"] >= logdets["random"]
        assert logdets["max_det"] >= logdets["max_unc"]


def test_report_gains_and_training_design():
    pool, train = _problem(0, t=5)
    rep = design_report(pool, train_features=train, lam=LAM, batch_size=3)
    base = ref.design_logdet(pool, train, [], LAM)
    want = [ref.design_logdet(pool, train, [x], LAM) - base for x in range(pool.shape[0])]
    np.testing.assert_allclose(rep.gains, want, rtol=1e-8, atol=1e-10)
    s = ref.scale(pool, train)
    eig = np.sort(np.linalg.eigvalsh((train * s).T @ (train * s)))[::-1]
    np.testing.assert_allclose(rep.eigenvalues, np.maximum(eig, 0), atol=1e-9)
    assert rep.numerical_rank == 5  # 5 training points in K = 8
    assert rep.condition_number == pytest.approx((eig[0] + LAM) / LAM, rel=1e-6)
    assert 1.0 < rep.effective_rank <= 5.0
    assert rep.adds_information and rep.n_informative == pool.shape[0]
    d_opt = d_optimal(pool, 3, train_features=train, lam=LAM)
    assert rep.batch_gain == pytest.approx(d_opt.value - base, rel=1e-8)


def test_report_says_when_pool_adds_nothing():
    rng = np.random.default_rng(0)
    k = 4
    # Dense training set in 3 of 4 directions with equal spread: effective rank 3.
    train = np.zeros((3000, k))
    train[:, :3] = rng.normal(size=(3000, 3))
    covered = np.zeros((50, k))
    covered[:, :3] = 0.01 * rng.normal(size=(50, 3))  # small and inside the sampled span
    rep = design_report(covered, train_features=train, lam=LAM, gain_threshold=1e-3)
    assert not rep.adds_information
    assert rep.n_informative == 0
    assert "adds no information" in rep.message
    assert rep.effective_rank == pytest.approx(3.0, abs=0.05)
    assert rep.numerical_rank == 3
    assert rep.novelty.max() < 1e-3
    # One candidate along the unsampled 4th direction changes the verdict.
    new = covered.copy()
    new[7] = [0.0, 0.0, 0.0, 0.5]
    rep2 = design_report(new, train_features=train, lam=LAM, gain_threshold=1e-3)
    assert rep2.adds_information and rep2.n_informative == 1
    assert int(np.argmax(rep2.gains)) == 7
    assert rep2.novelty[7] == pytest.approx(1.0, abs=1e-9)


def test_report_without_training_set():
    pool, _ = _problem(1, t=0)
    rep = design_report(pool)
    assert rep.n_train == 0 and rep.effective_rank == 0.0 and rep.condition_number == 1.0
    assert rep.adds_information
    np.testing.assert_allclose(rep.novelty, 1.0)


def test_d_optimal_never_takes_near_duplicates():
    rng = np.random.default_rng(5)
    base = rng.normal(size=(10, 5))
    pool = np.vstack([base, base + 1e-10 * rng.normal(size=base.shape)])
    for exchange in (False, True):
        res = d_optimal(pool, 8, lam=LAM, exchange=exchange)
        groups = (res.indices % 10).tolist()
        assert len(set(groups)) == 8, groups
    a = a_optimal(pool, 8, lam=LAM)
    assert len(set((a.indices % 10).tolist())) == 8


def test_design_bad_input():
    pool, train = _problem(0)
    with pytest.raises(ValueError, match="lam must be a positive"):
        d_optimal(pool, 3, lam=0.0)
    with pytest.raises(ValueError, match="larger than the candidate pool"):
        a_optimal(pool, 41)
    with pytest.raises(ValueError, match="feature dimensions differ"):
        design_report(pool, train_features=train[:, :5])
    bad = pool.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        design_report(bad)
