"""In-process labelers: EMT (periodic metal, stress), GFN2-xTB (tblite), Amber (OpenMM, ala2).

Each checks forces against central differences of its own energies and the stress (where
periodic) against the strain derivative; bad input is refused before anything runs.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from label_helpers import ALA2

from ubmd.labelers import available_labelers, make_labeler
from ubmd.labelers.amber import load_amber_structure
from ubmd.labelers.errors import LabelerSetupError, TimeLimitExceeded
from ubmd.labelers.inprocess import time_limit

PRMTOP = ALA2 / "alanine-dipeptide.prmtop"
CRD = ALA2 / "alanine-dipeptide.crd"


def fd_force(labeler, atoms, atom, comp, tmp_path, h=1e-3):
    e = []
    for sign in (+1, -1):
        moved = atoms.copy()
        moved.positions[atom, comp] += sign * h
        e.append(labeler.label(moved, workdir=tmp_path).energy)
    return -(e[0] - e[1]) / (2 * h)


def fd_stress(labeler, atoms, p, q, tmp_path, h=1e-4):
    e = []
    for sign in (+1, -1):
        strain = np.eye(3)
        strain[p, q] += sign * h / (1 if p == q else 2)
        strain[q, p] = strain[p, q]
        strained = atoms.copy()
        strained.set_cell(atoms.cell.array @ strain, scale_atoms=True)
        e.append(labeler.label(strained, workdir=tmp_path).energy)
    return (e[0] - e[1]) / (2 * h) / atoms.get_volume()


@pytest.fixture
def ala2() -> Atoms:
    return load_amber_structure(PRMTOP, CRD)


def test_registry_lists_and_rejects():
    assert available_labelers() == ["amber", "cp2k", "emt", "vasp", "xtb"]
    with pytest.raises(ValueError, match="unknown labeler 'gaussian'; known labelers: amber, cp2k"):
        make_labeler("gaussian")
    with pytest.raises(ValueError, match="unknown key .cutoff. in emt labeler settings"):
        make_labeler("emt", cutoff=3.0)


def test_emt_forces_and_stress(tmp_path):
    atoms = bulk("Cu", cubic=True) * (2, 1, 1)
    atoms.rattle(0.05, seed=0)
    lab = make_labeler("emt")
    ref = lab.label(atoms, workdir=tmp_path)
    assert ref.stress.shape == (6,)
    for atom, comp in [(0, 0), (3, 2)]:
        assert ref.forces[atom, comp] == pytest.approx(
            fd_force(lab, atoms, atom, comp, tmp_path), abs=1e-5
        )
    for voigt, (p, q) in [(0, (0, 0)), (5, (0, 1))]:
        assert ref.stress[voigt] == pytest.approx(fd_stress(lab, atoms, p, q, tmp_path), abs=1e-6)


def test_emt_refuses_elements_without_parameters(tmp_path):
    with pytest.raises(LabelerSetupError, match=r"EMT has no parameters for \['Mg'\]"):
        make_labeler("emt").label(bulk("Mg"), workdir=tmp_path / "w")
    with pytest.raises(LabelerSetupError, match=r"\['H', 'O'\]"):
        make_labeler("emt").check(molecule("H2O"))  # the "just for fun" parameters are opt-in
    make_labeler("emt", allow_fun_elements=True).check(molecule("H2O"))
    assert not (tmp_path / "w").exists()


def test_xtb_on_alanine_dipeptide(ala2, tmp_path):
    lab = make_labeler("xtb")
    ref = lab.label(ala2, workdir=tmp_path)
    assert ref.stress is None
    assert ref.energy == pytest.approx(-897.0915583, abs=1e-4)  # GFN2-xTB, tblite 0.4 / 0.5
    for atom, comp in [(4, 0), (8, 1)]:  # carbonyl C and C-alpha
        assert ref.forces[atom, comp] == pytest.approx(
            fd_force(lab, ala2, atom, comp, tmp_path), abs=1e-4
        )
    assert np.abs(ref.forces.sum(axis=0)).max() < 1e-6  # no net force on an isolated molecule


def test_xtb_periodic_stress(tmp_path):
    atoms = bulk("Si", cubic=True)
    atoms.rattle(0.03, seed=2)
    lab = make_labeler("xtb", method="GFN1-xTB")
    ref = lab.label(atoms, workdir=tmp_path)
    assert ref.stress[5] == pytest.approx(fd_stress(lab, atoms, 0, 1, tmp_path), abs=1e-5)


def test_xtb_retry_variant_and_scf_failure(ala2, tmp_path):
    from ubmd.labelers.errors import SCFNotConverged
    from ubmd.labelers.retry import RetryPolicy, label_with_retries

    lab = make_labeler("xtb", max_iterations=2)  # cannot converge in 2 SCC steps
    with pytest.raises(SCFNotConverged, match="tblite"):
        lab.label(ala2, workdir=tmp_path)
    second = lab.retry_variant(2, SCFNotConverged("x"))
    assert second.settings.max_iterations == 4 and second.settings.mixer_damping == 0.2
    third = second.retry_variant(3, SCFNotConverged("x"))
    assert third.settings.electronic_temperature_K == 1000.0
    result = label_with_retries(lab, ala2, workdir=tmp_path, policy=RetryPolicy(max_attempts=2))
    assert result.status == "failed" and result.reason.startswith("scf_not_converged")


def test_labelers_and_results_pickle(ala2, tmp_path):
    # Parsl ships labelers to workers and results back.
    lab = make_labeler("cp2k", cutoff_Ry=250.0)
    clone = pickle.loads(pickle.dumps(lab))
    assert clone.settings == lab.settings and clone.settings_hash() == lab.settings_hash()
    result = make_labeler("xtb").label(ala2, workdir=tmp_path)
    back = pickle.loads(pickle.dumps(result))
    assert back.energy == result.energy and back.to_atoms().get_forces().shape == (22, 3)


def test_xtb_refuses_unknown_elements():
    with pytest.raises(LabelerSetupError, match=r"no parameters for \['Fr'\]"):
        make_labeler("xtb").check(Atoms("FrH", positions=[[0, 0, 0], [0, 0, 2.3]]))


def test_amber_units_and_forces(ala2, tmp_path):
    lab = make_labeler("amber", prmtop=str(PRMTOP), platform="Reference")
    ref = lab.label(ala2, workdir=tmp_path)
    assert ref.stress is None and ref.forces.shape == (22, 3)
    # ff96 vacuum energy of the shipped coordinates: -88.09 kJ/mol = -0.91297 eV.
    assert ref.energy == pytest.approx(-0.91297, abs=1e-4)
    for atom, comp in [(1, 0), (14, 2)]:
        assert ref.forces[atom, comp] == pytest.approx(
            fd_force(lab, ala2, atom, comp, tmp_path), abs=1e-4
        )
    assert pickle.loads(pickle.dumps(lab)).label(ala2, workdir=tmp_path).energy == ref.energy


def test_amber_elements_come_from_the_prmtop(ala2):
    assert ala2.get_chemical_formula() == "C6H12N2O2"
    assert ala2.get_chemical_symbols()[:6] == ["H", "C", "H", "H", "C", "O"]


def test_amber_refuses_a_structure_that_does_not_match_the_topology(ala2, tmp_path):
    lab = make_labeler("amber", prmtop=str(PRMTOP))
    with pytest.raises(LabelerSetupError, match="has 21 atoms but the topology .* has 22"):
        lab.label(ala2[:-1], workdir=tmp_path / "w")
    swapped = ala2[[1, 0, *range(2, 22)]]
    with pytest.raises(LabelerSetupError, match="atom 0 is C, the topology expects H"):
        lab.check(swapped)
    with pytest.raises(LabelerSetupError, match="does not exist"):
        make_labeler("amber", prmtop=str(tmp_path / "none.prmtop")).check(ala2)
    assert not (tmp_path / "w").exists()


def test_in_process_time_limit():
    """The limit interrupts a call that overruns it; afterwards, whether the call returned or
    was interrupted, no timer is left armed and the previous SIGALRM handler is back, so no
    alarm arrives after the limit has passed."""
    import signal
    import time

    alarms = []

    def sentinel(signum, frame):  # stands for whatever handler the caller had
        alarms.append(signum)

    previous = signal.signal(signal.SIGALRM, sentinel)
    try:
        with pytest.raises(TimeLimitExceeded), time_limit(0.2):
            time.sleep(5)
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
        assert signal.getsignal(signal.SIGALRM) is sentinel
        t0 = time.monotonic()
        try:
            with time_limit(0.2):
                pass  # returns well within its limit...
        except TimeLimitExceeded:  # ...unless the machine stalled this process that long
            assert time.monotonic() - t0 >= 0.2, "interrupted before its limit"
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0), "timer left armed"
        assert signal.getsignal(signal.SIGALRM) is sentinel, "SIGALRM handler not restored"
        time.sleep(0.4)  # past the limit: an alarm left behind would have arrived by now
        assert alarms == []
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        signal.signal(signal.SIGALRM, previous)
