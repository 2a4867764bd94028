from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from unc_toy import ToyPotential


def jiggle(atoms: Atoms, n: int, amp: float, seed: int) -> list[Atoms]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = atoms.copy()
        a.positions += rng.normal(0.0, amp, a.positions.shape)
        out.append(a)
    return out


@pytest.fixture(scope="session")
def toy() -> ToyPotential:
    return ToyPotential()


@pytest.fixture(scope="session")
def train_frames() -> list[Atoms]:
    return jiggle(molecule("CH3CH2OH"), 12, 0.08, 1) + jiggle(molecule("H2O"), 4, 0.05, 2)


@pytest.fixture
def periodic_frame() -> Atoms:
    a = bulk("C", "diamond", a=3.57) * (1, 1, 1)
    a.positions += np.random.default_rng(3).normal(0.0, 0.05, a.positions.shape)
    return a
