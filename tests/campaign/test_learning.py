"""The campaign's training data: which labels train and calibrate a model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator

from ubmd.campaign.config import parse_campaign
from ubmd.campaign.learning import energy_above_minimum, training_split
from ubmd.models.data import labelled_arrays
from ubmd.store import StructureStore


def _frames(name: str, energies_per_atom: list[float], seed: int) -> list:
    rng = np.random.default_rng(seed)
    frames = []
    for e in energies_per_atom:
        atoms = molecule(name)
        atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)
        atoms.calc = SinglePointCalculator(
            atoms, energy=e * len(atoms), forces=rng.normal(size=(len(atoms), 3))
        )
        frames.append(atoms)
    return frames


def test_energy_above_minimum_is_per_composition():
    # water sits much lower per atom than methane: each is measured against its own kind
    frames = _frames("H2O", [-5.0, -4.9, -4.5], 0) + _frames("CH4", [-1.0, -0.2], 1)
    above = energy_above_minimum(labelled_arrays(frames))
    assert np.allclose(above, [0.0, 0.1, 0.5, 0.0, 0.8])


def test_far_off_labels_are_left_out_of_training_and_calibration(tmp_path: Path):
    frames = _frames("H2O", [-5.0 + 0.01 * k for k in range(20)] + [-4.0, -3.0], 2)
    store_path = tmp_path / "store.h5"
    with StructureStore.create(store_path) as store:
        store.append(frames)  # provenance defaults: iteration 0
    base = {"name": "t", "directory": "run", "systems": [{"name": "w", "structure": "w.xyz"}]}
    keep_all = parse_campaign(base, base_dir=tmp_path)
    limited = parse_campaign(
        {**base, "model": {"max_energy_above_min_eV_atom": 0.5}}, base_dir=tmp_path
    )
    for config, expected in ((keep_all, 22), (limited, 20)):
        train, cal = training_split(config, str(store_path), None)
        assert len(train["n_atoms"]) == expected and len(cal["n_atoms"]) == 0
        train, cal = training_split(config, str(store_path), 1)
        assert len(train["n_atoms"]) + len(cal["n_atoms"]) == expected
    assert energy_above_minimum(training_split(limited, str(store_path), None)[0]).max() < 0.5
