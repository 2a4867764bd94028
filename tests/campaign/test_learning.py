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


def _energies(arrays) -> set[float]:
    return set(np.round(arrays["energy"], 9).tolist())


def test_calibration_set_is_redrawn_every_iteration_and_reproducible(tmp_path: Path):
    frames = _frames("H2O", [-5.0 + 0.001 * k for k in range(40)], 3)
    store_path = tmp_path / "store.h5"
    with StructureStore.create(store_path) as store:
        store.append(frames)  # iteration 0
    base = {"name": "t", "directory": "run", "systems": [{"name": "w", "structure": "w.xyz"}]}
    config = parse_campaign(
        {**base, "uncertainty": {"calibration": {"fraction": 0.25}}}, base_dir=tmp_path
    )
    cals = []
    for iteration in (1, 2, 3):
        train, cal = training_split(config, str(store_path), iteration)
        assert len(cal["n_atoms"]) == 10 and len(train["n_atoms"]) == 30
        assert not _energies(train) & _energies(cal)  # disjoint
        assert len(_energies(train) | _energies(cal)) == 40  # and together every label
        cals.append(_energies(cal))
        # the same iteration draws the same split (a resumed campaign calibrates identically)
        assert _energies(training_split(config, str(store_path), iteration)[1]) == cals[-1]
    assert cals[0] != cals[1] != cals[2]


def test_calibration_split_does_not_depend_on_the_order_labels_arrived(tmp_path: Path):
    frames = _frames("H2O", [-5.0 + 0.001 * k for k in range(30)], 4)
    base = {"name": "t", "directory": "run", "systems": [{"name": "w", "structure": "w.xyz"}]}
    config = parse_campaign(base, base_dir=tmp_path)
    splits = []
    for order, name in ((frames, "a.h5"), (frames[::-1], "b.h5")):
        with StructureStore.create(tmp_path / name) as store:
            store.append(order)
        splits.append(_energies(training_split(config, str(tmp_path / name), 1)[1]))
    assert splits[0] == splits[1] and len(splits[0]) == 3
