"""Turning appended input (ASE ``Atoms`` or flat arrays) into one validated batch.

Everything is checked here, before the store writes a byte, so a bad batch leaves the store
unchanged (all-or-nothing).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ubmd import keys
from ubmd.store.provenance import PROVENANCE_FIELDS, Provenance, provenance_columns
from ubmd.store.schema import (
    FLOAT_COLUMNS,
    ID_COLUMNS,
    INT_COLUMNS,
    MAX_ID_BYTES,
    MAX_TEXT_BYTES,
    STATUS_VALUES,
)

_ELLIPSIS = "…".encode()


@dataclass
class Batch:
    """A validated batch: flat per-atom arrays, per-structure arrays, provenance columns."""

    numbers: np.ndarray  # (A,) uint8
    positions: np.ndarray  # (A, 3) f8
    forces: np.ndarray  # (A, 3) f8
    n_atoms: np.ndarray  # (S,) int64
    cell: np.ndarray  # (S, 3, 3) f8
    pbc: np.ndarray  # (S, 3) bool
    energy: np.ndarray  # (S,) f8
    free_energy: np.ndarray  # (S,) f8
    stress: np.ndarray  # (S, 6) f8
    has_stress: np.ndarray  # (S,) bool
    columns: dict[str, np.ndarray]  # provenance: int64 / f8 / object (str) arrays

    def __len__(self) -> int:
        return len(self.n_atoms)

    @property
    def offsets(self) -> np.ndarray:
        return (np.cumsum(self.n_atoms) - self.n_atoms).astype(np.int64)

    def hashes(self) -> list[bytes]:
        """blake2b-128 of each structure's numbers (int64), positions and cell (f8, LE)."""
        offsets = self.offsets.tolist()
        return [
            structure_hash(self.numbers[o : o + n], self.positions[o : o + n], self.cell[s])
            for s, (o, n) in enumerate(zip(offsets, self.n_atoms.tolist(), strict=True))
        ]


def structure_hash(numbers: Any, positions: Any, cell: Any) -> bytes:
    """The content hash duplicate detection compares: blake2b-128 of the numbers (int64),
    positions and cell (float64, little-endian) of one structure."""
    h = hashlib.blake2b(digest_size=16)
    h.update(np.ascontiguousarray(numbers, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(positions, dtype="<f8").tobytes())
    h.update(np.ascontiguousarray(cell, dtype="<f8").reshape(9).tobytes())
    return h.digest()


def stress_to_voigt(stress: np.ndarray, n: int) -> np.ndarray:
    """(n, 6) Voigt from (n, 6) or (n, 3, 3) (off-diagonals averaged, exact if symmetric)."""
    stress = np.asarray(stress, dtype=np.float64)
    if stress.shape == (n, 6):
        return stress
    if stress.shape == (n, 3, 3):
        pairs = zip(keys.VOIGT_ROWS, keys.VOIGT_COLS, strict=True)
        return np.stack([(stress[:, i, j] + stress[:, j, i]) / 2 for i, j in pairs], axis=1)
    raise ValueError(f"stress has shape {stress.shape}; expected ({n}, 6) or ({n}, 3, 3)")


def atoms_to_arrays(atoms_list: Sequence[Any]) -> dict[str, np.ndarray]:
    """Flat arrays from ASE ``Atoms`` whose labels are in ``atoms.calc.results``."""
    n = len(atoms_list)
    n_atoms = np.array([len(a) for a in atoms_list], dtype=np.int64)
    energy = np.full(n, np.nan)
    free_energy = np.full(n, np.nan)
    stress = np.full((n, 6), np.nan)
    has_stress = np.zeros(n, dtype=bool)
    forces = []
    for s, atoms in enumerate(atoms_list):
        results = getattr(atoms.calc, "results", None) or {}
        if "energy" in results:
            energy[s] = _scalar(results["energy"], "energy", s)
        if "free_energy" in results:
            free_energy[s] = _scalar(results["free_energy"], "free_energy", s)
        f = results.get("forces")
        forces.append(np.full((len(atoms), 3), np.nan) if f is None else np.asarray(f, float))
        if results.get("stress") is not None:
            st = np.asarray(results["stress"], dtype=np.float64)
            if st.shape not in ((6,), (3, 3)):
                raise ValueError(
                    f"structure {s}: stress has shape {st.shape}; expected (6,) or (3, 3)"
                )
            stress[s] = stress_to_voigt(st[None], 1)[0]
            has_stress[s] = True
    for s, (f, na) in enumerate(zip(forces, n_atoms.tolist(), strict=True)):
        if f.shape != (na, 3):
            raise ValueError(f"structure {s}: forces have shape {f.shape}, expected ({na}, 3)")
    empty3 = np.zeros((0, 3))
    return {
        keys.NUMBERS: np.concatenate([a.numbers for a in atoms_list] or [np.zeros(0, int)]),
        keys.POSITIONS: np.concatenate([a.positions for a in atoms_list] or [empty3]),
        keys.FORCES: np.concatenate(forces or [empty3]),
        keys.N_ATOMS: n_atoms,
        keys.CELL: np.array([a.cell.array for a in atoms_list]).reshape(n, 3, 3),
        keys.PBC: np.array([a.pbc for a in atoms_list], dtype=bool).reshape(n, 3),
        keys.ENERGY: energy,
        keys.FREE_ENERGY: free_energy,
        keys.STRESS: stress,
        keys.HAS_STRESS: has_stress,
    }


def _scalar(value: Any, name: str, s: int) -> float:
    arr = np.asarray(value, dtype=np.float64)
    if arr.size != 1:
        raise ValueError(f"structure {s}: {name} must be one number, got shape {arr.shape}")
    return float(arr.reshape(()))


def make_batch(
    arrays: Mapping[str, Any],
    provenance: Provenance | Sequence[Provenance] | None = None,
) -> Batch:
    """Validate flat input (``ubmd.keys`` names) and return a :class:`Batch`.

    Required: ``numbers``, ``positions``, ``n_atoms`` and, for "ok" structures, ``energy``
    and ``forces``. Optional: ``cell`` (zeros), ``pbc`` (False), ``free_energy``,
    ``stress`` (+ ``has_stress``), and provenance columns, which override ``provenance``.
    """
    n_atoms = _checked_n_atoms(arrays)
    S, A = len(n_atoms), int(n_atoms.sum())
    numbers = _checked_numbers(arrays[keys.NUMBERS], A)
    positions = _float(arrays[keys.POSITIONS], (A, 3), keys.POSITIONS)
    _finite(positions, keys.POSITIONS)
    cell = _float(arrays.get(keys.CELL, np.zeros((S, 3, 3))), (S, 3, 3), keys.CELL)
    _finite(cell, keys.CELL)
    pbc = _shaped(arrays.get(keys.PBC, np.zeros((S, 3), bool)), (S, 3), keys.PBC).astype(bool)
    energy = _float(arrays.get(keys.ENERGY, np.full(S, np.nan)), (S,), keys.ENERGY)
    free_energy = _float(arrays.get(keys.FREE_ENERGY, np.full(S, np.nan)), (S,), keys.FREE_ENERGY)
    forces = _float(arrays.get(keys.FORCES, np.full((A, 3), np.nan)), (A, 3), keys.FORCES)
    stress, has_stress = _checked_stress(arrays, S)
    columns = provenance_columns(provenance, S)
    for name in PROVENANCE_FIELDS:
        if name in arrays:
            columns[name] = _shaped(arrays[name], (S,), name)
    columns = _normalise_columns(columns, S)
    _check_labels(columns, energy=energy, forces=forces, n_atoms=n_atoms)
    return Batch(
        numbers=numbers.astype(np.uint8),
        positions=positions,
        forces=forces,
        n_atoms=n_atoms,
        cell=cell,
        pbc=pbc,
        energy=energy,
        free_energy=free_energy,
        stress=stress,
        has_stress=has_stress,
        columns=columns,
    )


def _checked_n_atoms(arrays: Mapping[str, Any]) -> np.ndarray:
    """The required arrays are there; ``n_atoms`` as int64, each at least 1."""
    for name in (keys.NUMBERS, keys.POSITIONS, keys.N_ATOMS):
        if name not in arrays:
            raise ValueError(f"append_arrays needs {name!r}; got keys {sorted(arrays)}")
    n_atoms = np.asarray(arrays[keys.N_ATOMS])
    if n_atoms.ndim != 1 or (n_atoms.size and n_atoms.dtype.kind not in "iu"):
        raise ValueError(
            f"n_atoms must be a 1-D integer array, got {n_atoms.dtype} {n_atoms.shape}"
        )
    if n_atoms.size and n_atoms.min() < 1:
        raise ValueError(f"every structure needs at least one atom; n_atoms has {n_atoms.min()}")
    return n_atoms.astype(np.int64)


def _checked_numbers(value: Any, n_total_atoms: int) -> np.ndarray:
    """Atomic numbers: one integer in 0..118 per atom."""
    numbers = _shaped(value, (n_total_atoms,), keys.NUMBERS)
    if n_total_atoms and numbers.dtype.kind not in "iu":
        raise ValueError(f"numbers must be integers, got dtype {numbers.dtype}")
    if n_total_atoms and (numbers.min() < 0 or numbers.max() > 118):
        raise ValueError(f"atomic numbers must be in 0..118, got {numbers.min()}..{numbers.max()}")
    return numbers


def _checked_stress(arrays: Mapping[str, Any], S: int) -> tuple[np.ndarray, np.ndarray]:
    """(Voigt stress, has_stress): a flagged stress is finite, an unflagged one all NaN."""
    if keys.STRESS in arrays and arrays[keys.STRESS] is not None:
        stress = stress_to_voigt(arrays[keys.STRESS], S).copy()
        if keys.HAS_STRESS in arrays:
            has_stress = _shaped(arrays[keys.HAS_STRESS], (S,), keys.HAS_STRESS).astype(bool)
        else:
            has_stress = ~np.isnan(stress).all(axis=1)
    else:
        stress = np.full((S, 6), np.nan)
        has_stress = np.zeros(S, dtype=bool)
    bad = has_stress & ~np.isfinite(stress).all(axis=1)
    if bad.any():
        raise ValueError(f"structures {_first(bad)} have a stress with NaN/inf entries")
    stress[~has_stress] = np.nan
    return stress, has_stress


def _check_labels(
    columns: Mapping[str, np.ndarray],
    *,
    energy: np.ndarray,
    forces: np.ndarray,
    n_atoms: np.ndarray,
) -> None:
    """Known status values; an 'ok' structure has a finite energy and forces, a failed one a
    reason."""
    S = len(n_atoms)
    status = columns["status"]
    unknown = ~np.isin(status, STATUS_VALUES)
    if unknown.any():
        raise ValueError(
            f"unknown status {status[unknown][0]!r} (structure {_first(unknown)}); "
            f"allowed: {', '.join(STATUS_VALUES)}"
        )
    ok = status == "ok"
    no_energy = ok & ~np.isfinite(energy)
    if no_energy.any():
        raise ValueError(
            f"structures {_first(no_energy)} have status 'ok' but no finite energy; give "
            "the energy or record them with status='failed' and a reason"
        )
    atom_ok = np.repeat(ok, n_atoms)
    bad_f = atom_ok & ~np.isfinite(forces).all(axis=1)
    if bad_f.any():
        structure = np.repeat(np.arange(S), n_atoms)[bad_f]
        raise ValueError(
            f"structures {_first(np.isin(np.arange(S), structure))} have status 'ok' but "
            "missing or NaN/inf forces"
        )
    no_reason = ~ok & (columns["reason"] == "")
    if no_reason.any():
        raise ValueError(f"structures {_first(no_reason)} have status 'failed' but no reason")


def _normalise_columns(columns: dict[str, np.ndarray], S: int) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, col in columns.items():
        if name in INT_COLUMNS:
            col = np.asarray(col)
            if col.dtype.kind not in "iu":
                raise ValueError(f"provenance column {name!r} must hold integers, got {col.dtype}")
            info = np.iinfo(INT_COLUMNS[name])
            if col.size and (col.min() < info.min or col.max() > info.max):
                raise ValueError(
                    f"provenance column {name!r} has values {col.min()}..{col.max()} outside "
                    f"the stored {INT_COLUMNS[name]} range {info.min}..{info.max}"
                )
            out[name] = col.astype(np.int64)
        elif name in FLOAT_COLUMNS:
            out[name] = np.asarray(col, dtype=np.float64)
        else:
            out[name] = _strings(name, col)
    return out


def _strings(name: str, col: Any) -> np.ndarray:
    values = np.asarray(col, dtype=object)
    uniq = {}
    for v in set(values.tolist()):
        if not isinstance(v, str):
            raise ValueError(f"provenance column {name!r} holds {v!r}; expected strings")
        uniq[v] = _check_text(name, v)
    if all(k == v for k, v in uniq.items()):
        return values
    return np.array([uniq[v] for v in values.tolist()], dtype=object)


def _check_text(name: str, value: str) -> str:
    if "\x00" in value:
        raise ValueError(f"{name} {value!r} contains a NUL character")
    raw = value.encode()
    if name in ID_COLUMNS:
        if len(raw) > MAX_ID_BYTES:
            raise ValueError(
                f"{name} {value!r} is {len(raw)} bytes long; identifiers are limited to "
                f"{MAX_ID_BYTES} bytes (UTF-8)"
            )
        return value
    if len(raw) <= MAX_TEXT_BYTES:
        return value
    cut = raw[: MAX_TEXT_BYTES - len(_ELLIPSIS)].decode(errors="ignore")
    return cut + "…"


def _first(mask: np.ndarray, k: int = 5) -> str:
    idx = np.flatnonzero(mask)
    more = f" (and {len(idx) - k} more)" if len(idx) > k else ""
    return ", ".join(map(str, idx[:k].tolist())) + more


def _shaped(value: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.shape != shape:
        raise ValueError(f"{name} has shape {arr.shape}; expected {shape} for this batch")
    return arr


def _float(value: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    arr = _shaped(value, shape, name)
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float64)


def _finite(arr: np.ndarray, name: str) -> None:
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf")
