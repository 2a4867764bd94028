"""ubmd.inputs: one reader for every structure file a user gives, and the checks before a run."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from ubmd.inputs import check_geometry, check_labels, read_checked, read_structures


def _labelled_cells(n=3):
    frames = []
    for k in range(n):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.rattle(0.05, seed=k)
        atoms.calc = EMT()
        e, f = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=e, forces=f)
        frames.append(atoms)
    return frames


@pytest.mark.parametrize("name,fmt", [("s.cif", "cif"), ("POSCAR", "vasp"), ("s.extxyz", None)])
def test_cif_poscar_and_extxyz_give_the_same_structure(tmp_path, name, fmt):
    atoms = _labelled_cells(1)[0]
    ase.io.write(tmp_path / name, atoms, format=fmt)
    (got,) = read_checked(tmp_path / name)
    assert got.get_chemical_symbols() == atoms.get_chemical_symbols()
    np.testing.assert_allclose(got.cell.array, atoms.cell.array, atol=1e-6)
    # CIF stores fractional coordinates in [0, 1): compare modulo the cell
    d = got.get_scaled_positions(wrap=False) - atoms.get_scaled_positions(wrap=False)
    np.testing.assert_allclose(d - np.round(d), 0.0, atol=1e-6)


def test_a_store_file_gives_its_ok_labels_and_takes_an_index(tmp_path):
    from ubmd.store import StructureStore

    frames = _labelled_cells(3)
    with StructureStore.create(tmp_path / "s.h5") as st:
        st.append(frames)
    got = read_structures(tmp_path / "s.h5")
    assert len(got) == 3
    np.testing.assert_allclose(got[1].positions, frames[1].positions)
    (last,) = read_structures(tmp_path / "s.h5", index=-1)
    np.testing.assert_allclose(last.positions, frames[2].positions)
    assert len(read_structures(tmp_path / "s.h5", index="0:2")) == 2
    with pytest.raises(ValueError, match="index 7"):
        read_structures(tmp_path / "s.h5", index=7)


def test_index_of_a_multi_frame_file(tmp_path):
    ase.io.write(tmp_path / "m.extxyz", _labelled_cells(3), format="extxyz")
    assert len(read_structures(tmp_path / "m.extxyz")) == 3
    assert len(read_structures(tmp_path / "m.extxyz", index="::2")) == 2
    with pytest.raises(ValueError, match="no structure at index '5'"):
        read_structures(tmp_path / "m.extxyz", index="5")
    with pytest.raises(ValueError, match="frame index 'x' is not an index"):
        read_structures(tmp_path / "m.extxyz", index="x")


@pytest.mark.parametrize(
    "content,message",
    [
        ("", "is empty"),
        ("garbage\n\x00", "cannot read structure file"),
        ("0\n\n", "has no atoms"),
    ],
)
def test_unreadable_files_name_the_file(tmp_path, content, message):
    path = tmp_path / "bad.xyz"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        read_checked(path)
    assert "bad.xyz" in str(info.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="gone.xyz"):
        read_structures(tmp_path / "gone.xyz")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        read_structures(tmp_path)


def test_geometry_checks():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    check_geometry([atoms], "ok")
    nan = atoms.copy()
    nan.positions[2, 1] = np.nan
    with pytest.raises(ValueError, match="atom 2 has a non-finite coordinate"):
        check_geometry([nan], "f")
    twin = atoms.copy()
    twin.positions[3] = twin.positions[1] + [0.01, 0.0, 0.0]
    with pytest.raises(ValueError, match="atoms 1 and 3 are 0.010 Å apart"):
        check_geometry([twin], "f")
    # across the periodic boundary too
    edge = atoms.copy()
    edge.positions[0] = [0.0, 0.0, 0.0]
    edge.positions[1] = [3.6 - 0.02, 0.0, 0.0]
    with pytest.raises(ValueError, match="atoms 0 and 1 are 0.020 Å apart"):
        check_geometry([edge], "f")
    flat = atoms.copy()
    flat.cell[2] = [0, 0, 0]
    with pytest.raises(ValueError, match="the cell is flat"):
        check_geometry([flat], "f")


def test_label_checks():
    frames = _labelled_cells(2)
    check_labels(frames, "ok")
    frames[1].calc.results["forces"][0, 0] = np.inf
    with pytest.raises(ValueError, match="structure 1: its energy or forces are not finite"):
        check_labels(frames, "f")
    bare = bulk("Cu", "fcc", a=3.6)
    with pytest.raises(ValueError, match="has no energy"):
        check_labels([bare], "f")
