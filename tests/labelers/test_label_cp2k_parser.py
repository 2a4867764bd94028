"""CP2K output parser on real outputs (values from tests/data/cp2k, see shared MANIFEST)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from ase import units
from label_helpers import ALCO_OUT, FE2O3_OUT, H2O32_OUT, SI2_NOFORCES_OUT

from ubmd.labelers.cp2k_input import merge, render
from ubmd.labelers.cp2k_output import parse_cp2k_output, read_cp2k_output


def test_h2o32_cp2k81_energy_forces_new_style_stress():
    out = read_cp2k_output(H2O32_OUT)
    assert out.ended_normally and out.scf_converged
    assert out.version == "CP2K version 8.1"
    assert out.energy_Ha == pytest.approx(-551.571385283613040, abs=1e-12)
    assert out.forces_Ha_bohr.shape == (96, 3)
    np.testing.assert_allclose(out.forces_Ha_bohr[0], [-0.01347041, -0.01037292, -0.02430793])
    assert np.abs(out.forces_Ha_bohr).max() == pytest.approx(0.03662908)
    np.testing.assert_allclose(
        np.diag(out.stress_GPa), [4.56425492045, 5.15232104676, 4.14494524664]
    )
    # ASE sign: CP2K prints a pressure-like tensor (positive = compressive).
    s = out.stress_ase
    assert s[0] == pytest.approx(-4.56425492045 * units.GPa)
    assert s[5] == pytest.approx(+0.416336884582 * units.GPa)  # xy = -(-0.416...)
    assert s[3] == pytest.approx(-0.519186585705 * units.GPa)  # yz


def test_h2o32_forces_match_cp2kdata_reference_energy():
    import json

    answer = json.loads(
        H2O32_OUT.with_name("h2o32_energy_force_cp2k8.1.cp2kdata_answer.json").read_text()
    )
    out = read_cp2k_output(H2O32_OUT)
    assert out.energy_Ha == pytest.approx(answer["pot_energy"][0], abs=1e-12)
    # pymatgen (CODATA 2018) gives -15009.02200718 eV; ase.units (CODATA 2014) agrees to 1e-7.
    assert out.energy_eV == pytest.approx(-15009.02200718, rel=1e-7)


def test_fe2o3_cp2k61_old_style_stress_block():
    out = read_cp2k_output(FE2O3_OUT)
    assert out.ended_normally and out.scf_converged
    assert out.energy_Ha == pytest.approx(-1766.225653832774242, abs=1e-12)
    assert out.forces_Ha_bohr.shape == (30, 3)
    np.testing.assert_allclose(out.forces_Ha_bohr[0], [0.00021561, 0.00034116, 0.00317438])
    assert np.abs(out.forces_Ha_bohr).max() == pytest.approx(0.01425438)
    np.testing.assert_allclose(np.diag(out.stress_GPa), [-7.95728223, -8.05678106, -8.18444753])
    assert out.stress_GPa[0, 1] == pytest.approx(-0.07686533)
    assert np.allclose(out.stress_GPa, out.stress_GPa.T)


def test_real_failed_scf_output_is_reported_not_converged():
    out = read_cp2k_output(ALCO_OUT)
    # It still printed energy, forces, stress and ended normally: only the warning tells.
    assert not out.scf_converged
    assert out.ended_normally
    assert out.energy_Ha == pytest.approx(-7732.736668957969, abs=1e-9)
    assert out.forces_Ha_bohr.shape == (302, 3)
    np.testing.assert_allclose(out.forces_Ha_bohr[0], [-0.00253224, -0.01729949, 0.00469761])
    np.testing.assert_allclose(np.diag(out.stress_GPa), [1.50089, 2.54396, 2.31374], atol=1e-5)


def test_real_failed_scf_without_forces():
    out = read_cp2k_output(SI2_NOFORCES_OUT)
    assert not out.scf_converged and out.ended_normally
    assert out.energy_Ha == pytest.approx(-7.09633653594444, abs=1e-12)
    assert out.energy_eV == pytest.approx(-193.10115441, rel=1e-7)
    assert out.forces_Ha_bohr is None and out.stress_GPa is None


@pytest.mark.parametrize("fraction", [0.2, 0.72, 0.75, 0.9])
def test_truncated_output_is_detected(fraction):
    text = H2O32_OUT.read_text()
    out = parse_cp2k_output(text[: int(len(text) * fraction)])
    assert not out.ended_normally
    if out.forces_Ha_bohr is not None:  # a cut inside the force block never gives partial forces
        assert out.forces_Ha_bohr.shape == (96, 3)


def test_cut_inside_force_block_gives_no_forces():
    text = H2O32_OUT.read_text()
    start = text.index("ATOMIC FORCES in [a.u.]")
    out = parse_cp2k_output(text[: start + 2000])
    assert out.forces_Ha_bohr is None and out.energy_Ha is not None


def test_cp2k_conversion_factors_agree_with_ase_units():
    # CP2K 8.1 prints its CODATA-2006 factors; we use ase.units (CODATA 2014): < 1e-7 relative.
    text = H2O32_OUT.read_text()
    ha_ev = float(re.search(r"\[a\.u\.\] -> \[eV\]\s+(\S+)", text).group(1))
    bohr_a = float(re.search(r"\[a\.u\.\] = \[Bohr\] -> \[Angstrom\]\s+(\S+)", text).group(1))
    assert ha_ev == pytest.approx(units.Hartree, rel=1e-7)
    assert bohr_a == pytest.approx(units.Bohr, rel=1e-7)
    assert ha_ev / bohr_a == pytest.approx(units.Hartree / units.Bohr, rel=1e-7)


def test_input_render_and_merge():
    tree = {
        "GLOBAL": {"PROJECT": "x", "RUN_TYPE": "ENERGY_FORCE"},
        "FORCE_EVAL": {
            "DFT": {"SCF": {"MAX_SCF": 50, "OT": {"MINIMIZER": "DIIS"}}, "UKS": False},
            "SUBSYS": {"KIND H": {"BASIS_SET": "DZVP"}, "COORD": {"_lines": ["H 0 0 0"]}},
            "PRINT": {"FORCES": {"_": "ON"}},
        },
    }
    merged = merge(tree, {"force_eval": {"DFT": {"SCF": {"max_scf": 99, "OT": None}}}})
    text = render(merged)
    assert "MAX_SCF 99" in text and "MAX_SCF 50" not in text
    assert "&OT" not in text
    assert "&KIND H\n" in text and "&FORCES ON\n" in text and "UKS .FALSE." in text
    assert "    H 0 0 0" in text
    assert text.count("&END") == text.count("&") - text.count("&END")
    assert tree["FORCE_EVAL"]["DFT"]["SCF"]["MAX_SCF"] == 50  # merge does not mutate
