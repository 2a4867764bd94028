"""Real CP2K single points on one H2O (SZV basis, 200 Ry: ~1.5 s each) and setup errors.

Tolerances: forces vs central differences (h = 0.01 Å) within 0.01 eV/Å (the O(h²) error with
|F| ~ 5 eV/Å plus SCF noise at EPS_SCF 1e-8); stress vs the strain derivative of the energy
(h = 0.005) within 2e-5 eV/Å^3 (about 3 MPa).
"""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk, molecule
from label_helpers import needs

from ubmd.labelers import make_labeler
from ubmd.labelers.cp2k import CP2KLabeler
from ubmd.labelers.errors import LabelerSetupError

FAST = {
    "basis_set": "SZV-MOLOPT-SR-GTH",
    "cutoff_Ry": 200.0,
    "rel_cutoff_Ry": 40.0,
    "eps_scf": 1e-8,
    "timeout_s": 120.0,
}


@pytest.fixture(scope="module")
def cp2k() -> CP2KLabeler:
    needs("cp2k.psmp")
    return make_labeler("cp2k", **FAST)


@pytest.fixture(scope="module")
def water_ref(cp2k, tmp_path_factory):
    """The water box (same as the ``water_box`` fixture) and its CP2K label, computed once."""
    atoms = molecule("H2O")
    atoms.cell = [4.5, 4.5, 4.5]
    atoms.pbc = True
    atoms.center()
    atoms.rattle(0.05, seed=1)
    return atoms, cp2k.label(atoms, workdir=tmp_path_factory.mktemp("water_ref"))


def test_forces_and_stress_match_finite_differences(cp2k, water_ref, tmp_path):
    water_box, ref = water_ref
    assert ref.ok and ref.stress is not None and ref.stress.shape == (6,)
    assert ref.free_energy == pytest.approx(ref.energy)
    assert np.abs(ref.forces).max() > 1.0  # a distorted molecule: the check is not trivial
    h = 0.01
    for atom, comp in [(0, 2), (1, 0)]:
        energies = []
        for sign in (+1, -1):
            moved = water_box.copy()
            moved.positions[atom, comp] += sign * h
            energies.append(cp2k.label(moved, workdir=tmp_path / f"f{atom}{comp}{sign}").energy)
        fd = -(energies[0] - energies[1]) / (2 * h)
        assert ref.forces[atom, comp] == pytest.approx(fd, abs=0.01)
    # Stress: sigma_xy = (1/V) dE/d(eps_xy) with a symmetric strain (ASE sign, tensile > 0).
    h_eps = 0.005
    energies = []
    for sign in (+1, -1):
        strain = np.eye(3)
        strain[0, 1] = strain[1, 0] = sign * h_eps / 2
        strained = water_box.copy()
        strained.set_cell(water_box.cell.array @ strain, scale_atoms=True)
        energies.append(cp2k.label(strained, workdir=tmp_path / f"s{sign}").energy)
    fd_stress = (energies[0] - energies[1]) / (2 * h_eps) / water_box.get_volume()
    assert ref.stress[5] == pytest.approx(fd_stress, abs=2e-5)
    assert abs(ref.stress[5]) > 1e-4


def test_non_periodic_molecule_has_no_stress(cp2k, tmp_path):
    # A small wavelet box (6 Å) keeps this run short; production default is 5 Å of vacuum.
    result = cp2k.with_settings(vacuum_A=2.0).label(molecule("H2O"), workdir=tmp_path)
    assert result.ok and result.stress is None
    text = (tmp_path / "ubmd.inp").read_text()
    assert "PERIODIC NONE" in text and "WAVELET" in text and "STRESS_TENSOR" not in text
    assert "ABC 6.0 6.0 6.0" in text
    atoms = result.to_atoms()
    assert atoms.get_potential_energy() == pytest.approx(result.energy)
    np.testing.assert_allclose(atoms.get_forces(), result.forces)
    # Symmetric molecule: no net force along the C2 axis beyond grid noise.
    assert abs(result.forces[:, 1].sum()) < 0.05


def test_overrides_reach_the_input(water_box, tmp_path):
    lab = CP2KLabeler(
        overrides={"FORCE_EVAL": {"DFT": {"SCF": {"MAX_SCF": 7}, "QS": {"EPS_DEFAULT": 1e-10}}}}
    )
    tree = lab.build_input(water_box)
    scf = tree["FORCE_EVAL"]["DFT"]["SCF"]
    assert scf["MAX_SCF"] == 7 and "OT" in scf
    assert tree["FORCE_EVAL"]["STRESS_TENSOR"] == "ANALYTICAL"
    assert tree["FORCE_EVAL"]["SUBSYS"]["KIND O"]["POTENTIAL"] == "GTH-PBE-q6"
    diag = lab.with_settings(scf_solver="diag", smearing_K=500.0).build_input(water_box)
    scf = diag["FORCE_EVAL"]["DFT"]["SCF"]
    assert "OT" not in scf and scf["SMEAR"]["ELECTRONIC_TEMPERATURE"] == 500.0
    assert scf["ADDED_MOS"] >= 4


def test_launcher_and_command_form_the_argv():
    lab = CP2KLabeler(launcher="mpirun -np 2 --allow-run-as-root", command="cp2k.psmp")
    assert lab.argv() == [
        "mpirun",
        "-np",
        "2",
        "--allow-run-as-root",
        "cp2k.psmp",
        "-i",
        "ubmd.inp",
    ]


def test_settings_hash_is_stable_and_sensitive():
    a, b = CP2KLabeler(cutoff_Ry=300), CP2KLabeler(cutoff_Ry=300)
    assert a.settings_hash() == b.settings_hash() and len(a.settings_hash()) == 64
    assert CP2KLabeler(cutoff_Ry=301).settings_hash() != a.settings_hash()
    with pytest.raises(ValueError, match="cutof_Ry"):
        CP2KLabeler(cutof_Ry=300)  # typo: unknown keys are rejected


# --- bad input: clear errors before anything runs -------------------------------------------
def _nothing_ran(tmp_path):
    return not any(tmp_path.iterdir())


def test_missing_executable(water_box, tmp_path):
    lab = CP2KLabeler(command="cp2k.does-not-exist")
    with pytest.raises(LabelerSetupError, match="cp2k.does-not-exist.*not found"):
        lab.label(water_box, workdir=tmp_path / "w")
    assert _nothing_ran(tmp_path)
    with pytest.raises(LabelerSetupError, match="no-such-mpirun"):
        CP2KLabeler(launcher="no-such-mpirun -np 2").check(water_box)


def test_missing_basis_or_potential_file(water_box, tmp_path):
    needs("cp2k.psmp")
    with pytest.raises(LabelerSetupError, match="basis file .*NO_SUCH_BASIS does not exist"):
        CP2KLabeler(basis_file="NO_SUCH_BASIS").label(water_box, workdir=tmp_path / "w")
    with pytest.raises(LabelerSetupError, match="potential file"):
        CP2KLabeler(potential_file=str(tmp_path / "GTH_NONE")).check(water_box)
    assert _nothing_ran(tmp_path)


def test_element_without_basis_or_potential(tmp_path):
    needs("cp2k.psmp")
    gd = bulk("Gd", "hcp", a=3.6, c=5.8)  # no DZVP-MOLOPT-SR-GTH for Gd in BASIS_MOLOPT
    with pytest.raises(LabelerSetupError, match="no basis set 'DZVP-MOLOPT-SR-GTH' for element Gd"):
        CP2KLabeler().label(gd, workdir=tmp_path / "w")
    with pytest.raises(LabelerSetupError, match="odd number of electrons.*multiplicity"):
        CP2KLabeler().check(bulk("Au", "fcc", a=4.08))  # 11 valence electrons, closed shell
    with pytest.raises(
        LabelerSetupError, match="no GTH-NOPE potential with 6 valence electrons for element O"
    ):
        CP2KLabeler(potential_family="GTH-NOPE").check(molecule("H2O"))
    water = molecule("H2O")
    water.pbc = [True, True, False]
    water.cell = [5, 5, 5]
    with pytest.raises(LabelerSetupError, match="pbc"):
        CP2KLabeler().check(water)
    assert _nothing_ran(tmp_path)


def test_real_scf_failure_is_detected_and_retried(cp2k, water_ref, tmp_path):
    from ubmd.labelers.retry import RetryPolicy, label_with_retries

    # 3 OT steps cannot converge; the ladder: 6 steps, then diagonalization, then smearing.
    water_box, ref = water_ref
    starved = cp2k.with_settings(max_scf=3, outer_max_scf=1)
    policy = RetryPolicy(max_attempts=4)
    result = label_with_retries(starved, water_box, workdir=tmp_path / "r", policy=policy)
    assert result.ok and result.attempts == 4
    assert [h["reason"] for h in result.extra["history"]] == ["scf_not_converged"] * 3
    out1 = (tmp_path / "r" / "attempt_1" / "cp2k.out").read_text()
    assert "SCF run NOT converged" in out1  # CP2K 2023 still prints the same warning
    assert result.settings["scf_solver"] == "diag" and result.settings["smearing_K"] > 0
    # An insulator: 300 K smearing leaves the label unchanged (same physics, other solver).
    assert result.energy == pytest.approx(ref.energy, abs=1e-5)
    np.testing.assert_allclose(result.forces, ref.forces, atol=1e-3)
