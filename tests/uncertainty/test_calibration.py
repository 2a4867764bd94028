"""Conformal calibration: exact quantile rule, coverage on synthetic data, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from ubmd import keys
from ubmd.uncertainty.calibration import (
    Calibration,
    atom_residual,
    calibrate,
    conformal_quantile,
    empirical_coverage,
    total_residual,
)


def test_quantile_is_the_kth_smallest_score():
    scores = torch.arange(1.0, 20.0)  # n = 19, alpha = 0.1: k = ceil(20 * 0.9) = 18
    assert conformal_quantile(scores[torch.randperm(19)], 0.1) == 18.0
    assert conformal_quantile(scores, 0.05) == 19.0  # k = ceil(20 * 0.95) = 19 = n
    with pytest.raises(ValueError, match="too few"):
        conformal_quantile(scores[:18], 0.05)  # needs n >= 19
    with pytest.raises(ValueError, match="alpha"):
        conformal_quantile(scores, 1.5)
    with pytest.raises(ValueError, match="empty"):
        conformal_quantile(torch.zeros(0), 0.1)


def _heteroscedastic(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw uncertainty u and residual |N(0, (0.3 u)²)|: u is right up to an unknown factor."""
    u = 0.2 + 2.0 * torch.rand(n, generator=gen, dtype=torch.float64)
    r = (0.3 * u * torch.randn(n, generator=gen, dtype=torch.float64)).abs()
    return u, r


@pytest.mark.parametrize("alpha", [0.05, 0.2])
def test_calibrated_intervals_cover_one_minus_alpha(alpha):
    gen = torch.Generator().manual_seed(7)
    n_cal, n_test, reps = 1000, 20000, 5
    cover = []
    for _ in range(reps):
        u_cal, r_cal = _heteroscedastic(n_cal, gen)
        cal = calibrate(alpha=alpha, u_total=u_cal, r_total=r_cal)
        u_test, r_test = _heteroscedastic(n_test, gen)
        cover.append(empirical_coverage(cal.c_total * u_test, r_test))
        # The true factor is 0.3 times the normal (1-alpha/2) quantile.
        z = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(1 - alpha / 2)).item()
        assert cal.c_total == pytest.approx(0.3 * z, rel=0.1)
    mean = sum(cover) / reps
    # Coverage given a calibration set is ~Beta; the mean over reps has sd
    # sqrt(alpha (1-alpha) / n_cal / reps) plus test-sampling noise; allow 4 sd.
    sd = math.sqrt(alpha * (1 - alpha) * (1 / n_cal + 1 / n_test) / reps)
    assert abs(mean - (1 - alpha)) < 4 * sd + 1 / (n_cal + 1)
    assert all(abs(c - (1 - alpha)) < 5 * math.sqrt(alpha * (1 - alpha) / n_cal) for c in cover)


def test_calibrate_atom_and_total_and_apply():
    gen = torch.Generator().manual_seed(3)
    e_ref = torch.randn(40, generator=gen, dtype=torch.float64)
    n_atoms = torch.randint(3, 9, (40,), generator=gen)
    e_pred = e_ref + 0.01 * n_atoms * torch.randn(40, generator=gen, dtype=torch.float64)
    f_ref = torch.randn(200, 3, generator=gen, dtype=torch.float64)
    f_pred = f_ref + 0.1 * torch.randn(200, 3, generator=gen, dtype=torch.float64)
    r_tot, r_atom = total_residual(e_pred, e_ref, n_atoms), atom_residual(f_pred, f_ref)
    torch.testing.assert_close(r_tot, (e_pred - e_ref).abs() / n_atoms)
    torch.testing.assert_close(r_atom[5], ((f_pred[5] - f_ref[5]) ** 2).mean().sqrt())
    cal = calibrate(
        alpha=0.1,
        u_total=torch.ones(40, dtype=torch.float64),
        r_total=r_tot,
        u_atom=torch.full((200,), 2.0, dtype=torch.float64),
        r_atom=r_atom,
    )
    assert (cal.n_cal, cal.n_cal_atoms, cal.alpha) == (40, 200, 0.1)
    assert empirical_coverage(cal.c_total * torch.ones(40), r_tot) >= 0.9
    assert empirical_coverage(cal.c_atom * torch.full((200,), 2.0), r_atom) >= 0.9
    res = cal.apply({keys.UNCERTAINTY: torch.tensor([2.0]), keys.ATOMIC_UNCERTAINTY: torch.ones(3)})
    torch.testing.assert_close(res[keys.CALIBRATED_UNCERTAINTY], torch.tensor([2.0 * cal.c_total]))
    assert res[keys.CALIBRATED_ATOMIC_UNCERTAINTY].shape == (3,)
    assert Calibration.from_dict(cal.to_dict()) == cal


def test_calibrate_bad_input():
    u, r = torch.ones(30), torch.ones(30)
    with pytest.raises(ValueError, match="nothing to calibrate"):
        calibrate(alpha=0.1)
    with pytest.raises(ValueError, match="together"):
        calibrate(alpha=0.1, u_total=u)
    with pytest.raises(ValueError, match="NaN"):
        calibrate(alpha=0.1, u_total=u, r_total=torch.full((30,), float("nan")))
    with pytest.raises(ValueError, match="> 0"):
        calibrate(alpha=0.1, u_total=torch.zeros(30), r_total=r)
    with pytest.raises(ValueError, match="30 uncertainties but 29"):
        calibrate(alpha=0.1, u_total=u, r_total=r[:29])
    with pytest.raises(ValueError, match="unknown"):
        Calibration.from_dict({"alpha": 0.1, "c": 1.0})
