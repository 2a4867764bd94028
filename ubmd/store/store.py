"""The structure store: one crash-safe HDF5 file per campaign (layout: ``ubmd.store.schema``).

One writer (``mode="a"``) holds an exclusive lock; any number of readers (``mode="r"``) open
the file with HDF5's single-writer/multiple-reader (SWMR) mode while the writer appends.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

from ubmd import keys
from ubmd.store import h5file, reading
from ubmd.store.batch import Batch, atoms_to_arrays, make_batch
from ubmd.store.lock import WriterLock
from ubmd.store.provenance import Provenance
from ubmd.store.schema import (
    ATOM_DATASETS,
    STRING_COLUMNS,
    STRING_DTYPE,
    STRUCT_DATASETS,
    StoreError,
)


@dataclass
class AppendResult:
    """Outcome of an append: rows of the new structures and the exact duplicates skipped."""

    indices: np.ndarray  # (n_new,) int64 store rows of the stored structures, in batch order
    duplicates: list[tuple[int, int]] = field(default_factory=list)  # (batch position, store row)


class StructureStore:
    """Labeled structures with provenance in one HDF5 file. Use :meth:`create` / :meth:`open`."""

    def __init__(self, path: str, h5: h5py.File, lock: WriterLock | None) -> None:
        self.path = path
        self._f = h5
        self._lock = lock
        self._broken = False
        self._ds = {name: h5[name] for name in (*ATOM_DATASETS, *STRUCT_DATASETS)}
        self._strings: list[str] = []
        self._codes: dict[str, int] = {}
        self._hashes: dict[bytes, int] = {}
        self._committed = np.zeros(3, dtype=np.int64)
        self.refresh()
        if lock is not None:
            n = int(self._committed[0])
            raw = self._ds["hash"][:n].view("V16").ravel().tolist()
            self._hashes = dict(zip(raw, range(n), strict=True))

    # ---------------------------------------------------------------- opening
    @classmethod
    def create(
        cls, path: str | os.PathLike[str], *, campaign_config: dict[str, Any] | None = None
    ) -> StructureStore:
        """Create a new store (error if ``path`` exists) and return it open for writing."""
        path = os.fspath(path)
        if os.path.exists(path):
            raise FileExistsError(f"store {path!r} already exists; open it with mode='a'")
        config_json = h5file.config_json(campaign_config)
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise FileNotFoundError(f"cannot create store {path!r}: no directory {parent!r}")
        lock = WriterLock(path)
        try:
            if os.path.exists(path):  # created by another process before we got the lock
                raise FileExistsError(f"store {path!r} already exists; open it with mode='a'")
            h5file.build(path, config_json)
            return cls._open_writer(path, lock)
        except BaseException:
            lock.discard()
            raise

    @classmethod
    def open(cls, path: str | os.PathLike[str], mode: str = "r") -> StructureStore:
        """Open a store: ``"r"`` reads (also while a writer appends), ``"a"`` writes
        (single writer; creates the store if missing)."""
        path = os.fspath(path)
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' (read) or 'a' (append), got {mode!r}")
        if mode == "a" and not os.path.exists(path):
            return cls.create(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"store {path!r} does not exist")
        h5file.check_signature(path)
        if mode == "r":
            return cls._wrap(path, h5file.open_reader_file(path), None)
        if not (os.stat(path).st_mode & 0o222) or not os.access(path, os.W_OK):
            raise PermissionError(
                f"store {path!r} is read-only; make it writable (chmod u+w) to append, "
                "or open it with mode='r' to read"
            )
        lock = WriterLock(path)
        try:
            return cls._open_writer(path, lock)
        except BaseException:
            lock.discard()
            raise

    @classmethod
    def _open_writer(cls, path: str, lock: WriterLock) -> StructureStore:
        return cls._wrap(path, h5file.open_writer_file(path), lock)

    @classmethod
    def _wrap(cls, path: str, h5: h5py.File, lock: WriterLock | None) -> StructureStore:
        try:
            return cls(path, h5, lock)
        except BaseException:
            h5.close()
            raise

    # ---------------------------------------------------------------- basics
    @property
    def writable(self) -> bool:
        return self._lock is not None

    @property
    def campaign_config(self) -> dict[str, Any]:
        """The campaign configuration stored at creation."""
        import json

        return json.loads(self._f.attrs["campaign_config"])

    def __len__(self) -> int:
        return int(self._committed[0])

    def __enter__(self) -> StructureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "a" if self.writable else "r"
        return f"StructureStore({self.path!r}, mode={mode!r}, n_structures={len(self)})"

    def close(self) -> None:
        """Close the file and release the writer lock (idempotent)."""
        if self._f.id.valid:
            self._f.close()
        if self._lock is not None:
            self._lock.release()

    def refresh(self) -> None:
        """Readers: pick up structures committed by the writer since opening/last refresh."""
        committed = self._f["committed"]
        if not self.writable:
            committed.refresh()
        counts = committed[:].astype(np.int64)
        if not self.writable:
            # After reading the counts: the writer flushed these rows before committing them,
            # so the refreshed extents cover them even if it has appended more since.
            for ds in self._ds.values():
                ds.refresh()
            self._f["strings"].refresh()
        if counts[2] > len(self._strings):
            raw = self._f["strings"][len(self._strings) : counts[2]].tolist()
            for code, b in enumerate(raw, start=len(self._strings)):
                text = b.decode()
                self._strings.append(text)
                self._codes.setdefault(text, code)
        self._committed = counts

    # ---------------------------------------------------------------- writing
    def append(
        self,
        atoms_list: Sequence[Any],
        provenance: Provenance | Sequence[Provenance] | None = None,
    ) -> AppendResult:
        """Append ASE ``Atoms`` labeled by ``atoms.calc`` (energy, free_energy, forces, stress).

        Without ``provenance`` it is read from each ``atoms.info`` (fields of Provenance).
        """
        if provenance is None:
            provenance = [Provenance.from_info(a.info) for a in atoms_list]
        return self.append_arrays(atoms_to_arrays(atoms_list), provenance)

    def append_arrays(
        self,
        arrays: Mapping[str, Any],
        provenance: Provenance | Sequence[Provenance] | None = None,
    ) -> AppendResult:
        """Append flat ragged arrays (``ubmd.keys`` names; see :func:`make_batch`).

        All-or-nothing: the whole batch is validated before anything is written. Exact
        duplicates (numbers, positions, cell bitwise equal to a stored structure or to an
        earlier one in the batch) are skipped and reported in ``duplicates``.
        """
        self._require_writer()
        batch = make_batch(arrays, provenance)
        n0 = int(self._committed[0])
        keep = np.ones(len(batch), dtype=bool)
        duplicates: list[tuple[int, int]] = []
        new_hashes: dict[bytes, int] = {}
        for i, h in enumerate(batch.hashes()):
            row = self._hashes.get(h, new_hashes.get(h))
            if row is None:
                new_hashes[h] = n0 + len(new_hashes)
            else:
                keep[i] = False
                duplicates.append((i, row))
        if not keep.all():
            batch = _subset(batch, keep)
        if len(batch):
            self._write(batch, np.array(list(new_hashes), dtype="V16").view(np.uint8))
            self._hashes.update(new_hashes)
        return AppendResult(np.arange(n0, n0 + len(batch), dtype=np.int64), duplicates)

    def _write(self, batch: Batch, hashes: np.ndarray) -> None:
        n0, a0, t0 = (int(x) for x in self._committed)
        codes, new_strings = self._encode_strings(batch.columns)
        S, A = len(batch), len(batch.numbers)
        data = {
            "numbers": batch.numbers,
            "positions": batch.positions,
            "forces": batch.forces,
            "n_atoms": batch.n_atoms,
            "atom_offset": a0 + batch.offsets,
            "cell": batch.cell,
            "pbc": batch.pbc,
            "energy": batch.energy,
            "free_energy": batch.free_energy,
            "stress": batch.stress,
            "has_stress": batch.has_stress,
            "hash": hashes.reshape(S, 16),
            "created_at": np.full(S, time.time()),
            **{k: v for k, v in batch.columns.items() if k not in STRING_COLUMNS},
            **codes,
        }
        self._broken = True  # until the commit below has gone through
        if new_strings:
            _put(self._f["strings"], t0, np.array([s.encode() for s in new_strings], STRING_DTYPE))
        for name in ATOM_DATASETS:
            _put(self._ds[name], a0, data[name])
        for name in STRUCT_DATASETS:
            _put(self._ds[name], n0, data[name])
        self._f.flush()  # all data on disk before the commit point moves
        counts = np.array([n0 + S, a0 + A, t0 + len(new_strings)], dtype=np.int64)
        self._f["committed"][:] = counts
        self._f.flush()
        self._broken = False
        self._committed = counts
        for code, text in enumerate(new_strings, start=t0):
            self._strings.append(text)
            self._codes[text] = code

    def _encode_strings(
        self, columns: dict[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], list[str]]:
        new: dict[str, int] = {}
        codes = {}
        for name in STRING_COLUMNS:
            uniq, inverse = np.unique(columns[name].astype(str), return_inverse=True)
            table = []
            for text in uniq.tolist():
                code = self._codes.get(text)
                if code is None:
                    code = new.setdefault(text, len(self._strings) + len(new))
                table.append(code)
            codes[name] = np.asarray(table, dtype=np.int32)[inverse.ravel()]
        return codes, list(new)

    def _require_writer(self) -> None:
        if not self.writable:
            raise StoreError(f"store {self.path!r} is open read-only; open it with mode='a'")
        if not self._f.id.valid:
            raise StoreError(f"store {self.path!r} is closed")
        if self._broken:
            raise StoreError(
                f"an earlier append to {self.path!r} failed part-way; close and reopen the "
                "store (committed structures are intact)"
            )

    # ---------------------------------------------------------------- reading
    def read_arrays(
        self,
        *,
        indices: Sequence[int] | np.ndarray | None = None,
        iteration: int | Sequence[int] | None = None,
        status: str | None = None,
        sampler: str | None = None,
        labeler: str | None = None,
    ) -> dict[str, np.ndarray]:
        """Flat ragged arrays (``ubmd.keys`` names) of the selected structures.

        Per-atom: numbers, positions, forces, batch; per structure: n_atoms, cell, pbc,
        energy, free_energy, stress, has_stress, every provenance column (strings as numpy
        ``str`` arrays), created_at and ``store_index`` (the store row).
        """
        rows = self.select(
            indices=indices, iteration=iteration, status=status, sampler=sampler, labeler=labeler
        )
        return reading.gather(self._ds, rows, self._committed, self._strings)

    def read_tensors(self, device: Any, *, dtype: Any = None, **filters: Any) -> dict[str, Any]:
        """Numeric columns of :meth:`read_arrays` as torch tensors on ``device`` (floating
        ones cast to ``dtype`` if given; string columns are left out)."""
        import torch

        out = {}
        for name, arr in self.read_arrays(**filters).items():
            if arr.dtype.kind not in "fiub":
                continue
            t = torch.from_numpy(np.ascontiguousarray(arr))
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype)
            out[name] = t.to(device)
        return out

    def read_atoms(self, **filters: Any) -> list[Any]:
        """The selected structures as ASE ``Atoms`` (same filters as :meth:`read_arrays`),
        labels in a ``SinglePointCalculator``, provenance in ``atoms.info``."""
        return reading.to_atoms(self.read_arrays(**filters))

    def select(
        self,
        *,
        indices: Sequence[int] | np.ndarray | None = None,
        iteration: int | Sequence[int] | None = None,
        status: str | None = None,
        sampler: str | None = None,
        labeler: str | None = None,
    ) -> np.ndarray:
        """Store rows matching all given filters (``indices`` keeps its order)."""
        if status is not None and status not in (keys.STATUS_OK, keys.STATUS_FAILED):
            raise ValueError(
                f"status {status!r} is not a record status (accepted: "
                f"{keys.STATUS_OK!r}, {keys.STATUS_FAILED!r})"
            )
        n = len(self)
        if indices is None:
            rows = np.arange(n, dtype=np.int64)
        else:
            rows = np.asarray(indices, dtype=np.int64).reshape(-1)
            if rows.size and (rows.min() < -n or rows.max() >= n):
                raise IndexError(f"indices out of range for a store of {n} structures")
            rows = np.where(rows < 0, rows + n, rows)
        mask = np.ones(len(rows), dtype=bool)
        for name, want in (("status", status), ("sampler", sampler), ("labeler", labeler)):
            if want is not None:
                code = self._codes.get(want, -1)
                mask &= reading.column(self._ds[name], rows, n) == code
        if iteration is not None:
            wanted = np.atleast_1d(np.asarray(iteration, dtype=np.int64))
            mask &= np.isin(reading.column(self._ds["iteration"], rows, n), wanted)
        return rows[mask]

    def content_hashes(self, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """(S, 16) uint8 content hashes (numbers, positions, cell) of the given rows (all by
        default): what duplicate detection compares; row order as given."""
        n = len(self)
        rows = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
        if rows.size == 0:
            return np.zeros((0, 16), dtype=np.uint8)
        return self._ds["hash"][:n][rows]

    def info(self) -> dict[str, Any]:
        """Summary: counts by status / iteration / labeler / sampler, elements, attributes."""
        return reading.summary(self, self._f, self._ds, self._strings)


def _put(ds: h5py.Dataset, start: int, values: np.ndarray) -> None:
    ds.resize(start + len(values), axis=0)
    ds[start:] = values


def _subset(batch: Batch, keep: np.ndarray) -> Batch:
    atom_keep = np.repeat(keep, batch.n_atoms)
    return Batch(
        numbers=batch.numbers[atom_keep],
        positions=batch.positions[atom_keep],
        forces=batch.forces[atom_keep],
        n_atoms=batch.n_atoms[keep],
        cell=batch.cell[keep],
        pbc=batch.pbc[keep],
        energy=batch.energy[keep],
        free_energy=batch.free_energy[keep],
        stress=batch.stress[keep],
        has_stress=batch.has_stress[keep],
        columns={k: v[keep] for k, v in batch.columns.items()},
    )
