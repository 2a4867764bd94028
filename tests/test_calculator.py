"""The ASE calculator: contract, agreement with ubmd.models.compute, model files, ASE dynamics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import bulk, molecule
from ase.calculators.calculator import PropertyNotImplementedError

from ubmd import keys
from ubmd.calculator import UBMDCalculator
from ubmd.models import Ensemble, Graph, compute
from ubmd.models.builtin import PaiNN
from ubmd.uncertainty import UncertaintyConfig, calibrate, fit_uncertainty, save_bundle


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # other suites share the machine


def _painn(species, seed=0):
    torch.manual_seed(seed)
    model = PaiNN(species, cutoff=3.5, n_features=16, n_basis=8, readout_hidden=8).double()
    model.set_energy_stats(shift=-np.arange(1.0, len(model.species) + 1), scale=0.5)
    return model


def _frames(atoms: Atoms, n: int, amp: float) -> list[Atoms]:
    out = []
    for k in range(n):
        a = atoms.copy()
        a.rattle(amp, seed=k)
        out.append(a)
    return out


@pytest.fixture(scope="module")
def setup():
    model = _painn([1, 6, 8])
    est = fit_uncertainty(model, _frames(molecule("CH3CH2OH"), 8, 0.05), UncertaintyConfig())
    cal = calibrate(alpha=0.1, u_total=torch.ones(20), r_total=torch.linspace(0.1, 2, 20))
    return model, est, cal


def test_contract_and_agreement_with_compute(setup):
    model, est, cal = setup
    calc = UBMDCalculator(model, est, cal)
    for prop in ("energy", "free_energy", "forces", "stress", keys.UNCERTAINTY):
        assert prop in calc.implemented_properties
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.1, seed=11)
    atoms.calc = calc
    ref = compute(model, Graph.from_atoms(atoms, cutoff=model.cutoff), forces=True)
    np.testing.assert_allclose(atoms.get_forces(), ref[keys.FORCES].numpy(), rtol=1e-12)
    assert atoms.get_potential_energy() == pytest.approx(float(ref[keys.ENERGY][0]), rel=1e-12)
    assert atoms.get_potential_energy(force_consistent=True) == atoms.get_potential_energy()
    r = calc.results
    assert isinstance(r[keys.UNCERTAINTY], float) and r[keys.UNCERTAINTY] > 0
    assert r[keys.ATOMIC_UNCERTAINTY].shape == (len(atoms),)
    assert r[keys.CALIBRATED_UNCERTAINTY] == pytest.approx(cal.c_total * r[keys.UNCERTAINTY])
    assert keys.CALIBRATED_ATOMIC_UNCERTAINTY not in r  # this calibration has no c_atom
    np.testing.assert_allclose(r["energies"].sum(), r["energy"], rtol=1e-12)
    with pytest.raises(PropertyNotImplementedError, match="periodic"):
        atoms.get_stress()


def test_periodic_stress_and_unknown_element():
    model = _painn([13, 29])
    cell = bulk("Cu", "fcc", a=3.6, cubic=True)
    cell.numbers[0] = 13
    cell.rattle(0.05, seed=1)
    cell.calc = UBMDCalculator(model)
    ref = compute(model, Graph.from_atoms(cell, cutoff=model.cutoff), stress=True)
    np.testing.assert_allclose(cell.get_stress(), ref[keys.STRESS][0].numpy(), rtol=1e-10)
    assert keys.UNCERTAINTY not in cell.calc.results  # no estimator, no uncertainty
    bad = molecule("H2O")
    bad.calc = UBMDCalculator(model)
    with pytest.raises(ValueError, match=r"(?i)element|species"):
        bad.get_potential_energy()


def test_from_file_roundtrip_and_ensemble(setup, tmp_path):
    model, est, cal = setup
    ens = Ensemble([model, _painn([1, 6, 8], seed=1)])
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.1, seed=2)
    for name, m in (("single", model), ("ensemble", ens)):
        path = tmp_path / f"{name}.pt"
        save_bundle(path, m, est, cal)
        direct, loaded = UBMDCalculator(m, est, cal), UBMDCalculator.from_file(path)
        a, b = atoms.copy(), atoms.copy()
        a.calc, b.calc = direct, loaded
        np.testing.assert_allclose(a.get_forces(), b.get_forces(), rtol=1e-12)
        for k in (keys.UNCERTAINTY, keys.ATOMIC_UNCERTAINTY, keys.CALIBRATED_UNCERTAINTY):
            np.testing.assert_allclose(direct.results[k], loaded.results[k], rtol=1e-12)
    assert loaded.results[keys.ENSEMBLE_ENERGY].shape == (2,)
    assert loaded.results[keys.ENSEMBLE_FORCES].shape == (2, len(atoms), 3)
    np.testing.assert_allclose(
        loaded.results["energy"], loaded.results[keys.ENSEMBLE_ENERGY].mean(), rtol=1e-12
    )
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a ubmd model file"):
        UBMDCalculator.from_file(tmp_path / "junk.pt")


def test_ase_dynamics_run(setup):
    from ase.md.langevin import Langevin
    from ase.optimize import BFGS

    model, est, cal = setup
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=4)
    atoms.calc = UBMDCalculator(model, est, cal)
    e0 = atoms.get_potential_energy()
    BFGS(atoms, logfile=None).run(fmax=1e-3, steps=5)
    assert atoms.get_potential_energy() < e0
    dyn = Langevin(
        atoms,
        0.5 * units.fs,
        temperature_K=300,
        friction=0.01,
        fixcm=False,
        rng=np.random.default_rng(0),
    )
    start = atoms.positions.copy()
    dyn.run(5)
    assert dyn.nsteps == 5 and not np.allclose(atoms.positions, start)
    assert np.isfinite(atoms.calc.results[keys.CALIBRATED_UNCERTAINTY])


def test_compiled_calculator_matches_eager(setup):
    """compile=True: the same results from a torch.compile'd copy, elements still checked,
    the caller's model left as it was."""
    model, est, cal = setup
    eager, comp = UBMDCalculator(model, est, cal), UBMDCalculator(model, est, cal, compile=True)
    assert comp.model is not model and all(p.requires_grad for p in model.parameters())
    for k, atoms in enumerate(_frames(molecule("CH3CH2OH"), 2, 0.1)):
        a = atoms.copy()
        a.calc = eager
        b = atoms.copy()
        b.calc = comp
        assert b.get_potential_energy() == pytest.approx(a.get_potential_energy(), abs=1e-9)
        np.testing.assert_allclose(b.get_forces(), a.get_forces(), atol=1e-9, err_msg=str(k))
        for key in (keys.CALIBRATED_UNCERTAINTY, keys.ATOMIC_UNCERTAINTY):
            np.testing.assert_allclose(comp.results[key], eager.results[key], atol=1e-9)
    ammonia = molecule("NH3")
    ammonia.calc = comp
    with pytest.raises(ValueError, match=r"N \(7\) unknown to this model"):
        ammonia.get_potential_energy()
