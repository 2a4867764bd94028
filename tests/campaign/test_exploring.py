"""Where a campaign's explorers start: the systems' structures and, with ``start_from: store``,
the previous iteration's labels that training would also use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator

from ubmd.campaign.config import parse_campaign
from ubmd.campaign.exploring import store_starts, write_starts
from ubmd.campaign.frames import read_frames
from ubmd.store import StructureStore


def _store(path: Path) -> Path:
    """Water labels: iteration 1 at 0.0, 0.1, 0.6 eV/atom above the lowest, iteration 2 at 0.05
    and 0.9 (the lowest label is iteration 0's)."""
    rng = np.random.default_rng(0)
    frames = []
    for iteration, above in ((0, 0.0), (1, 0.0), (1, 0.1), (1, 0.6), (2, 0.05), (2, 0.9)):
        atoms = molecule("H2O")
        atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)
        atoms.calc = SinglePointCalculator(
            atoms, energy=(-5.0 + above) * len(atoms), forces=np.zeros((3, 3))
        )
        atoms.info["iteration"] = iteration
        frames.append(atoms)
    molecule("H2O").write(path / "w.xyz")
    with StructureStore.create(path / "store.h5") as store:
        store.append(frames)
    return path / "store.h5"


def _config(tmp_path: Path, limit: float | None, start_limit: float | None = None):
    data = {
        "name": "t",
        "directory": "run",
        "systems": [{"name": "w", "structure": "w.xyz"}],
        "exploration": {"start_from": "store", "start_max_energy_above_min_eV_atom": start_limit},
        "model": {"max_energy_above_min_eV_atom": limit},
    }
    return parse_campaign(data, base_dir=tmp_path)


def test_store_starts_are_the_last_iterations_labels_training_keeps(tmp_path: Path):
    store_path = _store(tmp_path)
    with StructureStore.open(store_path, mode="r") as store:
        assert list(store_starts(_config(tmp_path, None), store, 2)) == [1, 2, 3]
        assert list(store_starts(_config(tmp_path, 0.5), store, 2)) == [1, 2]  # not 0.6
        assert list(store_starts(_config(tmp_path, 0.5), store, 3)) == [4]  # not 0.9
        assert list(store_starts(_config(tmp_path, 0.5), store, 4)) == []
        # a start limit of its own, tighter or looser than training's
        assert list(store_starts(_config(tmp_path, 0.5, 0.08), store, 2)) == [1]  # not 0.1
        assert list(store_starts(_config(tmp_path, None, 0.08), store, 3)) == [4]  # 0.05
        assert list(store_starts(_config(tmp_path, 0.5, 0.7), store, 2)) == [1, 2, 3]


def test_a_start_limit_must_be_positive(tmp_path: Path):
    import pytest

    from ubmd.strict import ConfigError

    with pytest.raises(ConfigError, match="start_max_energy_above_min_eV_atom"):
        _config(tmp_path, None, 0.0)


def test_write_starts_puts_the_system_first_then_the_store_starts(tmp_path: Path):
    store_path = _store(tmp_path)
    out = tmp_path / "starts.extxyz"
    with StructureStore.open(store_path, mode="r") as store:
        write_starts(_config(tmp_path, 0.5), store, 2, out)
        starts = read_frames(out)
        expected = [a.positions.tobytes() for a in store.read_atoms(indices=[1, 2])]
        write_starts(_config(tmp_path, 0.5), store, 1, out)  # iteration 1: the system only
        assert len(read_frames(out)) == 1
    assert len(starts) == 3
    assert [a.positions.tobytes() for a in starts[1:]] == expected
