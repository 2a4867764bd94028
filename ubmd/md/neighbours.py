"""Verlet neighbour lists for the batched engine (one per replica, kept across steps).

Each replica's candidate pairs are found with vesin within ``cutoff + skin`` and kept
until one of its atoms has moved more than ``skin / 2`` since that search (measured in
the reference cell, with the cell's deformation counted against the skin under NPT), or
it is a new replica. Every step keeps the candidates closer than
``cutoff`` (one gather and norm in torch), so the model sees exactly the pairs a fresh
search would give, while the search itself runs every few tens of steps instead of every
step. Decisions are per replica, so a replica's list never depends on its batch mates.

The candidates' distances of the last call also answer the explorer's stop rule on atoms
too close (:meth:`VerletLists.min_distances`): no all-pairs distances of its own per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ubmd.md.state import MDState
from ubmd.models.compiled import check_elements
from ubmd.models.graph import Graph, both_directions, neighbour_list


@dataclass
class _ReplicaList:
    numbers: np.ndarray  # (n,) the replica's elements (a refilled slot may hold another system)
    ref_positions: torch.Tensor  # (n, 3) positions at the last search
    ref_cell: torch.Tensor  # (3, 3)
    edges: torch.Tensor  # (2, e) int64, local atom indices, each pair once
    shifts: torch.Tensor  # (e, 3) int64 cell shifts


@dataclass(frozen=True)
class _Pairs:
    """Squared distances of the candidate pairs of one ``graph`` call, and what they are of."""

    positions: torch.Tensor  # the state's positions tensor itself (not a copy)
    version: int  # its in-place version counter then
    cell: torch.Tensor  # the state's cell tensor itself
    cell_version: int
    replica: torch.Tensor  # (e,) batch index of each pair's replica
    d2: torch.Tensor  # (e,) squared distances, Å^2


class VerletLists:
    """Neighbour lists of a batch of replicas, refreshed lazily (see module docstring).

    ``skin_A = 0`` searches every step (the plain behaviour).
    """

    def __init__(
        self, cutoff: float, *, skin_A: float = 1.0, species: set[int] | None = None
    ) -> None:
        if not cutoff > 0:
            raise ValueError(f"cutoff must be > 0 Å, got {cutoff}")
        if not skin_A >= 0:
            raise ValueError(f"skin_A must be >= 0 Å, got {skin_A}")
        self.cutoff = float(cutoff)
        self.skin = float(skin_A)
        # elements are checked when a replica is first searched: compiled models skip it
        self.species = None if species is None else {int(z) for z in species}
        self._lists: dict[int, _ReplicaList] = {}
        self._last_layout: tuple | None = None  # (replica ids, atom counts) of the last call
        self.n_searches = 0  # replica searches done (for tests and benchmarks)
        self._pairs: _Pairs | None = None  # candidate distances of the last graph() call

    def _search(self, pos: torch.Tensor, cell: torch.Tensor, pbc, numbers) -> _ReplicaList:
        if self.species is not None:
            check_elements(numbers, self.species)
        p = pos.detach().cpu().numpy().astype(np.float64, copy=True)
        bad = ~np.isfinite(p).all(1)
        if bad.any():  # blown-up replica: spread its atoms so it has no edges (stop rule acts)
            p[bad] = 1e3 * np.arange(1, int(bad.sum()) + 1)[:, None]
        edges, shifts = neighbour_list(p, cell.detach().cpu().numpy(), pbc,
                                       self.cutoff + self.skin, half=True)  # fmt: skip
        self.n_searches += 1
        dev = pos.device
        return _ReplicaList(
            numbers=np.asarray(numbers),
            ref_positions=pos.detach().clone(),
            ref_cell=cell.detach().clone(),
            edges=torch.as_tensor(edges, device=dev),
            shifts=torch.as_tensor(shifts, device=dev),
        )

    def _layout(self, state: MDState) -> tuple:
        return (tuple(state.replica_id.tolist()), tuple(state.n_atoms.tolist()))

    def _stale(self, state: MDState, pos: torch.Tensor, same_layout: bool) -> list[bool]:
        """Per replica: does its list need a new search?"""
        R = state.n_replicas
        if self.skin == 0:
            return [True] * R
        if not same_layout:  # gather what is known of these replicas, in batch order
            self._gather(state, pos)
        # Periodic cells may deform (NPT): h = h0 D. Mapped back to the reference cell
        # (r D^-1), a pair within the cutoff now lies within cutoff / s_min(D) there, so the
        # list stays complete while 2 max|r D^-1 - r0| + cutoff (1/s_min(D) - 1) <= skin.
        cell = state.cell.detach()
        changed = (self._ref_cell != cell).flatten(1).any(1)
        periodic = state.pbc.all(1)
        mapped, stretch = pos, torch.ones(R, dtype=pos.dtype, device=pos.device)
        deformed = changed & periodic
        if bool(deformed.any()):  # (NVT runs skip this)
            eye = torch.eye(3, dtype=cell.dtype, device=cell.device).expand(R, 3, 3)
            d_inv = torch.where(deformed[:, None, None],
                                torch.linalg.solve(torch.where(deformed[:, None, None], cell, eye),
                                                   self._ref_cell), eye)  # fmt: skip
            mapped = torch.bmm(pos[:, None, :], d_inv[state.batch]).squeeze(1)
            stretch = torch.linalg.svdvals(d_inv)[:, 0]  # 1 / s_min(D)
        d2 = ((mapped - self._ref_pos) ** 2).sum(-1)
        d2 = torch.where(torch.isfinite(d2), d2, torch.full_like(d2, float("inf")))
        max_d2 = torch.zeros(R, dtype=d2.dtype, device=d2.device)
        max_d2 = max_d2.scatter_reduce(0, state.batch, d2, reduce="amax")
        need = 2 * max_d2.sqrt() + self.cutoff * (stretch - 1)
        stale = (need > self.skin) | ~torch.isfinite(need) | (changed & ~periodic)
        return (stale | self._unknown).tolist()

    def _gather(self, state: MDState, pos: torch.Tensor) -> None:
        """Batch-ordered reference positions/cells of the known replicas (new ones: unknown)."""
        numbers = state.numbers.cpu().numpy()
        offsets = np.cumsum([0, *state.n_atoms.tolist()])
        refs, cells, unknown = [], [], []
        for r, rid in enumerate(state.replica_id.tolist()):
            k = self._lists.get(int(rid))
            sl = slice(offsets[r], offsets[r + 1])
            ok = k is not None and np.array_equal(k.numbers, numbers[sl])
            refs.append(k.ref_positions if ok else torch.zeros_like(pos[sl]))
            cells.append(k.ref_cell if ok else torch.zeros_like(state.cell[r]))
            unknown.append(not ok)
        self._ref_pos = torch.cat(refs)
        self._ref_cell = torch.stack(cells)
        self._unknown = torch.tensor(unknown, device=pos.device)

    def graph(self, state: MDState) -> Graph:
        """The neighbour-listed Graph of ``state`` (positions and strain still to be set)."""
        pos = state.positions.detach()
        layout = self._layout(state)
        same_layout = layout == self._last_layout
        stale = self._stale(state, pos, same_layout)
        if not same_layout:
            rids = set(layout[0])
            # forget replicas that left the batch
            for rid in set(self._lists) - rids:
                del self._lists[rid]
        if any(stale) or not same_layout:
            offsets = np.cumsum([0, *layout[1]])
            numbers = state.numbers.cpu().numpy()
            pbc = state.pbc.cpu().numpy()
            for r, rid in enumerate(layout[0]):
                if stale[r]:
                    sl = slice(offsets[r], offsets[r + 1])
                    lst = self._search(pos[sl], state.cell[r], pbc[r], numbers[sl])
                    self._lists[rid] = lst
                    if self.skin > 0:
                        self._ref_pos[sl] = lst.ref_positions
                        self._ref_cell[r] = lst.ref_cell
            if self.skin > 0:
                self._unknown = torch.zeros_like(self._unknown)
            lists = [self._lists[rid] for rid in layout[0]]
            counts = torch.tensor([lst.edges.shape[1] for lst in lists], device=pos.device)
            shift = torch.repeat_interleave(
                torch.as_tensor(offsets[:-1], device=pos.device), counts
            )
            self._edges = torch.cat([lst.edges for lst in lists], dim=1) + shift
            self._edge_replica = torch.repeat_interleave(
                torch.arange(len(lists), device=pos.device), counts
            )
            self._shifts = torch.cat([lst.shifts for lst in lists]).to(state.dtype)
            self._periodic = bool(self._shifts.any())
            self._last_layout = layout
        edge_index, cell_shifts = self._edges, self._shifts
        self._pairs = None
        if self.skin > 0 and edge_index.shape[1]:
            i, j = edge_index
            vec = pos[j] - pos[i]
            if self._periodic:
                vec = vec + torch.einsum("ei,eij->ej", cell_shifts, state.cell[state.batch[i]])
            d2 = (vec * vec).sum(-1)
            keep = d2 < self.cutoff**2
            edge_index, cell_shifts = edge_index[:, keep], cell_shifts[keep]
            self._pairs = _Pairs(state.positions, state.positions._version, state.cell,
                                 state.cell._version, self._edge_replica, d2)  # fmt: skip
        edge_index, cell_shifts = both_directions(edge_index, cell_shifts)
        return Graph(
            numbers=state.numbers,
            positions=pos,
            cell=state.cell.detach(),
            pbc=state.pbc,
            batch=state.batch,
            n_atoms=state.n_atoms,
            edge_index=edge_index,
            cell_shifts=cell_shifts,
            strain=torch.zeros_like(state.cell),
            half_edges=True,
        )

    def min_distances(self, state: MDState, bound: float) -> torch.Tensor | None:
        """(R,) smallest distance between two atoms of each replica (Å; inf where no pair
        is within the cutoff, NaN where a position is not finite), exact below ``bound``,
        from the candidate pairs of the last :meth:`graph` call: no search, no all-pairs
        distances. None where that call was not for ``state``'s current positions and cell
        (moved, changed in place, another batch), where ``bound`` exceeds the cutoff, and
        with ``skin_A = 0`` (no candidates kept).

        Every pair closer than the cutoff is a candidate; periodic images count as in the
        model (an atom and its own image in a cell shorter than the cutoff too).
        """
        pairs = self._pairs
        if (
            pairs is None
            or bound > self.cutoff
            or pairs.positions is not state.positions
            or pairs.version != state.positions._version
            or pairs.cell is not state.cell
            or pairs.cell_version != state.cell._version
        ):
            return None
        d2 = pairs.d2
        out = torch.full((state.n_replicas,), float("inf"), dtype=d2.dtype, device=d2.device)
        return out.scatter_reduce(0, pairs.replica, d2, "amin").sqrt()
