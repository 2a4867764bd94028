"""Helpers of the labeler tests: paths of the real output files, fake executables."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
CP2K_DATA = DATA / "cp2k"
VASP_DATA = DATA / "vasp"
ALA2 = REPO / "data" / "ala2"
H2O32_OUT = CP2K_DATA / "h2o32_energy_force_cp2k8.1.out"
FE2O3_OUT = CP2K_DATA / "fe12o18_energy_force_stress_cp2k6.1.out"
ALCO_OUT = CP2K_DATA / "alcoho302_energy_force_scf_not_converged_cp2k7.1.out"
SI2_NOFORCES_OUT = CP2K_DATA / "si2_energy_force_scf_not_converged_noforces_cp2k7.1.out"


def make_script(path: Path, body: str) -> Path:
    """An executable /bin/sh script (a fake reference code)."""
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def needs(executable: str) -> None:
    """Skip only if a real binary is missing (CI has them)."""
    if shutil.which(executable) is None:
        pytest.skip(f"{executable} not installed")
