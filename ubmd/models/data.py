"""Labelled training data for the models: conversion from ASE, extxyz, stores and arrays.

Everything becomes :class:`LabelledData` (flat ragged arrays with keys.py names) and then
per-structure :class:`Sample` objects (a Graph plus label tensors) that batch by
concatenation, so neighbour lists are built once per training run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ubmd import keys
from ubmd.models.graph import Graph, atoms_to_arrays

LABEL_KEYS = (keys.ENERGY, keys.FORCES, keys.STRESS, keys.HAS_STRESS)


def _labels_of(atoms: Any, k: int) -> tuple[float, np.ndarray, np.ndarray | None]:
    results = dict(atoms.calc.results) if atoms.calc is not None else {}
    energy = results.get("energy", atoms.info.get("energy"))
    forces = results.get("forces", atoms.arrays.get("forces"))
    stress = results.get("stress", atoms.info.get("stress"))
    if energy is None or forces is None:
        raise ValueError(
            f"structure {k} ({atoms.get_chemical_formula()}) has no energy/forces labels "
            "(expected a calculator result or info['energy'] / arrays['forces'])"
        )
    if stress is not None:
        stress = np.asarray(stress, float)
        if stress.shape == (3, 3):
            stress = stress[list(keys.VOIGT_ROWS), list(keys.VOIGT_COLS)]
    return float(energy), np.asarray(forces, float), stress


def labelled_arrays(data: Any) -> dict[str, np.ndarray]:
    """Flat arrays with structure and labels from any accepted data source.

    Accepted: a sequence of labelled ``ase.Atoms``, a path (or list of paths) to extxyz/any
    ASE-readable file or a ubmd store (``.h5``), an object with ``read_arrays(status=...)``
    (a ``StructureStore``), or a mapping of arrays (keys.py names).
    """
    if isinstance(data, Mapping):
        arrays = {k: np.asarray(v) for k, v in data.items()}
    elif hasattr(data, "read_arrays"):
        arrays = {k: np.asarray(v) for k, v in data.read_arrays(status=keys.STATUS_OK).items()}
    elif isinstance(data, str | os.PathLike):
        arrays = _read_path(os.fspath(data))
    elif isinstance(data, Sequence) and data and isinstance(data[0], str | os.PathLike):
        return concat_arrays([labelled_arrays(p) for p in data])
    else:
        frames = list(data)
        if not frames:
            raise ValueError("the training set is empty: got no structures")
        arrays = atoms_to_arrays(frames)
        labels = [_labels_of(a, k) for k, a in enumerate(frames)]
        arrays[keys.ENERGY] = np.array([e for e, _, _ in labels])
        arrays[keys.FORCES] = np.concatenate([f for _, f, _ in labels])
        arrays[keys.HAS_STRESS] = np.array([s is not None for _, _, s in labels])
        arrays[keys.STRESS] = np.stack(
            [s if s is not None else np.full(6, np.nan) for _, _, s in labels]
        )
    return check_arrays(arrays)


def _read_path(path: str) -> dict[str, np.ndarray]:
    if path.endswith((".h5", ".hdf5")) and os.path.isfile(path):
        from ubmd.store import StructureStore  # another module; imported only when needed

        with StructureStore.open(path, mode="r") as store:
            try:
                return labelled_arrays(store)
            except ValueError as exc:
                raise ValueError(f"store {path!r}: {exc}") from None
    from ubmd.inputs import check_geometry, read_structures

    frames = read_structures(path, what="data file")
    check_geometry(frames, f"data file {path!r}")
    try:
        return labelled_arrays(frames)
    except ValueError as exc:
        raise ValueError(f"data file {path!r}: {exc}") from None


def concat_arrays(parts: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    names = set(parts[0])
    for p in parts[1:]:
        names &= set(p)
    return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in names}


def check_arrays(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Validate labelled arrays: non-empty, consistent, finite labels."""
    for key in (keys.NUMBERS, keys.POSITIONS, keys.N_ATOMS, keys.ENERGY, keys.FORCES):
        if key not in arrays:
            raise ValueError(f"labelled data needs {key!r}; got {sorted(arrays)}")
    n_atoms = np.asarray(arrays[keys.N_ATOMS])
    if len(n_atoms) == 0:
        raise ValueError("the training set is empty: got no structures")
    n_struct = len(n_atoms)
    energy = np.asarray(arrays[keys.ENERGY], float).reshape(-1)
    forces = np.asarray(arrays[keys.FORCES], float).reshape(-1, 3)
    if len(energy) != n_struct or len(forces) != n_atoms.sum():
        raise ValueError(f"{len(energy)} energies / {len(forces)} forces for {n_struct} structures")
    bad = np.flatnonzero(~np.isfinite(energy))
    if bad.size:
        raise ValueError(f"NaN/inf energy labels in structures {bad[:10].tolist()}")
    batch = np.repeat(np.arange(n_struct), n_atoms)
    bad = np.unique(batch[~np.isfinite(forces).all(axis=1)])
    if bad.size:
        raise ValueError(f"NaN/inf force labels in structures {bad[:10].tolist()}")
    has_stress = np.asarray(arrays.get(keys.HAS_STRESS, np.zeros(n_struct, bool)), bool)
    stress = np.asarray(arrays.get(keys.STRESS, np.full((n_struct, 6), np.nan)), float)
    stress = stress.reshape(n_struct, 6)
    bad = np.flatnonzero(has_stress & ~np.isfinite(stress).all(axis=1))
    if bad.size:
        raise ValueError(f"NaN/inf stress labels in structures {bad[:10].tolist()}")
    out = dict(arrays)
    out.update({keys.ENERGY: energy, keys.FORCES: forces})
    out.update({keys.HAS_STRESS: has_stress, keys.STRESS: stress})
    return out


def select(arrays: Mapping[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    """The structures ``idx`` of flat arrays (per-atom and per-structure keys)."""
    n_atoms = np.asarray(arrays[keys.N_ATOMS])
    offsets = np.concatenate([[0], np.cumsum(n_atoms)[:-1]])
    atom_idx = np.concatenate(
        [np.zeros(0, dtype=np.int64)]  # an empty selection is an empty set, not an error
        + [np.arange(offsets[s], offsets[s] + n_atoms[s]) for s in idx]
    )
    n_struct, n_total = len(n_atoms), int(n_atoms.sum())
    out = {}
    for k, v in arrays.items():
        v = np.asarray(v)
        if v.ndim and v.shape[0] == n_total and k in (keys.NUMBERS, keys.POSITIONS, keys.FORCES):
            out[k] = v[atom_idx]
        elif v.ndim and v.shape[0] == n_struct:
            out[k] = v[idx]
    return out


@dataclass
class Sample:
    """One structure (or a collated batch): graph plus labels on the graph's device."""

    graph: Graph
    energy: torch.Tensor  # (S,)
    forces: torch.Tensor  # (A, 3)
    stress: torch.Tensor  # (S, 6), zeros where has_stress is False
    has_stress: torch.Tensor  # (S,) bool

    @staticmethod
    def collate(samples: Sequence[Sample]) -> Sample:
        return Sample(
            graph=Graph.collate([s.graph for s in samples]),
            energy=torch.cat([s.energy for s in samples]),
            forces=torch.cat([s.forces for s in samples]),
            stress=torch.cat([s.stress for s in samples]),
            has_stress=torch.cat([s.has_stress for s in samples]),
        )


def make_samples(
    arrays: Mapping[str, np.ndarray],
    *,
    cutoff: float,
    device: str | torch.device,
    dtype: torch.dtype,
) -> list[Sample]:
    """One :class:`Sample` per structure (neighbour lists built here, once)."""
    n_atoms = np.asarray(arrays[keys.N_ATOMS])
    offsets = np.concatenate([[0], np.cumsum(n_atoms)[:-1]])
    cells = arrays.get(keys.CELL, np.zeros((len(n_atoms), 3, 3)))
    pbcs = arrays.get(keys.PBC, np.zeros((len(n_atoms), 3), bool))
    samples = []
    for s, n in enumerate(n_atoms):
        sl = slice(offsets[s], offsets[s] + n)
        graph = Graph.from_arrays(
            {
                keys.NUMBERS: arrays[keys.NUMBERS][sl],
                keys.POSITIONS: arrays[keys.POSITIONS][sl],
                keys.N_ATOMS: [n],
                keys.CELL: np.asarray(cells[s])[None],
                keys.PBC: np.asarray(pbcs[s])[None],
            },
            cutoff=cutoff,
            device=device,
            dtype=dtype,
        )
        has = bool(arrays[keys.HAS_STRESS][s])
        stress = arrays[keys.STRESS][s] if has else np.zeros(6)

        def t(x):
            return torch.as_tensor(np.asarray(x), dtype=dtype, device=device)

        samples.append(
            Sample(
                graph=graph,
                energy=t([arrays[keys.ENERGY][s]]),
                forces=t(arrays[keys.FORCES][sl]),
                stress=t(stress).reshape(1, 6),
                has_stress=torch.tensor([has], device=device),
            )
        )
    return samples


def fit_energy_stats(
    arrays: Mapping[str, np.ndarray], species: Sequence[int]
) -> tuple[np.ndarray, float]:
    """Per-species shift (least squares of E on composition) and scale (force RMS), eV."""
    n_atoms = np.asarray(arrays[keys.N_ATOMS])
    batch = np.repeat(np.arange(len(n_atoms)), n_atoms)
    index = {z: k for k, z in enumerate(species)}
    counts = np.zeros((len(n_atoms), len(species)))
    np.add.at(counts, (batch, [index[int(z)] for z in arrays[keys.NUMBERS]]), 1.0)
    energy = np.asarray(arrays[keys.ENERGY], float)
    # min-norm least squares: well defined even when all structures share one composition
    shift = np.linalg.lstsq(counts, energy, rcond=None)[0]
    forces = np.asarray(arrays[keys.FORCES], float)
    scale = float(np.sqrt(np.mean(forces**2))) if forces.size else 0.0
    if not scale > 1e-6:
        resid = (energy - counts @ shift) / n_atoms
        scale = float(resid.std()) if resid.std() > 1e-6 else 1.0
    return shift, scale
