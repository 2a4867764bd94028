"""Conformal calibration on a real trained potential (GFN2-xTB alanine dipeptide, 300 K)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.io import read

from ubmd import keys
from ubmd.calculator import UBMDCalculator
from ubmd.uncertainty import UncertaintyConfig, fit_uncertainty, save_bundle
from ubmd.uncertainty.bundle import calibrate_model, coverage, uncertainties_and_residuals

ALA2 = Path(__file__).resolve().parents[2] / "data" / "ala2" / "ala2_xtb_300K.extxyz"
ALPHA = 0.1


@pytest.fixture(scope="module")
def trained():
    from ubmd.models import train_model
    from ubmd.models.train import TrainConfig

    frames = read(ALA2, index=":")
    idx = np.random.default_rng(0).permutation(len(frames))
    train, cal, test = (
        [frames[i] for i in idx[:100]],
        [frames[i] for i in idx[150:200]],
        [frames[i] for i in idx[200:]],
    )
    options = {"cutoff": 4.0, "n_features": 16, "n_basis": 8, "readout_hidden": 16}
    config = TrainConfig(model_options=options, max_epochs=10, batch_size=8, lr=5e-3)
    model, _ = train_model(config, train)
    return model, train, cal, test


@pytest.mark.parametrize("method", ["posterior", "gmm"])
def test_calibrated_coverage_on_held_out_frames(trained, method):
    model, train, cal_frames, test = trained
    est = fit_uncertainty(model, train, UncertaintyConfig(method=method, gmm_components=4))
    cal = calibrate_model(model, est, cal_frames, alpha=ALPHA)
    assert (cal.n_cal, cal.n_cal_atoms) == (50, 50 * 22)
    cov = coverage(model, est, cal, test)
    # Coverage of a 50-point calibration measured on 100 fresh structures: sd from both
    # binomial samples (atoms are correlated within a structure, so count structures).
    sd = math.sqrt(ALPHA * (1 - ALPHA) * (1 / 50 + 1 / len(test)))
    assert abs(cov["coverage_total"] - (1 - ALPHA)) < 3 * sd
    assert abs(cov["coverage_atom"] - (1 - ALPHA)) < 3 * sd
    # Calibrated intervals are in residual units: eV/atom and eV/Å, of the size of the errors.
    res = uncertainties_and_residuals(model, est, test)
    ratio = float((cal.c_atom * res["u_atom"]).median() / res["r_atom"].median())
    assert 1.0 < ratio < 10.0


def test_calibrated_calculator_from_file(trained, tmp_path):
    model, train, cal_frames, test = trained
    est = fit_uncertainty(model, train, UncertaintyConfig())
    cal = calibrate_model(model, est, cal_frames, alpha=ALPHA)
    save_bundle(tmp_path / "ala2.pt", model, est, cal)
    calc = UBMDCalculator.from_file(tmp_path / "ala2.pt")
    atoms = test[0].copy()
    atoms.calc = calc
    f = atoms.get_forces()
    ref = test[0].get_forces()
    err = np.sqrt(((f - ref) ** 2).mean(axis=1))
    u = calc.results[keys.CALIBRATED_ATOMIC_UNCERTAINTY]
    assert u.shape == (22,) and np.all(u > 0)
    assert np.mean(err <= u) > 0.5  # ~90 % expected; one frame only
    torch.testing.assert_close(
        torch.tensor(u), torch.tensor(cal.c_atom * calc.results[keys.ATOMIC_UNCERTAINTY])
    )
