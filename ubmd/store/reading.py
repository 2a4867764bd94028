"""Vectorised reads of committed store rows (helpers of :class:`StructureStore`)."""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator
from typing import Any

import h5py
import numpy as np

from ubmd import keys
from ubmd.store.provenance import PROVENANCE_FIELDS
from ubmd.store.schema import FLOAT_COLUMNS, INT_COLUMNS, STRING_COLUMNS

STORE_INDEX = "store_index"


def column(ds: h5py.Dataset, rows: np.ndarray, n: int) -> np.ndarray:
    """``ds[rows]`` for sorted or unsorted rows, reading one contiguous span."""
    if len(rows) == 0:
        return np.zeros((0, *ds.shape[1:]), dtype=ds.dtype)
    if len(rows) == n and rows[0] == 0 and rows[-1] == n - 1 and np.all(np.diff(rows) == 1):
        return ds[:n]
    lo, hi = int(rows.min()), int(rows.max()) + 1
    return ds[lo:hi][rows - lo]


def gather(
    ds: dict[str, h5py.Dataset], rows: np.ndarray, committed: np.ndarray, strings: list[str]
) -> dict[str, np.ndarray]:
    """Flat arrays for store ``rows`` (see ``StructureStore.read_arrays``)."""
    n = int(committed[0])
    n_atoms = column(ds["n_atoms"], rows, n).astype(np.int64)
    offsets = column(ds["atom_offset"], rows, n)
    S, A = len(rows), int(n_atoms.sum())
    new_offsets = np.cumsum(n_atoms) - n_atoms
    if S == 0:
        atom_rows = np.zeros(0, dtype=np.int64)
        lo = hi = 0
    else:
        lo, hi = int(offsets.min()), int((offsets + n_atoms).max())
        atom_rows = np.repeat(offsets - lo - new_offsets, n_atoms) + np.arange(A)
    contiguous = hi - lo == A and (A == 0 or np.all(atom_rows == np.arange(A)))

    def per_atom(name: str) -> np.ndarray:
        if S == 0:
            return np.zeros((0, *ds[name].shape[1:]), dtype=ds[name].dtype)
        block = ds[name][lo:hi]
        return block if contiguous else block[atom_rows]

    table = np.array(strings, dtype=str)
    out: dict[str, np.ndarray] = {
        keys.NUMBERS: per_atom("numbers").astype(np.int64),
        keys.POSITIONS: per_atom("positions"),
        keys.FORCES: per_atom("forces"),
        keys.BATCH: np.repeat(np.arange(S, dtype=np.int64), n_atoms),
        keys.N_ATOMS: n_atoms,
        keys.CELL: column(ds["cell"], rows, n),
        keys.PBC: column(ds["pbc"], rows, n).astype(bool),
        keys.ENERGY: column(ds["energy"], rows, n),
        keys.FREE_ENERGY: column(ds["free_energy"], rows, n),
        keys.STRESS: column(ds["stress"], rows, n),
        keys.HAS_STRESS: column(ds["has_stress"], rows, n).astype(bool),
    }
    for name in INT_COLUMNS:
        out[name] = column(ds[name], rows, n).astype(np.int64)
    for name in (*FLOAT_COLUMNS, keys.CREATED_AT):
        out[name] = column(ds[name], rows, n)
    for name in STRING_COLUMNS:
        out[name] = table[column(ds[name], rows, n)]
    out[STORE_INDEX] = rows.astype(np.int64)
    return out


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause cyclic GC: its passes over every live object dominate when creating many."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def to_atoms(arrays: dict[str, np.ndarray]) -> list[Any]:
    """ASE ``Atoms`` (SinglePointCalculator labels, provenance in ``info``) from flat arrays."""
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    n_atoms = arrays[keys.N_ATOMS]
    bounds = np.cumsum(n_atoms)[:-1]
    numbers = np.split(arrays[keys.NUMBERS], bounds)
    positions = np.split(arrays[keys.POSITIONS], bounds)
    forces = np.split(arrays[keys.FORCES], bounds)
    finite_f = np.isfinite(arrays[keys.FORCES]).all(axis=1)
    forces_ok = np.add.reduceat(~finite_f, np.r_[0, bounds]) == 0 if len(n_atoms) else []
    columns = {name: arrays[name].tolist() for name in (*PROVENANCE_FIELDS, keys.CREATED_AT)}
    columns[STORE_INDEX] = arrays[STORE_INDEX].tolist()
    energy, free = arrays[keys.ENERGY], arrays[keys.FREE_ENERGY]
    cell, pbc = arrays[keys.CELL], arrays[keys.PBC]
    stress, has_stress = arrays[keys.STRESS], arrays[keys.HAS_STRESS]
    out = []
    with _gc_paused():
        for s in range(len(n_atoms)):
            atoms = Atoms(numbers=numbers[s], positions=positions[s], cell=cell[s], pbc=pbc[s])
            results: dict[str, Any] = {}
            if np.isfinite(energy[s]):
                results["energy"] = float(energy[s])
            if np.isfinite(free[s]):
                results["free_energy"] = float(free[s])
            if forces_ok[s]:
                results["forces"] = forces[s]
            if has_stress[s]:
                results["stress"] = stress[s].copy()
            if results:
                atoms.calc = SinglePointCalculator(atoms, **results)
            atoms.info.update({name: col[s] for name, col in columns.items()})
            out.append(atoms)
    return out


def summary(
    store: Any, h5: h5py.File, ds: dict[str, h5py.Dataset], strings: list[str]
) -> dict[str, Any]:
    """What ``ubmd store info`` prints."""
    import json

    from ase.data import chemical_symbols

    n, a = int(store._committed[0]), int(store._committed[1])

    def counts(name: str, decode: bool) -> dict[Any, int]:
        values, cnt = np.unique(ds[name][:n], return_counts=True)
        keys_ = [strings[v] for v in values.tolist()] if decode else values.tolist()
        return dict(zip(keys_, cnt.tolist(), strict=True))

    z, zc = np.unique(ds["numbers"][:a], return_counts=True)
    return {
        "path": store.path,
        "file_size_bytes": os.path.getsize(store.path),
        "schema_version": int(h5.attrs["schema_version"]),
        "created_at": str(h5.attrs["created_at"]),
        "n_structures": n,
        "n_atoms": a,
        "by_status": counts("status", True),
        "by_iteration": counts("iteration", False),
        "by_labeler": counts("labeler", True),
        "by_sampler": counts("sampler", True),
        "elements": {chemical_symbols[int(k)]: int(c) for k, c in zip(z, zc, strict=True)},
        "with_stress": int(np.count_nonzero(ds["has_stress"][:n])),
        "package_versions": json.loads(h5.attrs["package_versions"]),
        "campaign_config": json.loads(h5.attrs["campaign_config"]),
    }
