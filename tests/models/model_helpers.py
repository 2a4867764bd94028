"""Helpers for the model tests: small float64 models and test structures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.build import bulk

ALA2 = Path(__file__).resolve().parents[2] / "data" / "ala2" / "ala2_xtb_300K.extxyz"


def rattled_molecule(seed: int = 0) -> Atoms:
    from ase.build import molecule

    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=seed)
    return atoms


def rattled_crystal(seed: int = 0) -> Atoms:
    """A small triclinic periodic cell with two species (strained rocksalt-like)."""
    atoms = bulk("NaCl", "rocksalt", a=4.0) * (2, 1, 1)
    atoms.set_cell(
        atoms.cell.array
        @ (np.eye(3) + np.array([[0.02, 0.03, 0], [0, -0.01, 0.02], [0, 0, 0.03]])),
        scale_atoms=True,
    )
    atoms.rattle(0.1, seed=seed)
    return atoms


def make_painn(species, **kw):
    from ubmd.models.builtin import PaiNN

    torch.manual_seed(0)
    kw.setdefault("cutoff", 3.5)
    kw.setdefault("n_features", 16)
    kw.setdefault("n_basis", 8)
    kw.setdefault("readout_hidden", 8)
    model = PaiNN(species, **kw).double()
    n = len(model.species)
    model.set_energy_stats(shift=-np.arange(1, n + 1, dtype=float), scale=0.7)
    return model


def emt_dataset(n: int = 6, seed: int = 0) -> list[Atoms]:
    """Small periodic Cu/Al cells labelled with EMT (energy, forces, stress)."""
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n):
        atoms = bulk("Cu", "fcc", a=3.6 + 0.05 * rng.standard_normal(), cubic=True)
        atoms.numbers[rng.integers(0, 4)] = 13
        atoms.rattle(0.08, seed=seed * 1000 + k)
        atoms.calc = EMT()
        e, f, s = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
        atoms.calc = SinglePointCalculator(atoms, energy=e, forces=f, stress=s)
        frames.append(atoms)
    return frames


TINY = {"cutoff": 3.0, "n_features": 8, "n_basis": 6, "readout_hidden": 8}


def tiny_config(**kw):
    """A TrainConfig for fast float64 training tests (overrides in ``kw``)."""
    from ubmd.models import TrainConfig

    base = dict(
        model_options=TINY, max_epochs=3, batch_size=2, dtype="float64", device="cpu",
        valid_fraction=0.34, seed=7,
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


class Killed(Exception):
    """Raised from a training log callback: a run killed after an epoch's checkpoint."""


def kill_at_epoch(epoch: int):
    """A training ``log`` callback that kills the run when ``epoch`` is logged."""

    def log(record):
        if record["epoch"] == epoch:
            raise Killed

    return log
