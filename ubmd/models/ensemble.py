"""Ensembles of M potentials of the same architecture trained from different seeds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ubmd import keys
from ubmd.models.graph import Graph
from ubmd.models.potential import Potential


class Ensemble(nn.Module):
    """M member potentials evaluated on the same graph.

    ``forward`` returns the member mean for ``ENERGY``/``ATOMIC_ENERGIES`` plus the stacked
    ``keys.ENSEMBLE_ENERGY`` (M, S) and ``"ensemble_atomic_energies"`` (M, A);
    :func:`ubmd.models.compute` adds ``keys.ENSEMBLE_FORCES`` (M, A, 3) and mean forces.
    Latent/last-layer outputs are those of member 0 (single-model uncertainty methods
    applied to an ensemble use its first member).
    """

    def __init__(self, members: Sequence[Potential]) -> None:
        super().__init__()
        members = list(members)
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        first = members[0]
        for k, m in enumerate(members):
            if not isinstance(m, Potential):
                raise TypeError(f"member {k} is a {type(m).__name__}, expected a Potential")
            if m.species != first.species or m.cutoff != first.cutoff:
                raise ValueError(
                    f"member {k} has species {m.species} / cutoff {m.cutoff}, member 0 has "
                    f"{first.species} / {first.cutoff}: members must share them"
                )
        self.members = nn.ModuleList(members)

    @property
    def species(self) -> list[int]:
        return self.members[0].species

    @property
    def cutoff(self) -> float:
        return self.members[0].cutoff

    @property
    def dtype(self) -> torch.dtype:
        return self.members[0].dtype

    @property
    def readout(self) -> nn.Sequential:
        return self.members[0].readout

    def species_index(self, numbers: torch.Tensor) -> torch.Tensor:
        return self.members[0].species_index(numbers)

    def graph(self, atoms: Any, device: str | torch.device | None = None) -> Graph:
        return self.members[0].graph(atoms, device=device)

    def __len__(self) -> int:
        return len(self.members)

    def forward(self, graph: Graph) -> dict[str, torch.Tensor]:
        outs = [m(graph) for m in self.members]
        energies = torch.stack([o[keys.ENERGY] for o in outs])
        atomic = torch.stack([o[keys.ATOMIC_ENERGIES] for o in outs])
        result = dict(outs[0])
        result[keys.ENERGY] = energies.mean(0)
        result[keys.ATOMIC_ENERGIES] = atomic.mean(0)
        result[keys.ENSEMBLE_ENERGY] = energies
        result["ensemble_atomic_energies"] = atomic
        return result
