"""Features and uncertainty gradients on the real backends (built-in PaiNN and MACE)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from unc_toy import jiggle

from ubmd import keys
from ubmd.models.graph import Graph
from ubmd.uncertainty import UncertaintyConfig, evaluate, fit_uncertainty

MACE_SMALL = {
    "cutoff": 3.5, "n_channels": 4, "max_L": 1, "max_ell": 1, "n_interactions": 2,
    "readout_hidden": 4,
}  # fmt: skip


def _painn():
    from ubmd.models.builtin import PaiNN

    torch.manual_seed(0)
    model = PaiNN([1, 6, 8, 13, 29], cutoff=3.5, n_features=8, n_basis=6, readout_hidden=6)
    model = model.double()
    model.set_energy_stats(shift=-np.arange(1.0, 6.0), scale=0.7)
    return model


def _mace():
    pytest.importorskip("mace")
    from ubmd.models.mace_backend import MacePotential

    torch.manual_seed(0)
    model = MacePotential([1, 6, 8, 13, 29], **MACE_SMALL).double()
    model.set_energy_stats(shift=-np.arange(1.0, 6.0), scale=0.7)
    return model


def _fd_check(model, est, graph, h=1e-5):
    """∂(u_total + Σ w_i u_i)/∂(r, ε) by autograd vs central differences, a few components."""
    w = torch.linspace(0.5, 1.5, graph.numbers.shape[0], dtype=torch.float64)

    def objective(pos, strain):
        res, _ = evaluate(model, replace(graph, positions=pos, strain=strain), est)
        return res[keys.UNCERTAINTY].sum() + (w * res[keys.ATOMIC_UNCERTAINTY]).sum()

    pos = graph.positions.clone().requires_grad_(True)
    strain = torch.zeros_like(graph.strain).requires_grad_(True)
    grads = torch.autograd.grad(objective(pos, strain), [pos, strain])
    assert float(grads[0].abs().max()) > 0
    for which, idx in [(0, (0, 0)), (0, (2, 1)), (1, (0, 0, 0)), (1, (0, 1, 2))]:
        vals = []
        for sign in (1, -1):
            p, s = graph.positions.clone(), torch.zeros_like(graph.strain)
            (p if which == 0 else s)[idx] += sign * h
            vals.append(float(objective(p, s).detach()))
        fd = (vals[0] - vals[1]) / (2 * h)
        assert float(grads[which][idx]) == pytest.approx(fd, rel=1e-5, abs=1e-8), idx


@pytest.mark.parametrize("backend", ["painn", "mace"])
def test_backend_features_and_gradients(backend):
    model = _painn() if backend == "painn" else _mace()
    cell = bulk("Cu", "fcc", a=3.6, cubic=True)
    cell.numbers[0] = 13
    frames = jiggle(cell, 4, 0.05, 0) + jiggle(molecule("CH3CH2OH"), 4, 0.05, 1)
    test = cell.copy()
    test.rattle(0.1, seed=3)
    graph = Graph.from_atoms(test, cutoff=model.cutoff)
    for cfg in (
        UncertaintyConfig(method="posterior", features="sketched_gradient", sketch_dim=16),
        UncertaintyConfig(method="gmm", gmm_components=2),
    ):
        est = fit_uncertainty(model, frames, cfg)
        _fd_check(model, est, graph)
    # Last-layer features are the model's own last_layer_input plus the bias entry.
    res, _ = evaluate(model, graph, fit_uncertainty(model, frames, UncertaintyConfig()))
    out = model(graph)
    torch.testing.assert_close(res[keys.ATOMIC_FEATURES][:, :-1], out["last_layer_input"])
    assert bool((res[keys.ATOMIC_FEATURES][:, -1] == 1).all())
