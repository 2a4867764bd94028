"""Structure files a user hands us: read them so that every error names the file, and check
them before anything is created (finite coordinates, no atoms on top of each other, labels
where labels are needed).

Every command and the campaign's pre-flight read through here, so a bad file fails the same
way everywhere: one line naming the file and what is wrong, before a store, a work folder or a
campaign directory exists.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

# Closer than this, two atoms are the same atom typed twice (or a broken file), in any chemistry.
COINCIDENT_A = 0.1


def read_structures(
    path: str | os.PathLike[str], *, index: str | int = ":", what: str = "structure file"
) -> list[Any]:
    """Frames of ``path`` (extxyz/xyz, ``.db``, a ubmd store ``.h5``, or any file ASE reads:
    CIF, POSCAR, ...) as ``ase.Atoms``; ``index`` selects frames as ASE does (``-1``, ``0:10:2``).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what} {path!r} is a directory, not a file")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} {path!r} does not exist")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{what} {path!r} is empty")
    _check_index(index)
    name = os.path.basename(path).lower()
    if name.endswith((".h5", ".hdf5")):
        frames = _from_store(path, index)
    else:
        try:
            if name.endswith(".db"):
                from ubmd.store.convert import read_ase_db

                frames = _select(read_ase_db(path), index)
            else:
                import ase.io

                fmt = "extxyz" if name.endswith((".extxyz", ".xyz")) else None
                frames = ase.io.read(path, index=index, format=fmt)
        except (IndexError, StopIteration):
            raise ValueError(f"{what} {path!r} has no structure at index {index!r}") from None
        except Exception as exc:  # any parser's complaint about the file's content
            raise ValueError(f"cannot read {what} {path!r}: {_reason(exc)}") from None
    frames = frames if isinstance(frames, list) else [frames]
    if not frames:
        chosen = "" if index == ":" else f" at index {index!r}"
        raise ValueError(f"{what} {path!r} holds no structures{chosen}")
    return frames


_INDEX = re.compile(r"\s*-?\d+\s*|\s*(-?\d+)?\s*:\s*(-?\d+)?\s*(:\s*(-?\d+)?\s*)?")


def _check_index(index: str | int) -> None:
    if isinstance(index, str) and not _INDEX.fullmatch(index):
        raise ValueError(f"frame index {index!r} is not an index or slice (e.g. -1, 0, :, 0:10:2)")


def _from_store(path: str, index: str | int) -> list[Any]:
    from ubmd.store import StructureStore

    with StructureStore.open(path, mode="r") as store:
        frames = store.read_atoms(status="ok")
    try:
        return _select(frames, index)
    except (ValueError, IndexError) as exc:
        raise ValueError(f"store {path!r}: {exc}") from None


def _select(frames: list[Any], index: str | int) -> list[Any]:
    from ase.io.formats import string2index

    chosen = string2index(index) if isinstance(index, str) else index
    if isinstance(chosen, int):
        if not -len(frames) <= chosen < len(frames):
            raise IndexError(f"index {index!r} is out of range ({len(frames)} structures)")
        return [frames[chosen]]
    return frames[chosen]


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    reason = text[0] if text else type(exc).__name__
    return reason if len(reason) <= 200 else reason[:197] + "..."


def check_geometry(frames: Sequence[Any], source: str) -> None:
    """Refuse non-finite coordinates or cells and atoms closer than ``COINCIDENT_A``."""
    from ase.neighborlist import neighbor_list

    for k, atoms in enumerate(frames):
        where = f"{source}, structure {k}" if len(frames) > 1 else source
        if len(atoms) == 0:
            raise ValueError(f"{where} has no atoms")
        pos = atoms.positions
        if not np.isfinite(pos).all():
            bad = int(np.argwhere(~np.isfinite(pos))[0][0])
            raise ValueError(
                f"{where}: atom {bad} has a non-finite coordinate ({pos[bad].tolist()}; NaN or inf)"
            )
        if not np.isfinite(atoms.cell.array).all():
            raise ValueError(f"{where}: the cell is not finite (NaN or inf)")
        if atoms.pbc.any() and atoms.cell.rank < int(atoms.pbc.sum()):
            raise ValueError(f"{where}: periodic along {atoms.pbc.tolist()} but the cell is flat")
        i, j, d = neighbor_list("ijd", atoms, COINCIDENT_A)
        if len(i):
            raise ValueError(
                f"{where}: atoms {int(i[0])} and {int(j[0])} are {float(d[0]):.3f} Å apart "
                f"(coincident atoms; closer than {COINCIDENT_A} Å)"
            )


def check_labels(frames: Sequence[Any], source: str) -> None:
    """Refuse frames without finite energy and forces (stress is optional)."""
    for k, atoms in enumerate(frames):
        results = dict(atoms.calc.results) if atoms.calc is not None else {}
        energy = results.get("energy", atoms.info.get("energy"))
        forces = results.get("forces", atoms.arrays.get("forces"))
        where = f"{source}, structure {k}"
        if energy is None or forces is None:
            missing = "energy" if energy is None else "forces"
            raise ValueError(f"{where} has no {missing}: labelled data needs energy and forces")
        if not np.isfinite(energy) or not np.isfinite(np.asarray(forces, float)).all():
            raise ValueError(f"{where}: its energy or forces are not finite")


def read_checked(
    path: str | os.PathLike[str],
    *,
    index: str | int = ":",
    what: str = "structure file",
    labelled: bool = False,
) -> list[Any]:
    """``read_structures`` then ``check_geometry`` (and ``check_labels`` if ``labelled``)."""
    frames = read_structures(path, index=index, what=what)
    check_geometry(frames, f"{what} {os.fspath(path)!r}")
    if labelled:
        check_labels(frames, f"{what} {os.fspath(path)!r}")
    return frames
