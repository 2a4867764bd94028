"""What the MD engine calls for energies and forces.

Two kinds of force field:

* a **differentiable** model (:class:`DifferentiableModel`): ``outputs(positions, strain,
  state)`` returns tensors differentiable w.r.t. ``positions`` (A, 3) and ``strain``
  (R, 3, 3), with at least ``keys.ENERGY`` (R,) and, for biased runs, an uncertainty
  (``keys.UNCERTAINTY`` (R,) or ``keys.ATOMIC_UNCERTAINTY`` (A,)). The model must apply
  the strain itself: r' = r (I + strain[batch]), cell' = cell (I + strain). The engine
  takes forces, stress and the bias from autograd (:mod:`ubmd.md.bias`).
* a **black-box** force field (:class:`ASEForceField`): energy, forces and stress from
  an ASE calculator, one replica at a time. No uncertainty, so no bias; used to test the
  integrators against ASE and for cheap reference MD (EMT).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator

from ubmd import keys
from ubmd.md.state import MDState


@runtime_checkable
class DifferentiableModel(Protocol):
    """A torch model the engine differentiates (see module docstring)."""

    differentiable: bool  # True
    has_calibration: bool  # whether outputs hold keys.CALIBRATED_* uncertainties

    def outputs(
        self, positions: torch.Tensor, strain: torch.Tensor, state: MDState
    ) -> dict[str, torch.Tensor]: ...


class TorchFunctionModel:
    """Wrap a plain function ``fn(positions, strain, state) -> dict`` as a model."""

    differentiable = True

    def __init__(
        self,
        fn: Callable[[torch.Tensor, torch.Tensor, MDState], dict[str, torch.Tensor]],
        *,
        has_calibration: bool = False,
    ) -> None:
        self.fn = fn
        self.has_calibration = has_calibration

    def outputs(
        self, positions: torch.Tensor, strain: torch.Tensor, state: MDState
    ) -> dict[str, torch.Tensor]:
        return self.fn(positions, strain, state)


def strained(
    positions: torch.Tensor, strain: torch.Tensor, state: MDState
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions and cells deformed by (I + strain), the convention models must follow."""
    eye = torch.eye(3, dtype=strain.dtype, device=strain.device)
    deform = eye + strain
    pos = torch.bmm(positions[:, None, :], deform[state.batch]).squeeze(1)
    return pos, torch.bmm(state.cell, deform)


class ASEForceField:
    """Energy, forces and stress from an ASE calculator, evaluated replica by replica.

    ``calculator`` is one calculator reused for every replica (fine for stateless
    calculators such as EMT) or a factory called once per replica id.
    """

    differentiable = False
    has_calibration = False

    def __init__(self, calculator: Calculator | Callable[[], Calculator]) -> None:
        self._shared = calculator if isinstance(calculator, Calculator) else None
        self._factory = None if self._shared is not None else calculator
        self._per_replica: dict[int, Calculator] = {}
        self._atoms_by_id: dict[int, Atoms] = {}

    def _calc(self, replica_id: int) -> Calculator:
        if self._shared is not None:
            return self._shared
        if replica_id not in self._per_replica:
            self._per_replica[replica_id] = self._factory()
        return self._per_replica[replica_id]

    def _atoms(self, rid: int, numbers, positions, cell, pbc) -> Atoms:
        """A persistent Atoms per replica id, so calculators keep their neighbour lists."""
        atoms = self._atoms_by_id.get(rid)
        if atoms is None or len(atoms) != len(numbers) or (atoms.numbers != numbers).any():
            atoms = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=pbc)
            atoms.calc = self._calc(rid)
            self._atoms_by_id[rid] = atoms
        else:
            atoms.set_cell(cell, scale_atoms=False)
            atoms.set_positions(positions)
            atoms.pbc = pbc
        return atoms

    def compute(self, state: MDState, *, stress: bool) -> dict[str, torch.Tensor]:
        """(R,) energy, (A, 3) forces, (R, 3, 3) stress (zeros when not asked for)."""
        pos = state.positions.detach().cpu().numpy()
        cell = state.cell.detach().cpu().numpy()
        pbc = state.pbc.cpu().numpy()
        num = state.numbers.cpu().numpy()
        energy, forces = np.zeros(state.n_replicas), np.zeros_like(pos)
        sig = np.zeros((state.n_replicas, 3, 3))
        for r in range(state.n_replicas):
            s = state.atom_slice(r)
            atoms = self._atoms(int(state.replica_id[r]), num[s], pos[s], cell[r], pbc[r])
            energy[r] = atoms.get_potential_energy()
            forces[s] = atoms.get_forces()
            if stress:
                sig[r] = atoms.get_stress(voigt=False)
        t = {"dtype": state.dtype, "device": state.device}
        return {
            keys.ENERGY: torch.as_tensor(energy, **t),
            keys.FORCES: torch.as_tensor(forces, **t),
            keys.STRESS: torch.as_tensor(sig, **t),
        }
