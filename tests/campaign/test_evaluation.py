"""The campaign's held-out errors: the same numbers as `ubmd evaluate`'s, stress included."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))

from model_helpers import emt_dataset, make_painn


def test_errors_match_the_model_metrics_with_stress():
    from ubmd.campaign.evaluation import _errors
    from ubmd.models.data import labelled_arrays
    from ubmd.models.metrics import error_metrics

    frames = emt_dataset(5, seed=3)
    model = make_painn([13, 29])
    arrays = labelled_arrays(frames)
    mine = _errors(model, arrays, "cpu")
    ref = error_metrics(model, frames)
    assert mine["n_stress"] == 5
    assert mine["energy_rmse_eV_atom"] == pytest.approx(ref["energy_per_atom_rmse"], rel=1e-9)
    assert mine["force_rmse_eV_A"] == pytest.approx(ref["forces_rmse"], rel=1e-9)
    assert mine["stress_rmse_meV_A3"] == pytest.approx(1000 * ref["stress_rmse"], rel=1e-9)
    assert mine["stress_mae_meV_A3"] == pytest.approx(1000 * ref["stress_mae"], rel=1e-9)


def test_no_stress_columns_without_stress_labels():
    from ubmd.campaign.evaluation import _errors
    from ubmd.models.data import labelled_arrays

    frames = emt_dataset(3, seed=4)
    for atoms in frames:
        del atoms.calc.results["stress"]
    arrays = labelled_arrays(frames)
    assert not np.asarray(arrays["has_stress"]).any()
    assert "stress_rmse_meV_A3" not in _errors(make_painn([13, 29]), arrays, "cpu")


def test_a_constant_energy_shift_is_reported_as_the_mean_error():
    """Labels shifted by c per atom: the mean error moves by exactly -c, the forces not at all,
    and both error functions agree on it (an offset shows as mean error, not as noise)."""
    from ubmd import keys
    from ubmd.campaign.evaluation import _errors
    from ubmd.models.data import labelled_arrays
    from ubmd.models.metrics import error_metrics

    frames = emt_dataset(4, seed=5)
    model = make_painn([13, 29])
    before = _errors(model, labelled_arrays(frames), "cpu")
    shift = 0.037  # eV/atom
    for atoms in frames:
        atoms.calc.results["energy"] += shift * len(atoms)
    arrays = labelled_arrays(frames)
    after = _errors(model, arrays, "cpu")
    delta = after["energy_mean_error_eV_atom"] - before["energy_mean_error_eV_atom"]
    assert delta == pytest.approx(-shift, abs=1e-9)
    assert after["force_rmse_eV_A"] == before["force_rmse_eV_A"]
    ref = error_metrics(model, frames)
    assert ref["energy_per_atom_mean_error"] == pytest.approx(
        after["energy_mean_error_eV_atom"], rel=1e-9
    )
    de = after["energy_mean_error_eV_atom"]
    assert after["energy_rmse_eV_atom"] >= abs(de)  # RMSE^2 = mean^2 + variance
    assert np.asarray(arrays[keys.N_ATOMS]).sum() == 16


def test_residual_stats_count_every_component_once():
    import numpy as np

    from ubmd.models.metrics import residual_stats

    mae, rmse, mean = residual_stats(np.array([[1.0, -1.0], [3.0, -3.0]]))
    assert (mae, mean) == (2.0, 0.0)
    assert rmse == np.sqrt(5.0)
