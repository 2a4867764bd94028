"""Frame files of a campaign (selections, starts): full-precision extxyz, written atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

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


def write_npy(path: str | os.PathLike[str], values: np.ndarray) -> None:
    """A .npy file, written atomically."""
    write_atomic(path, lambda tmp: _save_npy(tmp, values), suffix=".npy")


def count_frames(path: str | os.PathLike[str]) -> int:
    return len(read_frames(path))


def structure_key(atoms: Any) -> bytes:
    """The store's content hash of a structure (numbers, positions, cell)."""
    from ubmd.store.batch import structure_hash

    return structure_hash(atoms.numbers, atoms.positions, atoms.cell.array)
