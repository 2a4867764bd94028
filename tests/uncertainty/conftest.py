"""Fixtures for the uncertainty tests (one thread: other suites share the machine)."""

from __future__ import annotations

import pytest
import torch
from ase import Atoms
from ase.build import molecule
from unc_toy import ToyPotential, jiggle


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def toy() -> ToyPotential:
    return ToyPotential()


@pytest.fixture(scope="session")
def train_frames() -> list[Atoms]:
    return jiggle(molecule("CH3CH2OH"), 12, 0.08, 1) + jiggle(molecule("H2O"), 4, 0.05, 2)
