"""Uncertainty gradients w.r.t. positions and strain against central finite differences."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from unc_toy import ToyPotential, jiggle

from ubmd import keys
from ubmd.models.graph import Graph
from ubmd.uncertainty.estimator import UncertaintyConfig
from ubmd.uncertainty.fitting import fit_uncertainty
from ubmd.uncertainty.inference import UNCERTAINTY_GRADIENT, UNCERTAINTY_STRESS, evaluate, predict

CASES = {
    "posterior-last_layer": UncertaintyConfig(method="posterior", sigma=0.05),
    "posterior-sketched": UncertaintyConfig(
        method="posterior", features="sketched_gradient", sketch_dim=32, sigma=0.05
    ),
    "distance-last_layer": UncertaintyConfig(method="distance"),
    "distance-sketched": UncertaintyConfig(
        method="distance", features="sketched_gradient", sketch_dim=32
    ),
    "gmm": UncertaintyConfig(method="gmm", gmm_components=2),
    "ensemble": UncertaintyConfig(method="ensemble"),
}


@pytest.fixture(scope="module")
def setup():
    crystal = bulk("C", "diamond", a=3.57, cubic=True)
    frames = jiggle(crystal, 6, 0.05, 0) + jiggle(molecule("CH3CH2OH"), 6, 0.05, 1)
    models = [ToyPotential(seed=0), ToyPotential(seed=1)]
    test = crystal.copy()
    test.set_cell(
        test.cell.array @ (np.eye(3) + np.array([[0.02, 0.01, 0], [0, -0.01, 0], [0, 0.02, 0.01]])),
        scale_atoms=True,
    )
    test.positions += np.random.default_rng(5).normal(0, 0.1, test.positions.shape)
    return models, frames, Graph.from_atoms(test, cutoff=4.0)


def _u(est, models, graph, positions, strain):
    g = replace(graph, positions=positions, strain=strain)
    res, _ = evaluate(models, g, est, wrt=[positions], create_graph=True)
    return res[keys.UNCERTAINTY].sum(), res[keys.ATOMIC_UNCERTAINTY]


@pytest.mark.parametrize("case", list(CASES))
def test_uncertainty_gradients_match_finite_differences(setup, case):
    models, frames, graph = setup
    cfg = CASES[case]
    models = models if cfg.method == "ensemble" else models[0]
    est = fit_uncertainty(models, frames, cfg)
    w = torch.linspace(0.5, 1.5, graph.numbers.shape[0], dtype=torch.float64)
    pos = graph.positions.clone().requires_grad_(True)
    strain = torch.zeros_like(graph.strain).requires_grad_(True)
    total, atom = _u(est, models, graph, pos, strain)
    g_tot = torch.autograd.grad(total, [pos, strain], retain_graph=True)
    g_atom = torch.autograd.grad((w * atom).sum(), [pos, strain])

    h = 1e-5
    checks = [(0, (0, 0)), (0, (3, 1)), (0, (7, 2)), (1, (0, 0, 0)), (1, (0, 0, 1)), (1, (0, 2, 1))]
    for which, idx in checks:
        num_tot, num_atom = [], []
        for sign in (1, -1):
            p, s = graph.positions.clone(), torch.zeros_like(graph.strain)
            (p if which == 0 else s)[idx] += sign * h
            t, a = _u(est, models, graph, p.requires_grad_(True), s)
            num_tot.append(float(t.detach()))
            num_atom.append(float((w * a).sum().detach()))
        fd_tot = (num_tot[0] - num_tot[1]) / (2 * h)
        fd_atom = (num_atom[0] - num_atom[1]) / (2 * h)
        assert float(g_tot[which][idx]) == pytest.approx(fd_tot, rel=1e-5, abs=1e-8), (case, idx)
        assert float(g_atom[which][idx]) == pytest.approx(fd_atom, rel=1e-5, abs=1e-8), (case, idx)
    assert float(g_tot[0].abs().max()) > 0 and float(g_atom[1].abs().max()) > 0


@pytest.mark.parametrize("case", ["posterior-last_layer", "ensemble"])
def test_predict_gradients_equal_separate_autograd(setup, case):
    """predict's shared backward gives the same ∂u/∂r, (1/V)∂u/∂ε and forces as separate grads."""
    models, frames, graph = setup
    cfg = CASES[case]
    models = models if cfg.method == "ensemble" else models[0]
    est = fit_uncertainty(models, frames, cfg)
    res = predict(models, graph, est, stress=True, uncertainty_gradients=True)
    pos = graph.positions.clone().requires_grad_(True)
    strain = torch.zeros_like(graph.strain).requires_grad_(True)
    g = replace(graph, positions=pos, strain=strain)
    out, _ = evaluate(models, g, est, wrt=[pos], create_graph=True)
    du_dr, du_de = torch.autograd.grad(
        out[keys.UNCERTAINTY].sum(), [pos, strain], retain_graph=True
    )
    de_dr, de_de = torch.autograd.grad(out[keys.ENERGY].sum(), [pos, strain])
    vol = float(torch.linalg.det(graph.cell[0]))
    torch.testing.assert_close(res[UNCERTAINTY_GRADIENT], du_dr)
    torch.testing.assert_close(res[keys.FORCES], -de_dr)
    torch.testing.assert_close(res[UNCERTAINTY_STRESS][0, 0], du_de[0, 0, 0] / vol)
    xy = 0.5 * (du_de[0, 0, 1] + du_de[0, 1, 0]) / vol
    torch.testing.assert_close(res[UNCERTAINTY_STRESS][0, 5], xy)
    torch.testing.assert_close(res[keys.STRESS][0, 1], de_de[0, 1, 1] / vol)
