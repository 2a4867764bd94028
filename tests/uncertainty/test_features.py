"""Last-layer and sketched-gradient features against explicit per-atom gradients."""

from __future__ import annotations

import pytest
import torch
from ase.build import molecule
from unc_toy import ToyPotential

from ubmd import keys
from ubmd.models.graph import Graph
from ubmd.uncertainty.features import (
    ReadoutCapture,
    SketchedGradient,
    readout_linears,
    structure_mean,
)
from ubmd.uncertainty.inference import run_model


def _graph(toy, seed=0):
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=seed)
    return Graph.from_atoms(atoms, cutoff=toy.cutoff)


def test_sketch_equals_projected_explicit_per_atom_gradients(toy):
    graph = _graph(toy)
    sketch = SketchedGradient.for_model(toy, sketch_dim=16, seed=3)
    out = run_model(toy, graph, capture=True)
    with torch.enable_grad():
        phi = sketch(out[keys.ATOMIC_ENERGIES], out["readout_inputs"], out["readout_outputs"])
    linears = readout_linears(toy)
    assert len(linears) == 2 and phi.shape == (graph.numbers.shape[0], 16)
    for i in range(graph.numbers.shape[0]):
        # Explicit gradient of E_i w.r.t. each readout layer's [W | b] (out × (in+1)).
        e_i = run_model(toy, graph)[keys.ATOMIC_ENERGIES][i]
        params = [p for lin in linears for p in (lin.weight, lin.bias)]
        grads = torch.autograd.grad(e_i, params)
        expected = torch.zeros(16, dtype=torch.float64)
        for layer, (r1, r2) in enumerate(sketch.projections()):
            gw, gb = grads[2 * layer], grads[2 * layer + 1]
            g_full = torch.cat([gw, gb[:, None]], dim=1)  # (out, in + 1)
            expected += torch.einsum("ok,op,pk->k", r2, g_full, r1)
        torch.testing.assert_close(phi[i], expected / 16**0.5, rtol=1e-10, atol=1e-12)


def test_sketch_inner_products_approximate_the_gradient_kernel(toy):
    """E[φ_i·φ_j] = ⟨∇θE_i, ∇θE_j⟩: check with a large sketch (relative error ~ 1/sqrt(K))."""
    graph = _graph(toy, seed=1)
    sketch = SketchedGradient.for_model(toy, sketch_dim=20000, seed=0)
    out = run_model(toy, graph, capture=True)
    phi = sketch(out[keys.ATOMIC_ENERGIES], out["readout_inputs"], out["readout_outputs"])
    params = [p for lin in readout_linears(toy) for p in (lin.weight, lin.bias)]
    rows = []
    for i in range(4):
        e_i = run_model(toy, graph)[keys.ATOMIC_ENERGIES][i]
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(e_i, params)]))
    grad = torch.stack(rows)
    kernel = grad @ grad.T
    approx = (phi[:4] @ phi[:4].T).detach()
    scale = kernel.diagonal().sqrt()
    err = (approx - kernel) / (scale[:, None] * scale[None, :])
    assert float(err.abs().max()) < 0.1


def test_capture_is_removed_and_structure_mean():
    toy = ToyPotential(seed=1)
    graph = _graph(toy)
    with ReadoutCapture(toy) as cap:
        toy(graph)
    inputs, outputs = cap.captured()
    assert inputs[0].shape[1] == 12 and outputs[-1].shape[1] == 1
    assert all(not lin._forward_hooks for lin in readout_linears(toy))
    atomic = torch.arange(10.0).reshape(5, 2)
    mean = structure_mean(atomic, torch.tensor([0, 0, 1, 1, 1]), 2)
    torch.testing.assert_close(mean, torch.tensor([[1.0, 2.0], [6.0, 7.0]]))


def test_readout_contract_violations_are_clear():
    class NoReadout(torch.nn.Module):
        pass

    class WideHead(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.readout = torch.nn.Sequential(torch.nn.Linear(3, 2))

    with pytest.raises(ValueError, match="no `readout`"):
        readout_linears(NoReadout())
    with pytest.raises(ValueError, match="out_features=1"):
        readout_linears(WideHead())
