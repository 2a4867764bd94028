"""Retry policy: settings change between attempts; after the last try a failed record remains."""

from __future__ import annotations

import pytest
from label_helpers import H2O32_OUT, make_script

from ubmd.keys import STATUS_FAILED, STATUS_OK
from ubmd.labelers.cp2k import CP2KLabeler
from ubmd.labelers.errors import LabelerSetupError, SCFNotConverged
from ubmd.labelers.retry import RetryPolicy, label_with_retries
from ubmd.labelers.vasp import VaspLabeler

# Converges only with diagonalization (what the third CP2K attempt switches to).
PICKY = f"""if grep -q DIAGONALIZATION ubmd.inp; then cat "{H2O32_OUT}"; else
echo " *** WARNING in qs_scf.F:542 :: SCF run NOT converged ***"; cat "{H2O32_OUT}"; fi
"""


@pytest.fixture
def picky_cp2k(tmp_path) -> CP2KLabeler:
    return CP2KLabeler(command=str(make_script(tmp_path / "picky.sh", PICKY)))


def test_settings_change_until_the_run_converges(picky_cp2k, h2o32_atoms, tmp_path):
    result = label_with_retries(
        picky_cp2k, h2o32_atoms, workdir=tmp_path / "w", policy=RetryPolicy(max_attempts=4)
    )
    assert result.status == STATUS_OK and result.attempts == 3
    history = result.extra["history"]
    assert [h["reason"] for h in history] == ["scf_not_converged"] * 2
    assert len({h["settings_hash"] for h in history} | {result.settings_hash}) == 3
    assert result.settings["scf_solver"] == "diag" and result.settings["max_scf"] == 100
    assert result.settings["mixing_alpha"] == pytest.approx(0.2)
    assert result.extra["base_settings_hash"] == picky_cp2k.settings_hash() != result.settings_hash
    for n in (1, 2, 3):  # each attempt in its own directory, logs kept
        assert (tmp_path / "w" / f"attempt_{n}" / "cp2k.out").is_file()
    assert "&OT" in (tmp_path / "w" / "attempt_1" / "ubmd.inp").read_text()
    assert "MAX_SCF 100" in (tmp_path / "w" / "attempt_2" / "ubmd.inp").read_text()
    assert "&DIAGONALIZATION" in (tmp_path / "w" / "attempt_3" / "ubmd.inp").read_text()


def test_failed_after_last_try_is_recorded_not_raised(picky_cp2k, h2o32_atoms, tmp_path):
    result = label_with_retries(
        picky_cp2k, h2o32_atoms, workdir=tmp_path / "w", policy=RetryPolicy(max_attempts=2)
    )
    assert result.status == STATUS_FAILED and not result.ok
    assert result.reason.startswith("scf_not_converged:") and "after 2 attempts" in result.reason
    assert result.attempts == 2 and result.energy is None and result.forces is None
    atoms = result.to_atoms()
    assert atoms.calc is None and len(atoms) == 96


def test_same_settings_when_not_changing(picky_cp2k, h2o32_atoms, tmp_path):
    policy = RetryPolicy(max_attempts=3, change_settings=False)
    result = label_with_retries(picky_cp2k, h2o32_atoms, workdir=tmp_path / "w", policy=policy)
    assert result.status == STATUS_FAILED and result.attempts == 3
    assert len({h["settings_hash"] for h in result.extra["history"]}) == 1


def test_absurd_forces_are_not_retried_by_default(h2o32_atoms, tmp_path):
    lab = CP2KLabeler(command=str(make_script(tmp_path / "ok.sh", f'cat "{H2O32_OUT}"\n')))
    lab = lab.with_settings(max_force_eV_A=0.1)
    result = label_with_retries(lab, h2o32_atoms, workdir=tmp_path / "w")
    assert result.status == STATUS_FAILED and result.attempts == 1
    assert result.reason.startswith("absurd_forces:")


def test_setup_errors_still_raise_before_anything_runs(h2o32_atoms, tmp_path):
    lab = CP2KLabeler(command="no-such-cp2k")
    with pytest.raises(LabelerSetupError):
        label_with_retries(lab, h2o32_atoms, workdir=tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_policy_rejects_bad_values():
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="unknown failure reasons"):
        RetryPolicy(retry_on=("scf_not_convergd",))


def test_cp2k_retry_ladder_and_vasp_algo_ladder():
    err = SCFNotConverged("x")
    lab = CP2KLabeler(max_scf=40, mixing_alpha=0.4)
    second = lab.retry_variant(2, err)
    third = second.retry_variant(3, err)
    fourth = third.retry_variant(4, err)
    assert (second.settings.max_scf, second.settings.mixing_alpha) == (80, 0.2)
    assert third.settings.scf_solver == "diag"
    assert fourth.settings.smearing_K > 0 and fourth.settings.mixing_alpha <= 0.1
    vasp = VaspLabeler(incar={"NELM": 60})
    v2 = vasp.retry_variant(2, err)
    v3 = v2.retry_variant(3, err)
    assert vasp.incar()["ALGO"] == "Normal"
    assert v2.incar()["ALGO"] == "All" and v2.incar()["NELM"] == 120
    assert v3.incar()["ALGO"] == "Damped" and v3.incar()["AMIX"] < 0.4 and "BMIX" in v3.incar()
