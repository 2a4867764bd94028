"""Frame files of a campaign (selections, starts): full-precision extxyz, written atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ubmd import keys
from ubmd.campaign.layout import write_atomic


def write_frames(path: str | os.PathLike[str], frames: list[Any]) -> None:
    """Full-precision extxyz, written atomically."""
    from ubmd.store.convert import write_extxyz

    write_atomic(path, lambda tmp: write_extxyz(tmp, frames), suffix=".extxyz")


def read_frames(path: str | os.PathLike[str]) -> list[Any]:
    from ubmd.store.convert import read_extxyz

    return read_extxyz(path) if Path(path).stat().st_size else []


def _save_npy(path: Path, values: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, values)


def count_frames(path: str | os.PathLike[str]) -> int:
    return len(read_frames(path))


def structure_key(atoms: Any) -> bytes:
    """The store's content hash of a structure (numbers, positions, cell)."""
    from ubmd.campaign.labels import _provenance
    from ubmd.store.batch import make_batch

    arrays = {
        keys.NUMBERS: atoms.numbers,
        keys.POSITIONS: atoms.positions,
        keys.N_ATOMS: np.array([len(atoms)]),
        keys.CELL: atoms.cell.array[None],
        keys.PBC: atoms.pbc[None],
    }
    return make_batch(arrays, _provenance({"status": "failed", "reason": "key"})).hashes()[0]
