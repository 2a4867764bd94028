"""MACE backend (optional extra ``mace``): mace-torch's equivariant layers behind our contract.

Reference: I. Batatia, D. P. Kovács, G. N. C. Simm, C. Ortner, G. Csányi, "MACE: Higher
order equivariant message passing neural networks for fast and accurate force fields",
NeurIPS 2022.

We build mace-torch's ``MACE`` module from scratch (small hyperparameters; no foundation
model downloads) and reuse its node embedding, radial/angular embeddings and the
interaction + product (higher-body-order) blocks. Adaptation (so the uncertainty
features work like for the built-in model): instead of MACE's per-layer readouts, the
invariant (0e) channels of every layer's node features are concatenated into the
per-atom latent ``h_i`` and a single ``readout`` MLP (Linear-SiLU-Linear) maps it to the
atomic energy; per-species shift/scale as in every :class:`Potential`. Edge vectors
come from :meth:`Graph.edge_vectors`, so forces and stress follow by autograd through
positions and strain exactly as for the built-in model. ``mace`` is imported lazily.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ubmd import keys
from ubmd.models.graph import Graph
from ubmd.models.potential import Potential


class MacePotential(Potential):
    """A small MACE model. Hyperparameters are plain values (stored in model files)."""

    def __init__(
        self,
        species: Sequence[int],
        *,
        cutoff: float = 5.0,
        n_channels: int = 16,
        max_L: int = 1,
        max_ell: int = 2,
        correlation: int = 2,
        n_interactions: int = 2,
        n_bessel: int = 8,
        avg_num_neighbors: float = 12.0,
        readout_hidden: int = 16,
    ) -> None:
        super().__init__(species, cutoff)
        _import_mace()  # a missing mace-torch is named before any bad hyperparameter
        if max_L not in (0, 1, 2):
            raise ValueError(f"max_L must be 0, 1 or 2, got {max_L}")
        if n_interactions < 1 or n_channels < 1 or correlation < 1:
            raise ValueError("n_interactions, n_channels and correlation must be >= 1")
        self._hp = {
            "species": list(self.species),
            "cutoff": float(cutoff),
            "n_channels": int(n_channels),
            "max_L": int(max_L),
            "max_ell": int(max_ell),
            "correlation": int(correlation),
            "n_interactions": int(n_interactions),
            "n_bessel": int(n_bessel),
            "avg_num_neighbors": float(avg_num_neighbors),
            "readout_hidden": int(readout_hidden),
        }
        self.mace = _mace_layers(
            self.species,
            cutoff=cutoff,
            n_channels=n_channels,
            max_L=max_L,
            max_ell=max_ell,
            correlation=correlation,
            n_interactions=n_interactions,
            n_bessel=n_bessel,
            avg_num_neighbors=avg_num_neighbors,
            readout_hidden=readout_hidden,
        )
        # Our readout replaces MACE's per-layer readouts (see module docstring).
        del self.mace.readouts
        self.n_channels = int(n_channels)
        latent = self.n_channels * int(n_interactions)
        self.readout = nn.Sequential(
            nn.Linear(latent, readout_hidden), nn.SiLU(), nn.Linear(readout_hidden, 1)
        )

    def hyperparameters(self) -> dict[str, Any]:
        return dict(self._hp)

    def fit_graph_statistics(self, mean_neighbours: float) -> None:
        """Set MACE's message normalisation to the training data's mean neighbour count."""
        if not mean_neighbours > 0:
            raise ValueError(f"mean neighbour count must be > 0, got {mean_neighbours}")
        self._hp["avg_num_neighbors"] = float(mean_neighbours)
        for interaction in self.mace.interactions:
            interaction.avg_num_neighbors = float(mean_neighbours)

    def forward(self, graph: Graph) -> dict[str, torch.Tensor]:
        z = self.species_index(graph.numbers)
        mace = self.mace
        dtype = self.dtype
        node_attrs = torch.nn.functional.one_hot(z, len(self.species)).to(dtype)
        vectors = graph.edge_vectors()
        lengths = torch.linalg.vector_norm(vectors, dim=-1, keepdim=True)
        # MACE convention: edge_index[0] sends, edge_index[1] receives, vector = r_recv - r_send
        edge_index = graph.edge_index
        node_feats = mace.node_embedding(node_attrs)
        edge_attrs = mace.spherical_harmonics(vectors)
        edge_feats, cutoff = mace.radial_embedding(
            lengths, node_attrs, edge_index, mace.atomic_numbers
        )
        scalars = []
        for k, (interaction, product) in enumerate(
            zip(mace.interactions, mace.products, strict=True)
        ):
            node_feats, sc = interaction(
                node_attrs=node_attrs,
                node_feats=node_feats,
                edge_attrs=edge_attrs,
                edge_feats=edge_feats,
                edge_index=edge_index,
                cutoff=cutoff,
                first_layer=(k == 0),
            )
            node_feats = product(node_feats=node_feats, sc=sc, node_attrs=node_attrs)
            scalars.append(node_feats[:, : self.n_channels])  # 0e channels come first
        latent = torch.cat(scalars, dim=-1)
        hidden = latent
        for layer in list(self.readout)[:-1]:
            hidden = layer(hidden)
        raw = self.readout[-1](hidden).squeeze(-1)
        atomic = self.scale_shift(raw, z)
        energy = torch.zeros(graph.n_structures, dtype=atomic.dtype, device=atomic.device)
        return {
            keys.ATOMIC_ENERGIES: atomic,
            keys.ENERGY: energy.index_add(0, graph.batch, atomic),
            keys.LATENT: latent,
            "last_layer_input": hidden,
            "atomic_scale": self.energy_scale[z],
        }


def _import_mace() -> tuple[Any, Any, Any]:
    """mace-torch's ``blocks`` module, its ``MACE`` class and ``e3nn.o3``."""
    try:
        # mace first: it sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD, which e3nn's own
        # constants file needs; our files are always read with weights_only=True.
        from mace.modules import blocks
        from mace.modules.models import MACE

        o3 = importlib.import_module("e3nn.o3")
    except ImportError as exc:
        raise ImportError("the MACE backend needs mace-torch: pip install 'ubmd[mace]'") from exc
    return blocks, MACE, o3


def _mace_layers(
    species: Sequence[int],
    *,
    cutoff: float,
    n_channels: int,
    max_L: int,
    max_ell: int,
    correlation: int,
    n_interactions: int,
    n_bessel: int,
    avg_num_neighbors: float,
    readout_hidden: int,
) -> nn.Module:
    """mace-torch's ``MACE`` module (in float64) with these sizes, zero atomic energies."""
    blocks, mace_cls, o3 = _import_mace()
    irreps = " + ".join(
        f"{n_channels}x{ell}{'e' if ell % 2 == 0 else 'o'}" for ell in range(max_L + 1)
    )
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # MACE builds some constants in the default dtype
    try:
        return mace_cls(
            r_max=float(cutoff),
            num_bessel=int(n_bessel),
            num_polynomial_cutoff=6,
            max_ell=int(max_ell),
            interaction_cls=blocks.RealAgnosticResidualInteractionBlock,
            interaction_cls_first=blocks.RealAgnosticResidualInteractionBlock,
            num_interactions=int(n_interactions),
            num_elements=len(species),
            hidden_irreps=o3.Irreps(irreps),
            MLP_irreps=o3.Irreps(f"{readout_hidden}x0e"),
            atomic_energies=np.zeros(len(species)),
            avg_num_neighbors=float(avg_num_neighbors),
            atomic_numbers=list(species),
            correlation=int(correlation),
            gate=torch.nn.functional.silu,
        )
    finally:
        torch.set_default_dtype(previous)
