"""Candidate frames written by explorers to HDF5, and read back for selection.

Layout (schema version 1), names from :mod:`ubmd.keys`:

* per-atom datasets, ragged over frames (A_total, ...): ``numbers``, ``positions``,
  ``forces`` (model forces), ``atomic_uncertainty``, ``calibrated_atomic_uncertainty``;
* per-frame datasets (S, ...): ``n_atoms``, ``cell``, ``pbc``, ``energy``, ``stress``
  (ASE Voigt, NaN when not computed), ``uncertainty``, ``calibrated_uncertainty``,
  ``features`` (S, K), ``bias_strength``, ``bias_stress_strength``, ``temperature_K``,
  ``pressure_eV_A3``, ``md_step``, ``replica``, ``explorer``, ``stop_reason``,
  ``sampler``. Missing floats are NaN.
* file attributes ``schema_version``, ``kind`` = "ubmd-candidates", and the committed
  counts ``n_frames`` / ``n_atoms_total``, written last after each flush: a reader uses
  only committed rows, so an explorer killed mid-write leaves a readable file.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
from ase import Atoms

from ubmd import keys

SCHEMA_VERSION = 1
KIND = "ubmd-candidates"
_STR = h5py.string_dtype()
# name -> (dtype, per-row shape); None dtype means vlen string
PER_ATOM = {
    keys.NUMBERS: (np.int64, ()),
    keys.POSITIONS: (np.float64, (3,)),
    keys.FORCES: (np.float64, (3,)),
    keys.ATOMIC_UNCERTAINTY: (np.float64, ()),
    keys.CALIBRATED_ATOMIC_UNCERTAINTY: (np.float64, ()),
}
PER_FRAME = {
    keys.N_ATOMS: (np.int64, ()),
    keys.CELL: (np.float64, (3, 3)),
    keys.PBC: (np.bool_, (3,)),
    keys.ENERGY: (np.float64, ()),
    keys.STRESS: (np.float64, (6,)),
    keys.UNCERTAINTY: (np.float64, ()),
    keys.CALIBRATED_UNCERTAINTY: (np.float64, ()),
    keys.BIAS_STRENGTH: (np.float64, ()),
    keys.BIAS_STRESS_STRENGTH: (np.float64, ()),
    keys.TEMPERATURE_K: (np.float64, ()),
    keys.PRESSURE_EV_A3: (np.float64, ()),
    keys.MD_STEP: (np.int64, ()),
    keys.REPLICA: (np.int64, ()),
    keys.EXPLORER: (np.int64, ()),
    keys.STOP_REASON: (None, ()),
    keys.SAMPLER: (None, ()),
}


def _filled(name: str, spec, n: int) -> np.ndarray:
    dtype, shape = spec
    if dtype is None:
        return np.array([""] * n, dtype=object)
    fill = np.nan if np.issubdtype(dtype, np.floating) else 0
    return np.full((n, *shape), fill, dtype=dtype)


class CandidateWriter:
    """Append candidate frames to an HDF5 file (created, or appended to if it exists)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._f = h5py.File(self.path, "a")
        except OSError as exc:
            raise ValueError(f"cannot open candidate file {str(self.path)!r}: {exc}") from None
        f = self._f
        if "schema_version" in f.attrs:
            if int(f.attrs["schema_version"]) != SCHEMA_VERSION or f.attrs.get("kind") != KIND:
                raise ValueError(f"{self.path} is not a ubmd candidate file of schema 1")
        else:
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.attrs["kind"] = KIND
            f.attrs["n_frames"] = 0
            f.attrs["n_atoms_total"] = 0
        for table in (PER_ATOM, PER_FRAME):
            for name, (dtype, shape) in table.items():
                if name not in f:
                    f.create_dataset(
                        name,
                        shape=(0, *shape),
                        maxshape=(None, *shape),
                        dtype=_STR if dtype is None else dtype,
                        chunks=(max(1, 4096 // max(1, int(np.prod(shape)))), *shape),
                    )

    @property
    def n_frames(self) -> int:
        return int(self._f.attrs["n_frames"])

    def append(self, frames: dict[str, np.ndarray]) -> None:
        """Append S frames: per-frame arrays (S, ...) and per-atom arrays (sum n_atoms, ...).

        ``frames[keys.N_ATOMS]`` is required; missing columns are filled with NaN / 0 / "".
        ``keys.FEATURES`` (S, K) may be given; K is fixed by the first write.
        """
        n_atoms = np.asarray(frames[keys.N_ATOMS], dtype=np.int64)
        S, A = len(n_atoms), int(n_atoms.sum())
        f = self._f
        s0, a0 = int(f.attrs["n_frames"]), int(f.attrs["n_atoms_total"])
        for table, n, start in ((PER_ATOM, A, a0), (PER_FRAME, S, s0)):
            for name, spec in table.items():
                data = frames.get(name)
                data = _filled(name, spec, n) if data is None else np.asarray(data)
                if data.shape[0] != n:
                    raise ValueError(f"{name}: {data.shape[0]} rows, expected {n}")
                ds = f[name]
                ds.resize(start + n, axis=0)
                ds[start : start + n] = data.astype(object) if spec[0] is None else data
        feats = frames.get(keys.FEATURES)
        if feats is not None or keys.FEATURES in f:
            k = f[keys.FEATURES].shape[1] if keys.FEATURES in f else np.asarray(feats).shape[1]
            if keys.FEATURES not in f:
                f.create_dataset(
                    keys.FEATURES, shape=(s0, k), maxshape=(None, k), dtype=np.float64,
                    fillvalue=np.nan, chunks=(max(1, 4096 // k), k),
                )  # fmt: skip
            feats = np.full((S, k), np.nan) if feats is None else np.asarray(feats)
            if feats.shape != (S, k):
                raise ValueError(f"features shape {feats.shape}, expected {(S, k)}")
            f[keys.FEATURES].resize(s0 + S, axis=0)
            f[keys.FEATURES][s0 : s0 + S] = feats
        f.flush()
        f.attrs["n_atoms_total"] = a0 + A  # committed counts last: readers trust only these
        f.attrs["n_frames"] = s0 + S
        f.flush()

    def close(self) -> None:
        if self._f.id.valid:
            self._f.close()

    def __enter__(self) -> CandidateWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_candidates(path: str | Path) -> dict[str, np.ndarray]:
    """All committed frames of a candidate file as arrays (strings as ``str``)."""
    with h5py.File(path, "r") as f:
        if f.attrs.get("kind") != KIND:
            raise ValueError(f"{path} is not a ubmd candidate file (kind={f.attrs.get('kind')})")
        S, A = int(f.attrs["n_frames"]), int(f.attrs["n_atoms_total"])
        out = {}
        for name in f:
            n = A if name in PER_ATOM else S
            data = f[name][:n]
            if data.dtype == object or h5py.check_string_dtype(f[name].dtype):
                data = np.array([x.decode() if isinstance(x, bytes) else x for x in data])
            out[name] = data
    return out


def candidates_to_atoms(data: dict[str, np.ndarray], indices=None) -> list[Atoms]:
    """ASE Atoms of frames ``indices`` (all by default); per-frame values go to ``info``,
    per-atom uncertainties and forces to ``arrays``."""
    n_atoms = data[keys.N_ATOMS]
    offsets = np.concatenate([[0], np.cumsum(n_atoms)[:-1]]).astype(int)
    idx = range(len(n_atoms)) if indices is None else indices
    out = []
    for s in idx:
        sl = slice(offsets[s], offsets[s] + n_atoms[s])
        atoms = Atoms(
            numbers=data[keys.NUMBERS][sl],
            positions=data[keys.POSITIONS][sl],
            cell=data[keys.CELL][s],
            pbc=data[keys.PBC][s],
        )
        for name in PER_ATOM:
            if name not in (keys.NUMBERS, keys.POSITIONS) and name in data:
                atoms.arrays[name] = data[name][sl].copy()
        for name in (*PER_FRAME, keys.FEATURES):
            if name in data and name not in (keys.CELL, keys.PBC, keys.N_ATOMS):
                v = data[name][s]
                atoms.info[name] = v.item() if np.ndim(v) == 0 else v.copy()
        atoms.info["frame_index"] = int(s)
        out.append(atoms)
    return out
