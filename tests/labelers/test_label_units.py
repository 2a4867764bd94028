"""Units agree across labelers.

(1) For every labeler, the energy change under a small displacement of all atoms along its force
direction d matches -F·d (central difference), so energies and forces are in one unit system
(eV, eV/Å).  (2) Different codes on the same distorted structure give forces that point the same
way with similar magnitudes (a Ha/bohr or kJ/mol/nm slip would be off by 51x or 96x / 10x):
CP2K vs GFN2-xTB on water, GFN2-xTB vs Amber on alanine dipeptide.
"""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from label_helpers import ALA2, needs

from ubmd.labelers import make_labeler
from ubmd.labelers.amber import load_amber_structure

# DZVP (the default basis) at a low cutoff: SZV water is too far from xTB's to compare forces.
CP2K_CHEAP = {"cutoff_Ry": 200.0, "rel_cutoff_Ry": 40.0, "eps_scf": 1e-8}


def directional_check(labeler, atoms, tmp_path, h):
    """(E(x + h d) - E(x - h d)) / 2h and -F·d along d = F/|F| (the steepest direction)."""
    ref = labeler.label(atoms, workdir=tmp_path / "0")
    d = ref.forces / np.linalg.norm(ref.forces)
    e = []
    for sign in (+1, -1):
        moved = atoms.copy()
        moved.positions += sign * h * d
        e.append(labeler.label(moved, workdir=tmp_path / str(sign)).energy)
    return (e[0] - e[1]) / (2 * h), -float(np.sum(ref.forces * d)), ref


def similar(f1, f2):
    cos = float(np.sum(f1 * f2) / (np.linalg.norm(f1) * np.linalg.norm(f2)))
    return cos, float(np.linalg.norm(f1) / np.linalg.norm(f2))


def test_water_cp2k_xtb_emt(tmp_path):
    needs("cp2k.psmp")
    # One O-H stretched to 1.12 Å, the other at 0.87 Å and bent: bond stretching dominates.
    water = Atoms(
        "OH2", positions=[[0, 0, 0], [1.12, 0, 0], [-0.25, 0.84, 0]], cell=[4.5] * 3, pbc=True
    )
    water.center()
    results = {}
    # Relative tolerance: the O(h^2) term along the steepest direction (CP2K: h = 0.01 Å, large
    # curvature) stays below 0.5 %; the analytic codes with h = 1e-3 Å agree to 1e-4.
    for name, settings, h, rel in [
        ("cp2k", CP2K_CHEAP, 0.01, 5e-3),
        ("xtb", {}, 1e-3, 1e-4),
        ("emt", {"allow_fun_elements": True}, 1e-3, 1e-4),
    ]:
        lab = make_labeler(name, **settings)
        de, minus_f_d, ref = directional_check(lab, water, tmp_path / name, h)
        assert de == pytest.approx(minus_f_d, rel=rel), name
        assert abs(minus_f_d) > 0.1, name  # a non-trivial slope
        results[name] = ref
    cos, ratio = similar(results["cp2k"].forces, results["xtb"].forces)
    assert cos > 0.99 and 0.8 < ratio < 1.5, (cos, ratio)
    # Both periodic: stresses have the same unit (eV/Å^3) and order of magnitude.
    s_cp2k, s_xtb = results["cp2k"].stress, results["xtb"].stress
    assert s_cp2k is not None and s_xtb is not None
    assert 0.1 < np.linalg.norm(s_cp2k[:3]) / np.linalg.norm(s_xtb[:3]) < 10


def test_alanine_dipeptide_xtb_amber(tmp_path):
    atoms = load_amber_structure(ALA2 / "alanine-dipeptide.prmtop", ALA2 / "alanine-dipeptide.crd")
    atoms.rattle(0.05, seed=3)  # bond stretching dominates: both force fields must agree on it
    refs = {}
    for name, settings in [
        ("xtb", {}),
        ("amber", {"prmtop": str(ALA2 / "alanine-dipeptide.prmtop")}),
    ]:
        lab = make_labeler(name, **settings)
        de, minus_f_d, ref = directional_check(lab, atoms, tmp_path / name, 1e-3)
        assert de == pytest.approx(minus_f_d, rel=1e-4), name
        refs[name] = ref
    cos, ratio = similar(refs["xtb"].forces, refs["amber"].forces)
    assert cos > 0.8 and 0.5 < ratio < 2.0, (cos, ratio)
