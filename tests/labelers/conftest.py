"""Fixtures of the labeler tests: small structures."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from label_helpers import CP2K_DATA


@pytest.fixture(autouse=True)
def _few_threads(monkeypatch):
    # Other suites share the machine; CP2K and tblite honour OMP_NUM_THREADS.
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))


@pytest.fixture
def water_box() -> Atoms:
    """One distorted H2O in a 4.5 Å periodic box (a CP2K single point in ~1.5 s)."""
    atoms = molecule("H2O")
    atoms.cell = [4.5, 4.5, 4.5]
    atoms.pbc = True
    atoms.center()
    atoms.rattle(0.05, seed=1)
    return atoms


@pytest.fixture
def h2o32_atoms() -> Atoms:
    """96 atoms with the element order of the real CP2K 8.1 output (positions irrelevant)."""
    answer = json.loads((CP2K_DATA / "h2o32_energy_force_cp2k8.1.cp2kdata_answer.json").read_text())
    symbols = answer["chemical_symbols"]
    rng = np.random.default_rng(0)
    return Atoms(
        symbols, positions=rng.uniform(0, 9.85, (len(symbols), 3)), cell=[9.8528] * 3, pbc=True
    )
