"""Book-keeping of an explorer's replicas: which start structure (and continuation) each
replica runs (:class:`ReplicaPool`), and what a replica's last finite frame needs
(:class:`Snapshot`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from ase import Atoms

from ubmd.md.continuation import WINDOWS, Continuation
from ubmd.md.state import MDState, select_replicas


class ReplicaPool:
    """Which replica runs which start structure.

    Replica ids 0 .. n_runs-1 wait in a queue, n_runs = max(slots, structures): every
    structure runs at least once and spare slots start again from them in turn; replica k
    starts from structure k % n_structures. A structure's continuation (if any) goes with
    its first run only (k < n_structures). ``info`` is the summary's record per replica.
    """

    def __init__(
        self,
        structures: Sequence[Atoms],
        n_slots: int,
        continuations: Sequence[Continuation | None] | None = None,
    ) -> None:
        self.structures = list(structures)
        self.continuations = list(continuations or [None] * len(self.structures))
        if len(self.continuations) != len(self.structures):
            raise ValueError(f"{len(self.continuations)} continuations for "
                             f"{len(self.structures)} start structures")  # fmt: skip
        self.n_runs = max(n_slots, len(self.structures))
        self.info: dict[int, dict] = {}
        self._queue = list(range(self.n_runs))

    @property
    def waiting(self) -> bool:
        return bool(self._queue)

    def take(self, n: int) -> tuple[list[int], list[Atoms], list[Continuation | None]]:
        """The next (up to) ``n`` replica ids, their start structures and continuations."""
        ids, self._queue = self._queue[:n], self._queue[n:]
        n_s = len(self.structures)
        conts = [self.continuations[k] if k < n_s else None for k in ids]
        return ids, [self.structures[k % n_s] for k in ids], conts

    def started(self, ids: Sequence[int], reasons: Sequence[str]) -> None:
        """Replicas ``ids`` started; a non-empty reason stopped one at step 0."""
        for k, reason in zip(ids, reasons, strict=True):
            self.info[k] = {"start_index": k % len(self.structures), "stop_reason": reason,
                            "steps": 0}  # fmt: skip

    def stopped(self, replica_id: int, reason: str, steps: int) -> None:
        self.info[replica_id].update(stop_reason=reason, steps=steps)


@dataclass(frozen=True)
class Snapshot:
    """Copies of what a replica's last finite frame needs, taken before a step: a step
    that goes NaN may leave its tensors changed, in place or not."""

    positions: torch.Tensor
    velocities: torch.Tensor
    cell: torch.Tensor
    step: torch.Tensor
    windows: dict[str, torch.Tensor]  # (the bias replaces its windows, never edits them)

    @classmethod
    def of(cls, state: MDState) -> Snapshot:
        return cls(state.positions.clone(), state.velocities.clone(), state.cell.clone(),
                   state.step.clone(), {k: getattr(state, k) for k in WINDOWS})  # fmt: skip

    def replica(self, state: MDState, r: int) -> MDState:
        """Replica ``r`` of ``state`` (same batch layout) as it was at the snapshot."""
        old = dataclasses.replace(state, positions=self.positions, velocities=self.velocities,
                                  cell=self.cell, step=self.step)  # fmt: skip
        return select_replicas(old, [r])
