"""Conversions between the store's ASE ``Atoms`` and extxyz, ASE databases and pymatgen.

Every converter keeps each field bit for bit (energy, free energy, forces, stress,
positions, cell, pbc, numbers and the provenance fields):

- extxyz: ASE's writer prints per-atom floats as ``%16.8f`` (8 decimals), so
  :func:`write_extxyz` writes the same format itself with shortest round-trip float text;
  any extxyz reader (ASE's included) reads it. Provenance goes to the comment line.
- ASE database (SQLite): arrays are stored as binary; provenance goes to ``data["ubmd"]``
  (exact) and, where ASE accepts the value, to the searchable key-value pairs.
- pymatgen: ``Structure`` keeps fractional coordinates, so Cartesian positions would change
  in the last bits; the exact positions ride along as the site property ``positions``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from ubmd.store.provenance import PROVENANCE_FIELDS, Provenance

_LABELS = ("energy", "free_energy", "forces", "stress")


def _provenance_info(atoms: Any) -> dict[str, Any]:
    return Provenance.from_info(atoms.info).to_info(skip_defaults=True)


def _results(atoms: Any) -> dict[str, Any]:
    results = getattr(atoms.calc, "results", None) or {}
    return {k: results[k] for k in _LABELS if results.get(k) is not None}


def _attach(atoms: Any, results: dict[str, Any], info: dict[str, Any]) -> Any:
    from ase.calculators.singlepoint import SinglePointCalculator

    if results:
        atoms.calc = SinglePointCalculator(atoms, **results)
    atoms.info.update({k: v for k, v in info.items() if k in PROVENANCE_FIELDS})
    return atoms


# ----------------------------------------------------------------------- extxyz
def write_extxyz(path: str | os.PathLike[str], atoms_list: Iterable[Any]) -> None:
    """Write extended XYZ with full float precision (labels and provenance included)."""
    with open(path, "w") as fh:
        for atoms in atoms_list:
            fh.write(_extxyz_frame(atoms))


def _extxyz_frame(atoms: Any) -> str:
    res = _results(atoms)
    props = "species:S:1:pos:R:3" + (":forces:R:3" if "forces" in res else "")
    parts = []
    if atoms.cell.any():
        parts.append('Lattice="' + " ".join(map(repr, atoms.cell.array.ravel().tolist())) + '"')
    parts.append(f"Properties={props}")
    for key in ("energy", "free_energy"):
        if key in res:
            parts.append(f"{key}={float(res[key])!r}")
    if "stress" in res:
        full = _voigt_to_full(np.asarray(res["stress"], dtype=np.float64))
        parts.append('stress="' + " ".join(map(repr, full.ravel().tolist())) + '"')
    parts.append('pbc="' + " ".join("T" if p else "F" for p in atoms.pbc) + '"')
    for key, value in _provenance_info(atoms).items():
        parts.append(f"{key}={_xyz_value(value)}")
    cols = [atoms.positions] + ([np.asarray(res["forces"], float)] if "forces" in res else [])
    table = np.hstack(cols).tolist()
    lines = [f"{len(atoms)}", " ".join(parts)]
    lines += [
        s + " " + " ".join(map(repr, row)) for s, row in zip(atoms.symbols, table, strict=True)
    ]
    return "\n".join(lines) + "\n"


def _voigt_to_full(stress: np.ndarray) -> np.ndarray:
    if stress.shape == (3, 3):
        return stress
    xx, yy, zz, yz, xz, xy = stress.tolist()
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


def _xyz_value(value: Any) -> str:
    if not isinstance(value, str):
        return repr(value)
    return _xyz_string(value)


@lru_cache(maxsize=1024)
def _xyz_string(value: str) -> str:
    """Quote a string so ASE parses it back as the same string (else use ASE's _JSON form)."""
    from ase.io.extxyz import key_val_str_to_dict

    quoted = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if "\n" not in value and "\r" not in value:  # a line break would end the comment line
        try:
            if key_val_str_to_dict(f"k={quoted}").get("k") == value:
                return quoted
        except Exception:
            pass  # not parseable as a plain string: JSON below
    return '"_JSON ' + json.dumps(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def read_extxyz(path: str | os.PathLike[str]) -> list[Any]:
    """All frames of an extxyz file (labels in ``atoms.calc``, provenance in ``atoms.info``)."""
    import ase.io

    return list(ase.io.read(path, index=":", format="extxyz"))


# ----------------------------------------------------------------------- ASE db
def write_ase_db(path: str | os.PathLike[str], atoms_list: Iterable[Any]) -> None:
    """Append structures to an ASE database (SQLite for ``.db``), in one transaction."""
    from ase.db import connect
    from ase.db.core import check

    with connect(os.fspath(path)) as db:
        for atoms in atoms_list:
            prov = _provenance_info(atoms)
            kvp = {}
            for key, value in prov.items():
                try:
                    check({key: value})
                except ValueError:
                    continue  # e.g. a string ASE would read as a number; still in data
                kvp[key] = value
            db.write(atoms, key_value_pairs=kvp, data={"ubmd": prov})


def read_ase_db(path: str | os.PathLike[str], selection: Any = None) -> list[Any]:
    """Structures of an ASE database (optionally an ASE ``select`` query)."""
    from ase.db import connect

    if not os.path.exists(path):
        raise FileNotFoundError(f"ASE database {os.fspath(path)!r} does not exist")
    out = []
    for row in connect(os.fspath(path)).select(selection):
        atoms = row.toatoms()
        res = _results(atoms)
        info = dict(row.key_value_pairs)
        info.update(row.data.get("ubmd", {}))
        atoms.calc = None
        out.append(_attach(atoms, res, info))
    return out


# ----------------------------------------------------------------------- pymatgen
def to_pymatgen(atoms: Any) -> Any:
    """pymatgen ``Structure`` (any periodic direction or a cell) or ``Molecule``."""
    from pymatgen.core import Lattice, Molecule, Structure

    res = _results(atoms)
    site_props: dict[str, Any] = {}
    if "forces" in res:
        site_props["forces"] = np.asarray(res["forces"], dtype=np.float64)
    props: dict[str, Any] = {k: float(res[k]) for k in ("energy", "free_energy") if k in res}
    if "stress" in res:
        from ubmd.store.batch import stress_to_voigt

        props["stress"] = stress_to_voigt(np.asarray(res["stress"])[None], 1)[0].tolist()
    props.update(_provenance_info(atoms))
    numbers = atoms.numbers.tolist()
    if atoms.pbc.any() or atoms.cell.any():
        site_props["positions"] = atoms.positions.copy()
        lattice = Lattice(atoms.cell.array, pbc=tuple(bool(p) for p in atoms.pbc))
        return Structure(
            lattice,
            numbers,
            atoms.positions,
            coords_are_cartesian=True,
            site_properties=site_props,
            properties=props,
        )
    return Molecule(numbers, atoms.positions, site_properties=site_props, properties=props)


def from_pymatgen(obj: Any) -> Any:
    """ASE ``Atoms`` (labels and provenance restored) from a pymatgen Structure/Molecule."""
    from ase import Atoms
    from pymatgen.core import Molecule, Structure

    if not isinstance(obj, (Structure, Molecule)):
        raise TypeError(f"expected a pymatgen Structure or Molecule, got {type(obj).__name__}")
    numbers = [site.specie.Z for site in obj]
    positions = obj.cart_coords
    if isinstance(obj, Structure):
        exact = obj.site_properties.get("positions")
        # Use the exact copy unless the sites were moved since (frac->Cartesian rounding is
        # relative to the largest coordinate, hence the scaled tolerance).
        tol = 1e-8 * max(1.0, float(np.abs(positions).max(initial=0.0)))
        if exact is not None and np.allclose(np.asarray(exact), positions, rtol=0, atol=tol):
            positions = np.asarray(exact, dtype=np.float64)  # exact copy of the Cartesians
        atoms = Atoms(numbers, positions=positions, cell=obj.lattice.matrix, pbc=obj.lattice.pbc)
    else:
        atoms = Atoms(numbers, positions=positions)
    props = dict(obj.properties or {})
    res: dict[str, Any] = {k: props[k] for k in ("energy", "free_energy") if k in props}
    if "stress" in props:
        res["stress"] = np.asarray(props["stress"], dtype=np.float64)
    if "forces" in obj.site_properties:
        res["forces"] = np.asarray(obj.site_properties["forces"], dtype=np.float64)
    return _attach(atoms, res, props)


# ----------------------------------------------------------------------- files
def write_structures(path: str | os.PathLike[str], atoms_list: Sequence[Any]) -> None:
    """Write to ``.extxyz``/``.xyz`` (full precision) or ``.db`` (ASE SQLite database)."""
    name = os.fspath(path).lower()
    if name.endswith((".extxyz", ".xyz")):
        write_extxyz(path, atoms_list)
    elif name.endswith(".db"):
        if os.path.exists(path):
            raise FileExistsError(f"{os.fspath(path)!r} exists; choose a new file name")
        write_ase_db(path, atoms_list)
    else:
        raise ValueError(
            f"cannot tell the format of {os.fspath(path)!r}; use a .extxyz, .xyz or .db name"
        )
