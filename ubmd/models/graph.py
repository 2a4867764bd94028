"""Batched, neighbour-listed model input (:class:`Graph`).

Neighbour lists come from vesin (C++, cell lists), one call per structure, so building a
graph never loops over atom pairs in Python. Edge vectors are *not* stored: models call
:meth:`Graph.edge_vectors`, which recomputes them from ``positions``, ``cell``, the integer
``cell_shifts`` and the (zero) ``strain`` so autograd reaches positions and strain.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch

from ubmd import keys

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def as_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Accept ``"float32"``/``"float64"`` or the torch dtype; anything else is an error."""
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in _DTYPES:
        return _DTYPES[dtype]
    raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")


def neighbour_list(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float, *, half: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Neighbour list of one structure: ``edge_index (2,E)`` and ``shifts (E,3)``.

    Convention: the vector from i to its neighbour j is ``r_j - r_i + shift @ cell``.
    ``half``: each pair once (either direction); otherwise both directions.
    """
    import vesin

    positions = np.ascontiguousarray(positions, dtype=np.float64)
    pbc = np.asarray(pbc, dtype=bool).reshape(3)
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    if len(positions) < 2:
        return np.zeros((2, 0), np.int64), np.zeros((0, 3), np.int64)
    if pbc.any():
        if abs(np.linalg.det(cell)) < 1e-9:
            raise ValueError(f"periodic structure (pbc={pbc.tolist()}) needs a non-singular cell")
        box, periodic = cell, pbc.tolist() if not pbc.all() else True
    else:
        box, periodic = np.zeros((3, 3)), False
    nl = vesin.NeighborList(cutoff=float(cutoff), full_list=not half)
    i, j, s = nl.compute(positions, box, periodic, quantities="ijS")
    edge_index = np.stack([i, j]).astype(np.int64)
    return edge_index, np.asarray(s, dtype=np.int64).reshape(-1, 3)


@dataclass
class Graph:
    """A batch of S structures with A atoms and E directed edges (see contract.md)."""

    numbers: torch.Tensor  # (A,) int64
    positions: torch.Tensor  # (A, 3) float, Å
    cell: torch.Tensor  # (S, 3, 3) float, rows are lattice vectors
    pbc: torch.Tensor  # (S, 3) bool
    batch: torch.Tensor  # (A,) int64
    n_atoms: torch.Tensor  # (S,) int64
    edge_index: torch.Tensor  # (2, E) int64: (i, j), j a neighbour of i
    cell_shifts: torch.Tensor  # (E, 3) float (integer values)
    strain: torch.Tensor  # (S, 3, 3) float, zero; d/dstrain gives the virial
    # True: edges [0, E/2) hold each pair once and [E/2, E) the same pairs reversed
    # ((j, i), -shift), so models may compute pair terms (distances, radial filters) once.
    half_edges: bool = False

    # ---------------------------------------------------------------- building
    @classmethod
    def from_arrays(
        cls,
        arrays: Mapping[str, Any],
        *,
        cutoff: float,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype = "float64",
    ) -> Graph:
        """Build from flat ragged arrays named by :mod:`ubmd.keys`.

        Needs ``NUMBERS``, ``POSITIONS`` and ``N_ATOMS``; ``CELL`` and ``PBC`` default to
        zero / non-periodic.
        """
        for key in (keys.NUMBERS, keys.POSITIONS, keys.N_ATOMS):
            if key not in arrays:
                raise ValueError(f"arrays need the key {key!r}; got keys {sorted(arrays)}")
        if not cutoff > 0:
            raise ValueError(f"cutoff must be > 0 Å, got {cutoff}")
        numbers = np.asarray(arrays[keys.NUMBERS], dtype=np.int64)
        positions = np.asarray(arrays[keys.POSITIONS], dtype=np.float64).reshape(-1, 3)
        n_atoms = np.asarray(arrays[keys.N_ATOMS], dtype=np.int64).reshape(-1)
        n_struct = len(n_atoms)
        if n_atoms.sum() != len(numbers) or len(numbers) != len(positions):
            raise ValueError(
                f"inconsistent sizes: sum(n_atoms)={n_atoms.sum()}, "
                f"{len(numbers)} numbers, {len(positions)} positions"
            )
        if n_struct == 0 or (n_atoms < 1).any():
            raise ValueError("need at least one structure and at least one atom per structure")
        if not np.isfinite(positions).all():
            raise ValueError("positions contain NaN or inf")
        cell = arrays.get(keys.CELL)
        cell = np.zeros((n_struct, 3, 3)) if cell is None else np.asarray(cell, np.float64)
        cell = cell.reshape(n_struct, 3, 3)
        pbc = arrays.get(keys.PBC)
        pbc = np.zeros((n_struct, 3), bool) if pbc is None else np.asarray(pbc, bool)
        pbc = pbc.reshape(n_struct, 3)

        offsets = np.concatenate([[0], np.cumsum(n_atoms)[:-1]])
        edges, shifts = [], []
        for s in range(n_struct):
            sl = slice(offsets[s], offsets[s] + n_atoms[s])
            e, sh = neighbour_list(positions[sl], cell[s], pbc[s], cutoff, half=True)
            edges.append(e + offsets[s])
            shifts.append(sh)
        edges, shifts = both_directions(np.concatenate(edges, axis=1), np.concatenate(shifts))
        fdtype = as_dtype(dtype)
        graph = cls(
            numbers=torch.as_tensor(numbers),
            positions=torch.as_tensor(positions, dtype=fdtype),
            cell=torch.as_tensor(cell, dtype=fdtype),
            pbc=torch.as_tensor(pbc),
            batch=torch.repeat_interleave(torch.arange(n_struct), torch.as_tensor(n_atoms)),
            n_atoms=torch.as_tensor(n_atoms),
            edge_index=torch.as_tensor(edges),
            cell_shifts=torch.as_tensor(shifts, dtype=fdtype),
            strain=torch.zeros((n_struct, 3, 3), dtype=fdtype),
            half_edges=True,
        )
        return graph.to(device) if device is not None else graph

    @classmethod
    def from_atoms(
        cls,
        atoms: Any,
        *,
        cutoff: float,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype = "float64",
    ) -> Graph:
        """Build from one ``ase.Atoms`` or a sequence of them."""
        return cls.from_arrays(atoms_to_arrays(atoms), cutoff=cutoff, device=device, dtype=dtype)

    @classmethod
    def collate(cls, graphs: Sequence[Graph]) -> Graph:
        """Concatenate graphs (same device and dtype) into one batch; no neighbour search."""
        if not graphs:
            raise ValueError("collate needs at least one graph")
        if len(graphs) == 1:
            return graphs[0]
        half = all(g.half_edges for g in graphs)
        atom_off = 0
        struct_off = 0
        edge_index, shifts, batch = [], [], []
        for g in graphs:
            e, sh = g.edge_index + atom_off, g.cell_shifts
            if half:  # keep all first halves first
                m = e.shape[1] // 2
                e, sh = (e[:, :m], e[:, m:]), (sh[:m], sh[m:])
            edge_index.append(e)
            shifts.append(sh)
            batch.append(g.batch + struct_off)
            atom_off += g.numbers.shape[0]
            struct_off += g.n_atoms.shape[0]
        if half:
            edge_index = [e[0] for e in edge_index] + [e[1] for e in edge_index]
            shifts = [s[0] for s in shifts] + [s[1] for s in shifts]
        cat = {
            f.name: torch.cat([getattr(g, f.name) for g in graphs])
            for f in fields(cls)
            if f.name not in ("edge_index", "cell_shifts", "batch", "half_edges")
        }
        return cls(edge_index=torch.cat(edge_index, dim=1), cell_shifts=torch.cat(shifts),
                   batch=torch.cat(batch), half_edges=half, **cat)  # fmt: skip

    # ---------------------------------------------------------------- moving
    def to(
        self, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
    ) -> Graph:
        """Copy to ``device`` and/or float ``dtype`` (integer tensors keep their type)."""
        fdtype = None if dtype is None else as_dtype(dtype)
        out = {}
        for f in fields(self):
            t = getattr(self, f.name)
            if not isinstance(t, torch.Tensor):
                out[f.name] = t
                continue
            if fdtype is not None and t.is_floating_point():
                t = t.to(dtype=fdtype)
            out[f.name] = t.to(device) if device is not None else t
        return Graph(**out)

    def detach(self) -> Graph:
        """A copy whose positions and strain are fresh leaves (no autograd history)."""
        return replace(
            self,
            positions=self.positions.detach().clone(),
            strain=torch.zeros_like(self.strain),
        )

    @property
    def n_structures(self) -> int:
        return int(self.n_atoms.shape[0])

    @property
    def device(self) -> torch.device:
        return self.positions.device

    @property
    def dtype(self) -> torch.dtype:
        return self.positions.dtype

    # ---------------------------------------------------------------- geometry
    def strained(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions and cell deformed by ``(I + strain)``: ``r' = r (I+ε)``, ``cell' = cell (I+ε)``."""
        eye = torch.eye(3, dtype=self.dtype, device=self.device)
        deform = eye + self.strain  # (S,3,3)
        positions = torch.einsum("ai,aij->aj", self.positions, deform[self.batch])
        cell = torch.bmm(self.cell, deform)
        return positions, cell

    def edge_vectors(self, *, first_half: bool = False) -> torch.Tensor:
        """(E, 3) vectors from atom i to neighbour j, differentiable w.r.t. positions and
        strain; ``first_half``: only edges [0, E/2), each pair once (needs ``half_edges``)."""
        if first_half and not self.half_edges:
            raise ValueError("first_half needs a graph with half_edges=True")
        positions, cell = self.strained()
        edges, shifts = self.edge_index, self.cell_shifts
        if first_half:
            m = edges.shape[1] // 2
            edges, shifts = edges[:, :m], shifts[:m]
        i, j = edges
        shift = torch.einsum("ei,eij->ej", shifts, cell[self.batch[i]])
        return positions[j] - positions[i] + shift

    def volume(self) -> torch.Tensor:
        """(S,) cell volumes, Å^3 (NaN where the structure is not fully periodic)."""
        vol = torch.linalg.det(self.cell).abs()
        return torch.where(self.pbc.all(dim=1), vol, torch.full_like(vol, float("nan")))


def both_directions(edges, shifts):
    """A half list (each pair once) -> ``[pairs; reversed pairs]`` (numpy or torch)."""
    if isinstance(edges, torch.Tensor):
        return torch.cat([edges, edges.flip(0)], dim=1), torch.cat([shifts, -shifts])
    return np.concatenate([edges, edges[::-1]], axis=1), np.concatenate([shifts, -shifts])


def atoms_to_arrays(atoms: Any) -> dict[str, np.ndarray]:
    """Flat ragged arrays (keys.py names) from one ``ase.Atoms`` or a sequence of them."""
    from ase import Atoms

    frames = [atoms] if isinstance(atoms, Atoms) else list(atoms)
    if not frames:
        raise ValueError("need at least one structure, got an empty list")
    for k, a in enumerate(frames):
        if not isinstance(a, Atoms):
            raise TypeError(f"structure {k} is a {type(a).__name__}, expected ase.Atoms")
        if len(a) == 0:
            raise ValueError(f"structure {k} has no atoms")
    return {
        keys.NUMBERS: np.concatenate([a.numbers for a in frames]).astype(np.int64),
        keys.POSITIONS: np.concatenate([a.positions for a in frames]),
        keys.N_ATOMS: np.array([len(a) for a in frames], dtype=np.int64),
        keys.CELL: np.stack([a.cell.array for a in frames]),
        keys.PBC: np.stack([a.pbc for a in frames]),
    }
