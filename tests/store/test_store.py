"""StructureStore: append/read round trips, filters, duplicates, provenance, metadata."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from store_helpers import VOLATILE, assert_same, batch_arrays, labeled_atoms

from ubmd import keys
from ubmd.store import STORE_INDEX, Provenance, StoreError, StructureStore
from ubmd.store.validate import validate


def test_atoms_round_trip_is_bitwise(tmp_path: Path) -> None:
    atoms = labeled_atoms(9)
    with StructureStore.create(tmp_path / "s.h5", campaign_config={"seed": 3}) as st:
        res = st.append(atoms)
        assert res.indices.tolist() == list(range(9)) and res.duplicates == []
        d = st.read_arrays()
        back = st.read_atoms()
    for a, b in zip(atoms, back, strict=True):
        assert a.positions.tobytes() == b.positions.tobytes()
        assert a.cell.array.tobytes() == b.cell.array.tobytes()
        assert (a.numbers == b.numbers).all() and (a.pbc == b.pbc).all()
        assert a.get_potential_energy() == b.get_potential_energy()
        assert a.get_forces().tobytes() == b.get_forces().tobytes()
        assert ("stress" in a.calc.results) == ("stress" in b.calc.results)
        if "stress" in a.calc.results:
            assert a.get_stress().tobytes() == b.get_stress().tobytes()
            assert a.calc.results["free_energy"] == b.calc.results["free_energy"]
        for key in ("iteration", "md_step", "temperature_K", "sampler", "labeler_hash"):
            assert a.info[key] == b.info[key]
        assert b.info["status"] == "ok" and b.info[STORE_INDEX] == a.info["explorer"]
    # store -> Atoms -> second store: identical arrays
    with StructureStore.create(tmp_path / "t.h5") as st2:
        st2.append(back)
        assert_same(d, st2.read_arrays())
    assert d[keys.BATCH].tolist() == np.repeat(np.arange(9), d[keys.N_ATOMS]).tolist()
    assert d[keys.HAS_STRESS].tolist() == [i % 3 == 2 for i in range(9)]
    assert np.isnan(d[keys.STRESS][~d[keys.HAS_STRESS]]).all()


def test_append_arrays_equals_append_atoms(tmp_path: Path) -> None:
    atoms = labeled_atoms(6, seed=5)
    with StructureStore.create(tmp_path / "a.h5") as st:
        st.append(atoms)
        via_atoms = st.read_arrays()
    flat = {k: v for k, v in via_atoms.items() if k not in VOLATILE and k != keys.BATCH}
    with StructureStore.create(tmp_path / "b.h5") as st:
        st.append_arrays(flat)
        assert_same(via_atoms, st.read_arrays())
    # 3x3 stress input gives the same Voigt numbers
    full = np.zeros((6, 3, 3))
    s = np.nan_to_num(flat[keys.STRESS])
    full[:, [0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]] = s
    full[:, [2, 2, 1], [1, 0, 0]] = s[:, 3:]
    flat3 = dict(flat, stress=full)
    with StructureStore.create(tmp_path / "c.h5") as st:
        st.append_arrays(flat3)
        out = st.read_arrays()
    np.testing.assert_array_equal(out[keys.STRESS][out[keys.HAS_STRESS]], s[flat[keys.HAS_STRESS]])


def test_filters_and_indices(tmp_path: Path) -> None:
    with StructureStore.create(tmp_path / "s.h5") as st:
        for b in range(4):
            st.append_arrays(batch_arrays(b), Provenance(sampler="md" if b % 2 else "biased_md"))
        st.append_arrays(
            dict(batch_arrays(99), status=np.array(["failed"] * len(batch_arrays(99)["n_atoms"]))),
            Provenance(reason="SCF not converged"),
        )
        allr = st.read_arrays()
        it = allr[keys.ITERATION]
        for kw, mask in (
            ({"iteration": 2}, it == 2),
            ({"iteration": [0, 3]}, np.isin(it, [0, 3])),
            ({"status": "failed"}, it == 99),
            ({"status": "ok", "sampler": "md"}, np.isin(it, [1, 3])),
            ({"labeler": "emt"}, allr[keys.LABELER] == "emt"),
            ({"labeler": "nobody"}, np.zeros(len(it), bool)),
        ):
            sub = st.read_arrays(**kw)
            assert sub[STORE_INDEX].tolist() == np.flatnonzero(mask).tolist(), kw
            atom_mask = np.repeat(mask, allr[keys.N_ATOMS])
            np.testing.assert_array_equal(sub[keys.POSITIONS], allr[keys.POSITIONS][atom_mask])
            assert (
                sub[keys.BATCH].tolist()
                == np.repeat(np.arange(mask.sum()), sub[keys.N_ATOMS]).tolist()
            )
        picked = st.read_arrays(indices=[5, -1, 0])
        n = len(st)
        assert picked[STORE_INDEX].tolist() == [5, n - 1, 0]
        atoms = st.read_atoms(indices=[5, -1, 0])
        np.testing.assert_array_equal(
            np.concatenate([a.positions for a in atoms]), picked[keys.POSITIONS]
        )
        assert np.isnan(st.read_arrays(status="failed")[keys.FORCES]).sum() == 0  # given forces
        with pytest.raises(IndexError):
            st.read_arrays(indices=[n])


def test_duplicates_detected_across_sessions_and_within_batch(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    atoms = labeled_atoms(4)
    with StructureStore.create(path) as st:
        res = st.append([atoms[0], atoms[1], atoms[0]])
        assert res.indices.tolist() == [0, 1] and res.duplicates == [(2, 0)]
    with StructureStore.open(path, mode="a") as st:
        twin = atoms[1].copy()  # same numbers/positions/cell, different label: a duplicate
        twin.calc = SinglePointCalculator(twin, energy=1.0, forces=np.zeros((len(twin), 3)))
        moved = atoms[2].copy()
        moved.calc = atoms[2].calc
        moved.positions[0, 0] = np.nextafter(moved.positions[0, 0], np.inf)  # 1 ulp away
        res = st.append([atoms[2], twin, moved, atoms[3], atoms[2]])
        assert res.indices.tolist() == [2, 3, 4]
        assert res.duplicates == [(1, 1), (4, 2)]
        assert len(st) == 5
    assert validate(path) == []


def test_failed_records_and_text_limits(tmp_path: Path) -> None:
    atoms = Atoms("H2O", positions=np.eye(3))
    with StructureStore.create(tmp_path / "s.h5") as st:
        long_reason = "é" * 300
        st.append([atoms], Provenance(status="failed", reason=long_reason, labeler="cp2k"))
        d = st.read_arrays()
        assert np.isnan(d[keys.ENERGY]).all() and np.isnan(d[keys.FORCES]).all()
        reason = str(d[keys.REASON][0])
        assert reason.endswith("…") and len(reason.encode()) <= 256
        assert long_reason.startswith(reason[:-1])
        assert st.read_atoms()[0].calc is None
        with pytest.raises(ValueError, match="limited to 64 bytes"):
            st.append([atoms], Provenance(status="failed", reason="x", labeler="l" * 65))
        with pytest.raises(ValueError, match="no reason"):
            st.append([atoms], Provenance(status="failed"))
        assert len(st) == 1


def test_info_and_metadata(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    with StructureStore.create(path, campaign_config={"name": "ala2", "T_K": 300}) as st:
        st.append(labeled_atoms(6))
        info = st.info()
    assert info["n_structures"] == 6 and info["by_status"] == {"ok": 6}
    assert info["by_iteration"] == {0: 2, 1: 2, 2: 2}
    assert info["campaign_config"] == {"name": "ala2", "T_K": 300}
    with StructureStore.open(path) as st:
        assert st.campaign_config == {"name": "ala2", "T_K": 300}
    assert {"ubmd", "numpy", "h5py", "hdf5", "ase"} <= set(info["package_versions"])
    assert sum(info["elements"].values()) == info["n_atoms"]
    with h5py.File(path, "r") as f:
        assert int(f.attrs["schema_version"]) == 1
        assert json.loads(f.attrs["campaign_config"])["name"] == "ala2"
    with pytest.raises(ValueError, match="JSON"):
        StructureStore.create(tmp_path / "x.h5", campaign_config={"f": object()})


def test_open_modes(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    with pytest.raises(FileNotFoundError):
        StructureStore.open(path)
    with pytest.raises(ValueError, match="mode"):
        StructureStore.open(path, mode="w")
    with StructureStore.open(path, mode="a") as st:  # creates
        st.append(labeled_atoms(2))
    with pytest.raises(FileExistsError):
        StructureStore.create(path)
    with StructureStore.open(path) as st:
        assert len(st) == 2 and not st.writable
        with pytest.raises(StoreError, match="read-only"):
            st.append(labeled_atoms(1, seed=9))
    with pytest.raises(FileNotFoundError, match="no directory"):
        StructureStore.create(tmp_path / "missing" / "s.h5")


def test_failed_write_keeps_committed_data(tmp_path: Path, monkeypatch) -> None:
    """An I/O error part-way through an append: nothing becomes visible, reopen is clean."""
    import ubmd.store.store as store_mod

    path = tmp_path / "s.h5"
    st = StructureStore.create(path)
    st.append(labeled_atoms(3))
    calls = {"n": 0}
    real_put = store_mod._put

    def flaky_put(ds, start, values):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError("disk full (simulated)")
        real_put(ds, start, values)

    monkeypatch.setattr(store_mod, "_put", flaky_put)
    with pytest.raises(OSError, match="simulated"):
        st.append(labeled_atoms(4, seed=8))
    monkeypatch.setattr(store_mod, "_put", real_put)
    assert len(st) == 3
    with pytest.raises(StoreError, match="reopen"):
        st.append(labeled_atoms(1, seed=9))
    st.close()
    assert validate(path) == []
    with StructureStore.open(path, mode="a") as st:
        assert len(st) == 3
        res = st.append(labeled_atoms(4, seed=8))  # the same batch again: not a duplicate
        assert res.duplicates == [] and len(st) == 7
    assert validate(path) == []


def test_same_process_reader_then_writer_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    StructureStore.create(path).close()
    with StructureStore.open(path) as reader:
        with pytest.raises(StoreError, match="close those readers"):
            StructureStore.open(path, mode="a")
        assert len(reader) == 0
    with StructureStore.open(path, mode="a") as writer:  # lock was released again
        writer.append(labeled_atoms(1))


def test_schema_column_names_are_keys_constants() -> None:
    from ubmd.store.provenance import PROVENANCE_FIELDS
    from ubmd.store.schema import ATOM_DATASETS, STRUCT_DATASETS

    names = {v for k, v in vars(keys).items() if k.isupper() and isinstance(v, str)}
    internal = {"atom_offset", "hash"}
    assert set(PROVENANCE_FIELDS) <= names
    assert (set(ATOM_DATASETS) | set(STRUCT_DATASETS)) - internal <= names


def test_read_tensors_for_training(tmp_path: Path) -> None:
    import torch

    with StructureStore.create(tmp_path / "s.h5") as st:
        st.append(labeled_atoms(5))
        arrays = st.read_arrays(iteration=[0, 1])
        t = st.read_tensors("cpu", dtype=torch.float32, iteration=[0, 1])
    assert t[keys.POSITIONS].dtype == torch.float32 and t[keys.BATCH].dtype == torch.int64
    assert keys.LABELER not in t and t[keys.PBC].dtype == torch.bool
    np.testing.assert_allclose(t[keys.FORCES].numpy(), arrays[keys.FORCES], rtol=1e-6)
    assert t[keys.N_ATOMS].tolist() == arrays[keys.N_ATOMS].tolist()


def test_content_hashes_match_batch_hashes(tmp_path: Path) -> None:
    from ubmd.store.batch import make_batch

    with StructureStore.create(tmp_path / "s.h5") as st:
        st.append(labeled_atoms(5))
        all_h = st.content_hashes()
        some = st.content_hashes([3, 1])
        arrays = st.read_arrays()
    assert all_h.shape == (5, 16) and all_h.dtype == np.uint8
    assert some.tolist() == all_h[[3, 1]].tolist()
    recomputed = make_batch(arrays).hashes()
    assert [h.tobytes() for h in all_h] == recomputed


def test_empty_store_and_empty_append(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    with StructureStore.create(path) as st:
        res = st.append([])
        assert res.indices.tolist() == [] and res.duplicates == []
        assert st.read_arrays()[keys.POSITIONS].shape == (0, 3)
        assert st.read_atoms() == [] and st.content_hashes().shape == (0, 16)
        empty = {keys.NUMBERS: [], keys.POSITIONS: np.zeros((0, 3)), keys.N_ATOMS: []}
        assert len(st.append_arrays(empty).indices) == 0
        assert st.read_arrays(indices=[])[keys.N_ATOMS].shape == (0,)
    assert validate(path) == []
