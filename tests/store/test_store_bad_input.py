"""Bad input gives a clear error and leaves the store unchanged (arrays and file bytes)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from store_helpers import batch_arrays, labeled_atoms

from ubmd import keys
from ubmd.store import Provenance, StoreFormatError, StructureStore
from ubmd.store.validate import validate


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "s.h5"
    with StructureStore.create(path) as st:
        st.append(labeled_atoms(5))
    return path


def _atoms(**results) -> Atoms:
    a = Atoms("H2O", positions=[[0, 0, 0], [1, 0, 0], [0, 1, 0]])
    if results:
        a.calc = SinglePointCalculator(a, **results)
    return a


F = np.ones((3, 3))
BAD_ATOMS = [
    ("no energy", [_atoms(forces=F)], "no finite energy"),
    ("no calculator", [_atoms()], "no finite energy"),
    ("NaN energy", [_atoms(energy=np.nan, forces=F)], "no finite energy"),
    (
        "NaN forces",
        [_atoms(energy=1.0, forces=np.where(np.eye(3) > 0, np.nan, 1.0))],
        "NaN/inf forces",
    ),
    ("no forces", [_atoms(energy=1.0)], "forces"),
    ("forces shape", [_atoms(energy=1.0, forces=np.ones((2, 3)))], r"shape \(2, 3\)"),
    ("stress shape", [_atoms(energy=1.0, forces=F, stress=np.ones(4))], "stress has shape"),
    ("NaN stress", [_atoms(energy=1.0, forces=F, stress=[1, 2, 3, np.nan, 0, 0])], "stress"),
    # the good structure first: all-or-nothing means it must not be stored either
    ("one bad in batch", [*labeled_atoms(2, seed=7), _atoms(forces=F)], "structures 2 "),
]


@pytest.mark.parametrize(
    ("atoms", "match"), [b[1:] for b in BAD_ATOMS], ids=[b[0] for b in BAD_ATOMS]
)
def test_bad_atoms_rejected_store_unchanged(store_path: Path, atoms, match: str) -> None:
    before = _digest(store_path)
    with StructureStore.open(store_path, mode="a") as st:
        ref = st.read_arrays()
        with pytest.raises(ValueError, match=match):
            st.append(atoms)
        assert len(st) == 5
        np.testing.assert_array_equal(st.read_arrays()[keys.POSITIONS], ref[keys.POSITIONS])
        st.append(labeled_atoms(1, seed=11))  # the store is still usable
        assert len(st) == 6
    assert validate(store_path) == []
    assert before != _digest(store_path)  # (sanity: the digest does see real changes)


def _arrays(**changes):
    arr = batch_arrays(3)
    arr.update(changes)
    return arr


A = int(batch_arrays(3)[keys.N_ATOMS].sum())
S = len(batch_arrays(3)[keys.N_ATOMS])
BAD_ARRAYS = [
    ("positions vs n_atoms", _arrays(positions=np.zeros((A + 1, 3))), "positions has shape"),
    ("energy length", _arrays(energy=np.zeros(S + 1)), "energy has shape"),
    ("cell shape", _arrays(cell=np.zeros((S, 9))), "cell has shape"),
    ("missing numbers", {k: v for k, v in batch_arrays(3).items() if k != keys.NUMBERS}, "needs"),
    ("bad Z", _arrays(numbers=np.full(A, 200)), "0..118"),
    ("zero atoms", _arrays(n_atoms=np.zeros(S, int)), "at least one atom"),
    ("NaN positions", _arrays(positions=np.full((A, 3), np.nan)), "positions contains NaN"),
    ("unknown status", _arrays(status=np.array(["done"] * S)), "unknown status 'done'"),
    ("float iteration", _arrays(iteration=np.full(S, 1.5)), "integers"),
    ("iteration overflow", _arrays(iteration=np.full(S, 2**31)), "outside the stored int32"),
]


@pytest.mark.parametrize(
    ("arrays", "match"), [b[1:] for b in BAD_ARRAYS], ids=[b[0] for b in BAD_ARRAYS]
)
def test_bad_arrays_rejected_file_bytes_unchanged(store_path: Path, arrays, match: str) -> None:
    st = StructureStore.open(store_path, mode="a")
    before = _digest(store_path)  # after opening: the open itself may touch the superblock
    with pytest.raises(ValueError, match=match):
        st.append_arrays(arrays)
    assert _digest(store_path) == before
    st.close()
    with StructureStore.open(store_path) as st:
        assert len(st) == 5


def test_bad_provenance_count(store_path: Path) -> None:
    with StructureStore.open(store_path, mode="a") as st:
        with pytest.raises(ValueError, match="2 provenance records for 3 structures"):
            st.append(labeled_atoms(3, seed=4), [Provenance(), Provenance()])
        assert len(st) == 5


def test_not_hdf5_and_not_a_store(tmp_path: Path) -> None:
    junk = tmp_path / "junk.h5"
    junk.write_text("energy=1.0\n")
    for mode in ("r", "a"):
        with pytest.raises(StoreFormatError, match="not an HDF5 file"):
            StructureStore.open(junk, mode=mode)
    assert junk.read_text() == "energy=1.0\n"
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.arange(3)
    before = _digest(other)
    for mode in ("r", "a"):
        with pytest.raises(StoreFormatError, match="not a ubmd structure store"):
            StructureStore.open(other, mode=mode)
    assert _digest(other) == before
    assert "not an HDF5 file" in validate(junk)[0]


def test_newer_schema_refused_naming_both_versions(store_path: Path) -> None:
    with h5py.File(store_path, "r+") as f:
        f.attrs["schema_version"] = 7
    before = _digest(store_path)
    for mode in ("r", "a"):
        with pytest.raises(StoreFormatError, match=r"schema version 7.*schema version 1"):
            StructureStore.open(store_path, mode=mode)
    assert _digest(store_path) == before


def test_read_only_store_refuses_writing_but_reads(store_path: Path) -> None:
    before = _digest(store_path)
    os.chmod(store_path, 0o444)
    try:
        with pytest.raises(PermissionError, match="read-only"):
            StructureStore.open(store_path, mode="a")
        with StructureStore.open(store_path) as st:
            assert len(st) == 5
    finally:
        os.chmod(store_path, 0o644)
    assert _digest(store_path) == before


def test_unwritable_location(tmp_path: Path) -> None:
    # /proc accepts no new files, even for root (chmod-based tests do not stop root).
    with pytest.raises(PermissionError, match="writable directory"):
        StructureStore.create("/proc/ubmd-test-store.h5")
    assert not os.path.exists("/proc/ubmd-test-store.h5")


def test_bad_provenance_in_atoms_info(store_path: Path) -> None:
    (atoms,) = labeled_atoms(1, seed=13)
    atoms.info["iteration"] = "first"
    with StructureStore.open(store_path, mode="a") as st:
        with pytest.raises(ValueError, match="'iteration' has value 'first'.*an integer"):
            st.append([atoms])
        with pytest.raises(TypeError, match="expected Provenance"):
            st.append([atoms], [{"iteration": 1}])
        assert len(st) == 5
