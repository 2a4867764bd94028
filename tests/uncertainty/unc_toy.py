"""A tiny potential that follows ubmd/models/contract.md, for testing the uncertainty code alone.

Per-atom descriptors: smooth radial basis sums over neighbours, one channel block per
neighbour species; a per-atom readout MLP (Sequential of Linear + SiLU); per-species shift.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from ase import Atoms
from torch import nn

from ubmd import keys


class ToyPotential(nn.Module):
    def __init__(
        self,
        species: tuple[int, ...] = (1, 6, 8),
        *,
        cutoff: float = 4.0,
        n_rbf: int = 6,
        hidden: tuple[int, ...] = (12, 8),
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.species = list(species)
        self.cutoff = cutoff
        self.dtype = dtype
        self.n_rbf = n_rbf
        index = torch.full((119,), -1, dtype=torch.long)
        index[torch.tensor(self.species)] = torch.arange(len(self.species))
        self.register_buffer("species_index", index)
        self.register_buffer("centers", torch.linspace(0.8, cutoff, n_rbf, dtype=dtype))
        n_in = n_rbf * len(self.species)
        self.embed = nn.Linear(n_in * len(self.species), hidden[0], dtype=dtype)
        layers: list[nn.Module] = []
        dims = list(hidden)
        for a, b in itertools.pairwise(dims):
            layers += [nn.Linear(a, b, dtype=dtype), nn.SiLU()]
        layers.append(nn.Linear(dims[-1], 1, dtype=dtype))
        self.readout = nn.Sequential(*layers)
        self.shift = nn.Parameter(torch.linspace(-1.0, -3.0, len(self.species), dtype=dtype))

    def forward(self, graph) -> dict[str, torch.Tensor]:
        vec = graph.edge_vectors()
        r = vec.norm(dim=1)
        i, j = graph.edge_index
        fcut = 0.5 * (torch.cos(math.pi * r / self.cutoff) + 1.0)
        rbf = torch.exp(-4.0 * (r[:, None] - self.centers[None, :]) ** 2) * fcut[:, None]
        n_sp = len(self.species)
        zi = self.species_index[graph.numbers]
        zj = zi[j]
        edge_feat = torch.zeros(r.shape[0], n_sp, self.n_rbf, dtype=r.dtype, device=r.device)
        edge_feat = edge_feat.index_put((torch.arange(r.shape[0]), zj), rbf)
        desc = torch.zeros(graph.numbers.shape[0], n_sp * self.n_rbf, dtype=r.dtype)
        desc = desc.index_add(0, i, edge_feat.reshape(r.shape[0], -1))
        # Species-dependent first layer: place the descriptor in the block of the centre species.
        block = torch.zeros(desc.shape[0], n_sp, desc.shape[1], dtype=r.dtype)
        block = block.index_put((torch.arange(desc.shape[0]), zi), desc)
        latent = torch.tanh(self.embed(block.reshape(desc.shape[0], -1)))
        h = latent
        for layer in list(self.readout)[:-1]:
            h = layer(h)
        e_atom = self.readout[-1](h).squeeze(-1) + self.shift[zi]
        energy = torch.zeros(graph.n_atoms.shape[0], dtype=r.dtype).index_add(
            0, graph.batch, e_atom
        )
        return {
            keys.ATOMIC_ENERGIES: e_atom,
            keys.ENERGY: energy,
            keys.LATENT: latent,
            "last_layer_input": h,
        }


def jiggle(atoms: Atoms, n: int, amp: float, seed: int) -> list[Atoms]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = atoms.copy()
        a.positions += rng.normal(0.0, amp, a.positions.shape)
        out.append(a)
    return out
