"""Where a replica's trajectory stood when a run ended, so that a later run goes on with it.

A streaming explorer runs its replicas in segments, one task each (:mod:`ubmd.campaign.streaming`).
A replica that reached the end of a segment continues in the next one as one trajectory would:
the same positions, velocities and cell, the same step count (the bias window's clock and its
sampling cadence go on) and the adaptive bias's windows as they were. What a new segment does
change: the thermostat's noise is a new stream (each segment seeds its own), and when a newer
model was published in between, forces and window samples from then on are the new model's.
Metadynamics hills (``sampler: uncertainty_cv``) are not carried: a segment starts with none.

The windows are kept as they were *before* the replica's last force evaluation: the next run
evaluates the same positions again (:func:`ubmd.md.integrators.initialize`), which puts that
sample back. So with the same model and no thermostat noise, two runs joined by a continuation
make the same trajectory as one run of both lengths.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from ase import Atoms

from ubmd.md.state import MDState, state_to_atoms

WINDOWS = ("win_f2", "win_g2", "win_s2", "win_gs2")  # MDState's per-replica bias windows


@dataclass(frozen=True)
class Continuation:
    """One replica's trajectory at the end of a run (units as :class:`MDState`)."""

    numbers: np.ndarray  # (N,) int
    positions: np.ndarray  # (N, 3) Å
    velocities: np.ndarray  # (N, 3) Å / ASE time
    cell: np.ndarray  # (3, 3) Å
    pbc: np.ndarray  # (3,) bool
    step: int  # MD steps the trajectory has run
    windows: Mapping[str, np.ndarray]  # WINDOWS -> (W,) before the last evaluation's sample

    def atoms(self) -> Atoms:
        """The structure (no velocities: the run takes them from the continuation)."""
        return Atoms(numbers=self.numbers, positions=self.positions, cell=self.cell, pbc=self.pbc)

    def to_json(self) -> dict[str, Any]:
        """Plain lists: floats keep every digit through JSON."""
        out: dict[str, Any] = {
            "numbers": self.numbers.tolist(),
            "positions": self.positions.tolist(),
            "velocities": self.velocities.tolist(),
            "cell": self.cell.tolist(),
            "pbc": self.pbc.tolist(),
            "step": int(self.step),
        }
        out["windows"] = {k: np.asarray(v).tolist() for k, v in self.windows.items()}
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Continuation:
        return cls(
            numbers=np.asarray(data["numbers"], dtype=np.int64),
            positions=np.asarray(data["positions"], dtype=np.float64),
            velocities=np.asarray(data["velocities"], dtype=np.float64),
            cell=np.asarray(data["cell"], dtype=np.float64),
            pbc=np.asarray(data["pbc"], dtype=bool),
            step=int(data["step"]),
            windows={k: np.asarray(v, dtype=np.float64) for k, v in data["windows"].items()},
        )


def capture(state: MDState, r: int, windows_before: Mapping[str, torch.Tensor]) -> Continuation:
    """Replica ``r`` of ``state`` as it ends; ``windows_before``: the state's windows before the
    step that made its last evaluation."""
    atoms = state_to_atoms(state, r)
    return Continuation(
        numbers=atoms.numbers,
        positions=atoms.positions.astype(np.float64),
        velocities=atoms.get_velocities().astype(np.float64),
        cell=atoms.cell.array.astype(np.float64),
        pbc=atoms.pbc,
        step=int(state.step[r]),
        windows={
            k: windows_before[k][r].detach().cpu().numpy().astype(np.float64) for k in WINDOWS
        },
    )


def resume(state: MDState, rows: Mapping[int, Continuation]) -> None:
    """Give rows of a freshly made ``state`` the positions, cell, velocities, step and bias
    windows of their continuations, in place (the row's structure gives the rest)."""
    for r, c in rows.items():
        s = state.atom_slice(r)
        if c.numbers.shape != (s.stop - s.start,) or not np.array_equal(
            c.numbers, state.numbers[s].cpu().numpy()
        ):
            raise ValueError(f"continuation of row {r} is not the structure the row holds")
        as_state = {"dtype": state.dtype, "device": state.device}
        state.positions[s] = torch.as_tensor(c.positions, **as_state)
        state.cell[r] = torch.as_tensor(c.cell, **as_state)
        state.velocities[s] = torch.as_tensor(c.velocities, **as_state)
        state.step[r] = int(c.step)
        for name in WINDOWS:
            win = getattr(state, name)
            value = torch.as_tensor(c.windows[name], **as_state)
            if value.shape != win[r].shape:
                raise ValueError(
                    f"continuation of row {r}: bias window {name} has {tuple(value.shape)} "
                    f"samples, this run keeps {tuple(win[r].shape)}; the bias window or "
                    "norm_every changed between the runs"
                )
            win[r] = value
