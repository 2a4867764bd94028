"""Built-in potential: PaiNN, a compact equivariant message-passing network.

Reference: K. T. Schütt, O. T. Unke, M. Gastegger, "Equivariant message passing for the
prediction of tensorial properties and molecular spectra", ICML 2021 (arXiv:2102.03150).

Each atom carries scalar features ``s_i`` (F) and vector features ``v_i`` (F, 3).
A layer is a *message* (continuous filters on a Bessel radial basis times a smooth
polynomial cutoff, mixing neighbour scalars, neighbour vectors and edge directions) and
an *update* (scalar/vector mixing within the atom). Only distances and direction vectors
enter, so energies are invariant and forces equivariant. The per-atom readout MLP maps
the final ``s_i`` (the latent feature) to one number; atomic energies are
``E_i = scale[Z_i] * readout(s_i) + shift[Z_i]`` with shift/scale fitted from data.

All sums over neighbours use ``index_add`` (no Python loops over atoms or edges); with
the defaults (2 layers of 32 features, 5 Å cutoff) energy and forces of alanine
dipeptide take about 2-4 ms on one CPU core (see tests/benchmarks/model_bench.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ubmd import keys
from ubmd.models.graph import Graph
from ubmd.models.potential import Potential


class BesselBasis(nn.Module):
    """``sqrt(2/rc) sin(n π r / rc) / r`` times a smooth polynomial envelope (p=6)."""

    def __init__(self, cutoff: float, n_basis: int, p: int = 6) -> None:
        super().__init__()
        self.cutoff = cutoff
        self.p = p
        self.register_buffer("freq", torch.arange(1, n_basis + 1) * math.pi / cutoff)

    def envelope(self, r: torch.Tensor) -> torch.Tensor:
        # DimeNet's polynomial envelope: value, first and second derivative vanish at rc.
        x = r / self.cutoff
        p = self.p
        env = (
            1
            - (p + 1) * (p + 2) / 2 * x**p
            + p * (p + 2) * x ** (p + 1)
            - p * (p + 1) / 2 * x ** (p + 2)
        )
        return torch.where(x < 1, env, torch.zeros_like(env))

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        r = r.unsqueeze(-1)
        basis = math.sqrt(2 / self.cutoff) * torch.sin(self.freq.to(r.dtype) * r) / r
        return basis * self.envelope(r)


class Message(nn.Module):
    """Continuous-filter message; the radial filters ``W`` are computed once for all layers."""

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.n = n_features
        self.phi = nn.Sequential(
            nn.Linear(n_features, n_features), nn.SiLU(), nn.Linear(n_features, 3 * n_features)
        )

    def forward(self, s, v, edge_index, filters, unit, first: bool):
        i, j = edge_index
        x = self.phi(s)[j] * filters
        ds, dvv, dvs = torch.split(x, self.n, dim=-1)
        dv = dvs.unsqueeze(1) * unit.unsqueeze(-1)
        if not first:  # vectors are zero before the first message: skip that term
            dv = dv + v[j] * dvv.unsqueeze(1)
        s = s.index_add(0, i, ds)
        v = v.index_add(0, i, dv)
        return s, v


class Update(nn.Module):
    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.n = n_features
        self.uv = nn.Linear(n_features, 2 * n_features, bias=False)
        self.mix = nn.Sequential(
            nn.Linear(2 * n_features, n_features), nn.SiLU(), nn.Linear(n_features, 3 * n_features)
        )

    def forward(self, s, v):
        uv, vv = torch.split(self.uv(v), self.n, dim=-1)  # v is (A, 3, F)
        # eps keeps the norm differentiable when vectors vanish (first layer, symmetric sites)
        norm = torch.sqrt((vv * vv).sum(dim=1) + 1e-8)
        a_vv, a_sv, a_ss = torch.split(self.mix(torch.cat([s, norm], dim=-1)), self.n, dim=-1)
        v = v + a_vv.unsqueeze(1) * uv
        s = s + a_sv * (uv * vv).sum(dim=1) + a_ss
        return s, v


class PaiNN(Potential):
    """PaiNN potential. Hyperparameters are plain values (stored in model files)."""

    def __init__(
        self,
        species: Sequence[int],
        *,
        cutoff: float = 5.0,
        n_features: int = 32,
        n_interactions: int = 2,
        n_basis: int = 16,
        readout_hidden: int = 32,
    ) -> None:
        super().__init__(species, cutoff)
        for name, val in (
            ("n_features", n_features),
            ("n_interactions", n_interactions),
            ("n_basis", n_basis),
            ("readout_hidden", readout_hidden),
        ):
            if int(val) != val or val < 1:
                raise ValueError(f"{name} must be a positive integer, got {val!r}")
        self._hp = {
            "species": list(self.species),
            "cutoff": float(cutoff),
            "n_features": int(n_features),
            "n_interactions": int(n_interactions),
            "n_basis": int(n_basis),
            "readout_hidden": int(readout_hidden),
        }
        self.embedding = nn.Embedding(len(self.species), n_features)
        self.rbf = BesselBasis(cutoff, n_basis)
        # one Linear gives every layer's radial filters (fewer small ops per call)
        self.filters = nn.Linear(n_basis, 3 * n_features * n_interactions)
        self.messages = nn.ModuleList(Message(n_features) for _ in range(n_interactions))
        self.updates = nn.ModuleList(Update(n_features) for _ in range(n_interactions))
        self.readout = nn.Sequential(
            nn.Linear(n_features, readout_hidden), nn.SiLU(), nn.Linear(readout_hidden, 1)
        )

    def hyperparameters(self) -> dict[str, Any]:
        return dict(self._hp)

    @property
    def _readout_hidden(self) -> list[nn.Module]:
        return list(self.readout)[:-1]

    def forward(self, graph: Graph) -> dict[str, torch.Tensor]:
        z = self.species_index(graph.numbers)
        # With a half-edge graph, distances and radial filters are computed once per pair
        # (W_ij = W_ji, the unit vector flips): half the geometry and filter work.
        vec = graph.edge_vectors(first_half=graph.half_edges)
        r = torch.linalg.vector_norm(vec, dim=-1)
        filters = self.filters(self.rbf(r))
        unit = vec / r.unsqueeze(-1)
        if graph.half_edges:
            filters, unit = torch.cat([filters, filters]), torch.cat([unit, -unit])
        filters = torch.chunk(filters, len(self.messages), dim=-1)
        s = self.embedding(z)
        v = torch.zeros(s.shape[0], 3, s.shape[1], dtype=s.dtype, device=s.device)
        for k, (message, update) in enumerate(zip(self.messages, self.updates, strict=True)):
            s, v = message(s, v, graph.edge_index, filters[k], unit, first=k == 0)
            s, v = update(s, v)
        hidden = s
        for layer in self._readout_hidden:  # slicing nn.Sequential would build a module per call
            hidden = layer(hidden)
        raw = self.readout[-1](hidden).squeeze(-1)
        atomic = self.scale_shift(raw, z)
        # One spare row: inductor's CPU code for a scatter into a length-1 buffer fails to
        # build with several threads (torch 2.13), which a single structure would hit.
        energy = torch.zeros(graph.n_structures + 1, dtype=s.dtype, device=s.device)
        return {
            keys.ATOMIC_ENERGIES: atomic,
            keys.ENERGY: energy.index_add(0, graph.batch, atomic)[:-1],
            keys.LATENT: s,
            "last_layer_input": hidden,
            "atomic_scale": self.energy_scale[z],
        }
