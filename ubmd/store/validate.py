"""Checking every invariant of a structure store; returns the violations found."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from ubmd.store.batch import Batch
from ubmd.store.schema import (
    ATOM_DATASETS,
    SCHEMA_VERSION,
    STATUS_VALUES,
    STRING_COLUMNS,
    STRUCT_DATASETS,
    StoreError,
)
from ubmd.store.store import StructureStore


def validate(path: str | os.PathLike[str]) -> list[str]:
    """Open ``path`` read-only and return every violated invariant (empty list: valid).

    A file that cannot be opened as a store at all gives a single violation.
    """
    try:
        store = StructureStore.open(path, mode="r")
    except (StoreError, OSError) as exc:
        return [f"cannot open store: {exc}"]
    with store:
        return validate_store(store)


def validate_store(store: StructureStore) -> list[str]:
    """Violations of the store's invariants (see the checks below)."""
    h5, ds = store._f, store._ds
    out = _size_violations(h5, ds)
    if out:
        return out  # the rest would read past the end
    n, a, t = (int(x) for x in h5["committed"][:])
    n_atoms = ds["n_atoms"][:n].astype(np.int64)
    out = _offset_violations(ds, n_atoms, n_committed_atoms=a)
    if int(n_atoms.sum()) != a:
        return out
    if t < 1 or h5["strings"][0] != b"":
        out.append("string table entry 0 is not the empty string")
    codes = {name: ds[name][:n] for name in STRING_COLUMNS}
    bad_codes = [
        f"{name}: string codes out of range at structures {_rows(bad)}"
        for name, c in codes.items()
        if (bad := (c < 0) | (c >= t)).any()
    ]
    if bad_codes:
        return out + bad_codes  # cannot decode status/reason
    table = np.array([b.decode() for b in h5["strings"][:t].tolist()], dtype=object)
    status = table[codes["status"]]
    bad = ~np.isin(status, STATUS_VALUES)
    if bad.any():
        out.append(f"unknown status values {sorted(set(status[bad]))} at {_rows(bad)}")
    ok = status == "ok"
    probe = _stored_batch(ds, n_atoms, n_committed_atoms=a)
    out += _label_violations(probe, ok=ok, reasons=table[codes["reason"]])
    out += _hash_violations(probe, ds["hash"][:n].view("V16").ravel())
    return out


def _size_violations(h5: Any, ds: Mapping[str, Any]) -> list[str]:
    """Schema version in range; committed counts not negative and within every dataset."""
    out: list[str] = []
    version = int(h5.attrs.get("schema_version", -1))
    if not 1 <= version <= SCHEMA_VERSION:
        out.append(f"schema_version {version} not in 1..{SCHEMA_VERSION}")
    n, a, t = (int(x) for x in h5["committed"][:])
    if min(n, a, t) < 0:
        return [*out, f"negative committed counts {(n, a, t)}"]
    for name in ATOM_DATASETS:
        if ds[name].shape[0] < a:
            out.append(f"{name}: {ds[name].shape[0]} rows < {a} committed atoms")
    for name in STRUCT_DATASETS:
        if ds[name].shape[0] < n:
            out.append(f"{name}: {ds[name].shape[0]} rows < {n} committed structures")
    if h5["strings"].shape[0] < t:
        out.append(f"strings: {h5['strings'].shape[0]} rows < {t} committed strings")
    return out


def _offset_violations(
    ds: Mapping[str, Any], n_atoms: np.ndarray, *, n_committed_atoms: int
) -> list[str]:
    """Every structure has atoms, stored contiguously, adding up to the committed atoms."""
    out: list[str] = []
    offsets = ds["atom_offset"][: len(n_atoms)]
    if (n_atoms < 1).any():
        out.append(f"structures {_rows(n_atoms < 1)} have n_atoms < 1")
    expected = np.cumsum(n_atoms) - n_atoms
    if not np.array_equal(offsets, expected):
        out.append(f"atom_offset not contiguous at structures {_rows(offsets != expected)}")
    if int(n_atoms.sum()) != n_committed_atoms:
        out.append(
            f"sum(n_atoms) = {int(n_atoms.sum())} but {n_committed_atoms} atoms are committed"
        )
    return out


def _stored_batch(ds: Mapping[str, Any], n_atoms: np.ndarray, *, n_committed_atoms: int) -> Batch:
    """The committed structures as a :class:`Batch` (no provenance columns)."""
    n, a = len(n_atoms), n_committed_atoms
    return Batch(
        numbers=ds["numbers"][:a],
        positions=ds["positions"][:a],
        forces=ds["forces"][:a],
        n_atoms=n_atoms,
        cell=ds["cell"][:n],
        pbc=ds["pbc"][:n],
        energy=ds["energy"][:n],
        free_energy=ds["free_energy"][:n],
        stress=ds["stress"][:n],
        has_stress=ds["has_stress"][:n].astype(bool),
        columns={},
    )


def _label_violations(batch: Batch, *, ok: np.ndarray, reasons: np.ndarray) -> list[str]:
    """Finite content; 'ok' structures with finite energy and forces, failed ones with a
    reason; a stress exactly where has_stress says."""
    out: list[str] = []
    stress, hs = batch.stress, batch.has_stress
    if (batch.numbers > 118).any():
        out.append("atomic numbers > 118 present")
    if not np.isfinite(batch.positions).all():
        out.append("non-finite positions")
    if not np.isfinite(batch.cell).all():
        out.append("non-finite cells")
    if (ok & ~np.isfinite(batch.energy)).any():
        out.append(
            f"'ok' structures without finite energy: {_rows(ok & ~np.isfinite(batch.energy))}"
        )
    bad_f = np.repeat(ok, batch.n_atoms) & ~np.isfinite(batch.forces).all(axis=1)
    if bad_f.any():
        rows = np.unique(np.repeat(np.arange(len(batch)), batch.n_atoms)[bad_f])
        out.append(f"'ok' structures with non-finite forces: {_list(rows)}")
    failed_no_reason = ~ok & (reasons == "")
    if failed_no_reason.any():
        out.append(f"failed structures without a reason: {_rows(failed_no_reason)}")
    if (hs & ~np.isfinite(stress).all(axis=1)).any():
        out.append(f"has_stress but non-finite stress: {_rows(hs & ~np.isfinite(stress).all(1))}")
    if (~hs & ~np.isnan(stress).all(axis=1)).any():
        out.append(f"stress present where has_stress is 0: {_rows(~hs & ~np.isnan(stress).all(1))}")
    return out


def _hash_violations(batch: Batch, stored: np.ndarray) -> list[str]:
    """No hash stored twice; each stored hash matches its structure's content."""
    out: list[str] = []
    _uniq, counts = np.unique(stored, return_counts=True)
    if (counts > 1).any():
        out.append(f"{int((counts > 1).sum())} hashes occur more than once (duplicates stored)")
    actual = np.array(batch.hashes(), dtype="V16")
    mismatch = actual != stored
    if mismatch.any():
        out.append(f"stored hash does not match content at structures {_rows(mismatch)}")
    return out


def _rows(mask: np.ndarray) -> str:
    return _list(np.flatnonzero(mask))


def _list(idx: np.ndarray, k: int = 10) -> str:
    more = f" ... ({len(idx)} in all)" if len(idx) > k else ""
    return ", ".join(map(str, idx[:k].tolist())) + more
