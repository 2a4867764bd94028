"""The Potential base class and :func:`compute` (forces and stress by autograd).

See ``contract.md`` in this directory for the interface every potential follows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from ubmd import keys
from ubmd.models.graph import Graph

N_ELEMENTS = 119


def unknown_elements_message(numbers: Any, species: Any) -> str:
    """Which elements a model does not know, by symbol and atomic number."""
    from ase.data import chemical_symbols

    def names(zs: Any) -> str:
        return ", ".join(f"{chemical_symbols[z]} ({z})" for z in sorted({int(z) for z in zs}))

    return (
        f"element(s) {names(numbers)} unknown to this model, which was trained on {names(species)}"
    )


class Potential(nn.Module):
    """Base class of all potentials (see ``ubmd/models/contract.md``).

    Subclasses set ``self.readout`` (per-atom MLP ending in ``Linear(K, 1)``), implement
    :meth:`hyperparameters` (plain values that rebuild the model via ``cls(**hp)``) and
    ``forward(graph)``. Per-species energies: ``E_i = scale[Z_i] * readout(h_i) + shift[Z_i]``.
    """

    readout: nn.Sequential

    def __init__(self, species: Sequence[int], cutoff: float) -> None:
        super().__init__()
        species = sorted({int(z) for z in species})
        if not species or species[0] < 1 or species[-1] >= N_ELEMENTS:
            raise ValueError(f"species must be atomic numbers in 1..118, got {species}")
        if not cutoff > 0:
            raise ValueError(f"cutoff must be > 0 Å, got {cutoff}")
        self.species = species
        self.cutoff = float(cutoff)
        lookup = torch.full((N_ELEMENTS,), -1, dtype=torch.long)
        lookup[species] = torch.arange(len(species))
        self.register_buffer("species_lookup", lookup, persistent=False)
        self.register_buffer("energy_shift", torch.zeros(len(species), dtype=torch.float64))
        self.register_buffer("energy_scale", torch.ones(len(species), dtype=torch.float64))

    # ------------------------------------------------------------------ helpers
    def hyperparameters(self) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def dtype(self) -> torch.dtype:
        return self.energy_shift.dtype

    def species_index(self, numbers: torch.Tensor) -> torch.Tensor:
        """Map atomic numbers to 0..n_species-1; unknown elements raise ValueError."""
        # out-of-range numbers map to index 0 (never a species) so one check covers both cases
        valid = (numbers >= 1) & (numbers < N_ELEMENTS)
        idx = self.species_lookup[torch.where(valid, numbers, 0)]
        # Compiled inference (ubmd.models.compiled) checks elements before the call: a
        # data-dependent branch here would split the compiled graph.
        if not torch.compiler.is_compiling() and bool((idx < 0).any()):
            raise ValueError(unknown_elements_message(numbers[idx < 0].tolist(), self.species))
        return idx

    def scale_shift(self, raw: torch.Tensor, species_idx: torch.Tensor) -> torch.Tensor:
        """Per-atom energies from the raw readout output (A,)."""
        return raw * self.energy_scale[species_idx] + self.energy_shift[species_idx]

    def set_energy_stats(self, shift: Sequence[float], scale: Sequence[float] | float) -> None:
        """Set per-species energy shift (eV) and scale (eV), in ``self.species`` order."""
        shift_t = torch.as_tensor(shift, dtype=self.dtype).reshape(-1)
        scale_t = torch.as_tensor(scale, dtype=self.dtype).reshape(-1).expand(len(self.species))
        if shift_t.numel() != len(self.species):
            raise ValueError(f"need {len(self.species)} shifts, got {shift_t.numel()}")
        if not (torch.isfinite(shift_t).all() and (scale_t > 0).all()):
            raise ValueError(f"shift must be finite and scale > 0, got {shift_t}, {scale_t}")
        self.energy_shift.copy_(shift_t)
        self.energy_scale.copy_(scale_t)

    def graph(self, atoms: Any, device: str | torch.device | None = None) -> Graph:
        """A Graph of ``atoms`` (ase.Atoms or list) with this model's cutoff/dtype/device."""
        device = device if device is not None else self.energy_shift.device
        return Graph.from_atoms(atoms, cutoff=self.cutoff, device=device, dtype=self.dtype)


def compute(
    model: nn.Module,
    graph: Graph,
    *,
    forces: bool = True,
    stress: bool = False,
    create_graph: bool = False,
) -> dict[str, torch.Tensor]:
    """Run ``model`` on ``graph`` and add forces (-dE/dr) and stress ((1/V) dE/dε, ASE sign).

    One ``torch.autograd.grad`` call gives forces and stress together. Stress rows of
    structures that are not periodic in all three directions are NaN. With
    ``create_graph=True`` the results stay differentiable (training, biased MD);
    otherwise outputs are detached. The returned ``"graph"``-free dict also holds
    everything ``model.forward`` returns. For an :class:`~ubmd.models.ensemble.Ensemble`
    the member forces are added as ``keys.ENSEMBLE_FORCES``.
    """
    dtype = getattr(model, "dtype", graph.dtype)
    if graph.dtype != dtype:
        graph = graph.to(dtype=dtype)
    need_grad = forces or stress
    if need_grad:
        graph = replace(
            graph,
            positions=graph.positions.detach().requires_grad_(forces or stress),
            strain=graph.strain.detach().requires_grad_(stress),
        )
    with torch.enable_grad() if need_grad else torch.no_grad():
        out = dict(model(graph))
        if need_grad:
            inputs = [graph.positions] + ([graph.strain] if stress else [])
            member_energy = out.get(keys.ENSEMBLE_ENERGY)
            if forces and member_energy is not None:
                # One grad per member: each member's forces (M, A, 3).
                member_forces = []
                for m in range(member_energy.shape[0]):
                    (g,) = torch.autograd.grad(
                        member_energy[m].sum(),
                        graph.positions,
                        retain_graph=True,
                        create_graph=create_graph,
                    )
                    member_forces.append(-g)
                out[keys.ENSEMBLE_FORCES] = torch.stack(member_forces)
            grads = torch.autograd.grad(
                out[keys.ENERGY].sum(), inputs, create_graph=create_graph, allow_unused=True
            )
            if forces:
                g = grads[0]
                out[keys.FORCES] = -g if g is not None else torch.zeros_like(graph.positions)
            if stress:
                g = grads[-1] if grads[-1] is not None else torch.zeros_like(graph.strain)
                virial = 0.5 * (g + g.transpose(1, 2)) / graph.volume()[:, None, None]
                out[keys.STRESS] = virial[:, keys.VOIGT_ROWS, keys.VOIGT_COLS]
    if not create_graph:
        out = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in out.items()}
    return out
