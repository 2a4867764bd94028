"""Conversions keep every field bit for bit: extxyz, ASE database, pymatgen, via the store."""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from pymatgen.core import Molecule, Structure
from store_helpers import assert_same, labeled_atoms

from ubmd.inputs import read_structures
from ubmd.store import Provenance, StructureStore
from ubmd.store.convert import (
    from_pymatgen,
    read_ase_db,
    read_extxyz,
    to_pymatgen,
    write_ase_db,
    write_extxyz,
    write_structures,
)


def _awkward(tmp_path: Path) -> list[Atoms]:
    """Structures with values that trip naive writers: strings that look like numbers or
    booleans, quotes, spaces, unicode, a failed record, 3x3 stress, tiny/huge floats."""
    atoms = labeled_atoms(6, seed=21)
    atoms[0].info.update(labeler_hash="0123", campaign_id="T", selection_method='a "b" c')
    atoms[1].info.update(labeler_hash="1e5", sampler="biased md ü", reason="")
    atoms[2].positions[0] = [1e-300, -0.0, 1.2345678901234567e10]
    failed = Atoms("CO", positions=[[0, 0, 0], [0, 0, 1.128]])
    failed.info.update(status="failed", reason="SCF not converged:\n 'x' = 3\r\n", iteration=4)
    atoms.append(failed)
    return atoms


def _store_arrays(path: Path, atoms: list[Atoms]) -> dict:
    with StructureStore.create(path) as st:
        res = st.append(atoms)
        assert res.duplicates == []
        return st.read_arrays()


@pytest.mark.parametrize("fmt", ["extxyz", "db", "pymatgen"])
def test_round_trip_bitwise(tmp_path: Path, fmt: str) -> None:
    ref = _store_arrays(tmp_path / "ref.h5", _awkward(tmp_path))
    with StructureStore.open(tmp_path / "ref.h5") as st:
        atoms = st.read_atoms()
    if fmt == "extxyz":
        write_extxyz(tmp_path / "x.extxyz", atoms)
        back = read_extxyz(tmp_path / "x.extxyz")
    elif fmt == "db":
        write_ase_db(tmp_path / "x.db", atoms)
        back = read_ase_db(tmp_path / "x.db")
    else:
        objs = [to_pymatgen(a) for a in atoms]
        kinds = {type(o) for o in objs}
        assert kinds == {Structure, Molecule}
        objs = [type(o).from_dict(o.as_dict()) for o in objs]  # and through pymatgen's JSON
        back = [from_pymatgen(o) for o in objs]
    assert_same(ref, _store_arrays(tmp_path / "back.h5", back))


def test_ase_default_extxyz_writer_is_lossy_ours_is_not(tmp_path: Path) -> None:
    atoms = labeled_atoms(1, seed=3)
    ase.io.write(tmp_path / "ase.extxyz", atoms, format="extxyz")
    lossy = ase.io.read(tmp_path / "ase.extxyz")
    assert not np.array_equal(lossy.positions, atoms[0].positions)  # %16.8f
    write_extxyz(tmp_path / "ours.extxyz", atoms)
    exact = ase.io.read(tmp_path / "ours.extxyz")  # ASE's own reader
    assert exact.positions.tobytes() == atoms[0].positions.tobytes()
    assert exact.get_forces().tobytes() == atoms[0].get_forces().tobytes()
    assert exact.info["labeler_hash"] == "0123abcd" and exact.info["md_step"] == 0


def test_db_key_value_pairs_are_searchable(tmp_path: Path) -> None:
    from ase.db import connect

    write_ase_db(tmp_path / "x.db", _awkward(tmp_path))
    db = connect(tmp_path / "x.db")
    assert db.count(labeler="xtb") == 6
    assert db.count(iteration=4) == 1
    row = db.get(id=1)
    assert "labeler_hash" not in row.key_value_pairs  # "0123" would read back as a number
    assert row.data["ubmd"]["labeler_hash"] == "0123"


def test_pymatgen_structure_fields(tmp_path: Path) -> None:
    a = labeled_atoms(3, seed=2)[2]  # periodic with stress
    s = to_pymatgen(a)
    assert isinstance(s, Structure) and s.lattice.pbc == tuple(a.pbc)
    assert s.properties["energy"] == a.get_potential_energy()
    assert s.properties["iteration"] == 2 and s.properties["labeler"] == "xtb"
    np.testing.assert_allclose(s.cart_coords, a.positions, atol=1e-12)
    b = from_pymatgen(s)
    assert b.positions.tobytes() == a.positions.tobytes()
    assert Provenance.from_info(b.info) == Provenance.from_info(a.info)
    with pytest.raises(TypeError, match="Structure or Molecule"):
        from_pymatgen(a)


def test_read_write_structures_by_suffix(tmp_path: Path) -> None:
    atoms = labeled_atoms(2)
    write_structures(tmp_path / "a.xyz", atoms)
    assert len(read_structures(tmp_path / "a.xyz")) == 2
    write_structures(tmp_path / "a.db", atoms)
    with pytest.raises(FileExistsError):
        write_structures(tmp_path / "a.db", atoms)
    with pytest.raises(ValueError, match=r"\.extxyz, \.xyz or \.db"):
        write_structures(tmp_path / "a.json", atoms)
    si = Atoms("Si2", positions=[[0, 0, 0], [1.3, 1.3, 1.3]], cell=np.eye(3) * 5.4, pbc=True)
    ase.io.write(tmp_path / "si.cif", si)
    (cif,) = read_structures(tmp_path / "si.cif")
    assert cif.calc is None or "energy" not in cif.calc.results
    with pytest.raises(FileNotFoundError):
        read_structures(tmp_path / "nope.extxyz")


def test_stress_3x3_from_calculator(tmp_path: Path) -> None:
    a = Atoms("Cu", positions=[[0, 0, 0]], cell=np.eye(3) * 3, pbc=True)
    st = np.array([[1.0, 0.1, 0.2], [0.1, 2.0, 0.3], [0.2, 0.3, 3.0]])
    a.calc = SinglePointCalculator(a, energy=-1.0, forces=np.zeros((1, 3)), stress=st)
    d = _store_arrays(tmp_path / "s.h5", [a])
    assert d["stress"][0].tolist() == [1.0, 2.0, 3.0, 0.3, 0.2, 0.1]
