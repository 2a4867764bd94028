"""One call for energy, forces, stress, uncertainties and their gradients.

:func:`predict` runs the model (or every ensemble member) once, evaluates the estimator on the
same forward and takes the position/strain gradients of the energy and, on request, of the
total uncertainty (a second reverse pass over the same graph). For a biased force only,
``evaluate`` + one backward through E − τ·u avoids that second pass.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ubmd import keys
from ubmd.uncertainty.estimator import READOUT_INPUTS, READOUT_OUTPUTS, UncertaintyEstimator
from ubmd.uncertainty.features import ReadoutCapture

# Gradients of the total uncertainty u(S) (same unit as u per Å, and (1/V) du/dε in Voigt order).
UNCERTAINTY_GRADIENT = "uncertainty_gradient"  # (A, 3): ∂u_s/∂r_i for the atom's structure s
UNCERTAINTY_STRESS = "uncertainty_stress"  # (S, 6): (1/V) ∂u/∂ε, ASE Voigt order
_MEAN_ATOMIC = "_ensemble_mean_atomic_energies"


def run_model(model: nn.Module, graph: Any, *, capture: bool = False) -> dict[str, Any]:
    """model(graph), plus the readout Linear inputs/outputs when ``capture`` (gradient features)."""
    if not capture:
        from ubmd.models.compiled import call

        return dict(call(model, graph))
    if getattr(model, "_ubmd_compiled", False):
        raise ValueError(
            "gradient-feature uncertainties hook into the readout, which a compiled model "
            "cannot do; use an eager model (compile off) or last-layer features"
        )
    with ReadoutCapture(model) as cap:
        out = dict(model(graph))
    inputs, outputs = cap.captured()
    out[READOUT_INPUTS], out[READOUT_OUTPUTS] = inputs, outputs
    return out


def as_graphs(
    data: Any, model: nn.Module, *, batch_size: int = 32, device: Any = None
) -> Iterator[Any]:
    """Yield Graph batches from a Graph, Graphs, ase.Atoms frame(s), or labelled data.

    Labelled data: an extxyz path (or list of paths), a ubmd store, or a mapping of arrays
    (as accepted by :func:`ubmd.models.data.labelled_arrays`).
    """
    from ase import Atoms

    from ubmd.models.graph import Graph

    if isinstance(data, Graph):
        yield data.to(device)
        return
    if _is_labelled_source(data):
        from ubmd.models.data import labelled_arrays, select

        arrays = labelled_arrays(data)
        n = len(arrays[keys.N_ATOMS])
        for start in range(0, n, batch_size):
            part = select(arrays, np.arange(start, min(start + batch_size, n)))
            yield Graph.from_arrays(part, cutoff=model.cutoff, device=device, dtype=model.dtype)
        return
    if isinstance(data, Atoms):
        data = [data]
    items = list(data)
    if not items:
        raise ValueError("no training structures (empty data set)")
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        if all(isinstance(x, Graph) for x in chunk):
            yield Graph.collate([g.to(device) for g in chunk])
        elif all(isinstance(x, Atoms) for x in chunk):
            yield Graph.from_atoms(chunk, cutoff=model.cutoff, device=device, dtype=model.dtype)
        else:
            kinds = sorted({type(x).__name__ for x in chunk})
            raise TypeError(f"expected Graphs or ase.Atoms, got {kinds}")


def _is_labelled_source(data: Any) -> bool:
    if isinstance(data, str | os.PathLike | Mapping) or hasattr(data, "read_arrays"):
        return True
    return isinstance(data, list | tuple) and bool(data) and isinstance(data[0], str | os.PathLike)


def predict(
    model_or_ensemble: nn.Module | Sequence[nn.Module],
    graph: Any,
    estimator: UncertaintyEstimator | None = None,
    calibration: Any = None,
    *,
    forces: bool = True,
    stress: bool = False,
    uncertainty_gradients: bool = False,
) -> dict[str, Tensor]:
    """Energies, forces, stress, uncertainties (and their gradients) for one Graph; detached.

    For an ensemble (a sequence of models) ENERGY/FORCES/STRESS are member means and
    ENSEMBLE_ENERGY/ENSEMBLE_FORCES hold the members. ``uncertainty_gradients`` adds
    UNCERTAINTY_GRADIENT (∂u/∂r) and, with ``stress``, UNCERTAINTY_STRESS ((1/V) ∂u/∂ε).
    """
    models = as_models(model_or_ensemble)
    if uncertainty_gradients and estimator is None:
        raise ValueError("uncertainty_gradients needs an estimator")
    dtype = getattr(models[0], "dtype", graph.dtype)
    graph = (graph.to(dtype=dtype) if graph.dtype != dtype else graph).detach()
    wrt = []
    if forces or uncertainty_gradients:
        graph.positions.requires_grad_(True)
        wrt.append(graph.positions)
    if stress:
        graph.strain.requires_grad_(True)
        wrt.append(graph.strain)
    if estimator is not None and estimator.needs_capture:
        # Gradient features differentiate through the readout; make sure the graph is
        # differentiable even if the model's parameters are frozen.
        graph.positions.requires_grad_(True)
    with torch.enable_grad():
        res, grads_e = evaluate(
            models, graph, estimator, wrt=wrt, create_graph=uncertainty_gradients
        )
        energy = res[keys.ENERGY]
        if wrt and grads_e is None:
            if uncertainty_gradients:
                grads_e, grads_u = _two_vjps(energy, res[keys.UNCERTAINTY], wrt)
            else:
                grads_e = torch.autograd.grad(energy.sum(), wrt)
        elif uncertainty_gradients:
            grads_u = torch.autograd.grad(res[keys.UNCERTAINTY].sum(), wrt)
    if forces:
        res[keys.FORCES] = -grads_e[0]
    if stress:
        res[keys.STRESS] = strain_gradient_to_voigt(grads_e[-1], graph)
    if uncertainty_gradients:
        res[UNCERTAINTY_GRADIENT] = grads_u[0]
        if stress:
            res[UNCERTAINTY_STRESS] = strain_gradient_to_voigt(grads_u[-1], graph)
    if calibration is not None:
        calibration.apply(res)
    return {k: v.detach() for k, v in res.items()}


def evaluate(
    model_or_ensemble: nn.Module | Sequence[nn.Module],
    graph: Any,
    estimator: UncertaintyEstimator | None = None,
    *,
    wrt: Sequence[Tensor] = (),
    create_graph: bool = True,
) -> tuple[dict[str, Tensor], tuple[Tensor, ...] | None]:
    """Outputs still attached to ``graph`` (for custom objectives such as E − τ·u).

    Runs on ``graph`` as given: set ``requires_grad`` on its positions/strain first and list
    them in ``wrt``. Returns the results dict (ENERGY, ATOMIC_ENERGIES, the estimator's keys,
    for ensembles ENSEMBLE_ENERGY/ENSEMBLE_FORCES) and, for ensembles, the gradients of the
    mean energy w.r.t. ``wrt`` (None for one model). Ensemble member forces are built with
    ``create_graph`` so that atom-based ensemble uncertainties stay differentiable.
    """
    models = as_models(model_or_ensemble)
    capture = estimator is not None and estimator.needs_capture
    if len(models) == 1:
        out, grads_e = run_model(models[0], graph, capture=capture), None
    else:
        out, grads_e = _ensemble_forward(models, graph, list(wrt), capture, create_graph)
    res: dict[str, Tensor] = {}
    if estimator is not None:
        res.update(estimator(graph, out))
    res[keys.ENERGY] = out[keys.ENERGY]
    if _MEAN_ATOMIC in out or keys.ATOMIC_ENERGIES in out:
        res[keys.ATOMIC_ENERGIES] = out.get(_MEAN_ATOMIC, out.get(keys.ATOMIC_ENERGIES))
    for k in (keys.ENSEMBLE_ENERGY, keys.ENSEMBLE_FORCES):
        if k in out:
            res[k] = out[k]
    return res, grads_e


def as_models(model_or_ensemble: nn.Module | Sequence[nn.Module]) -> list[nn.Module]:
    """Members of an ensemble (ubmd.models.Ensemble, ModuleList or list), or [model]."""
    if hasattr(model_or_ensemble, "members"):
        model_or_ensemble = model_or_ensemble.members
    if isinstance(model_or_ensemble, nn.Module) and not isinstance(
        model_or_ensemble, nn.ModuleList
    ):
        return [model_or_ensemble]
    models = list(model_or_ensemble)
    if not models:
        raise ValueError("need a model or a non-empty ensemble")
    return models


def strain_gradient_to_voigt(grad: Tensor, graph: Any) -> Tensor:
    """(1/V) dX/dε (S,3,3) → ASE Voigt (S,6): xx, yy, zz, yz, xz, xy (NaN for non-periodic)."""
    sym = 0.5 * (grad + grad.transpose(1, 2)) / graph.volume()[:, None, None]
    return sym[:, keys.VOIGT_ROWS, keys.VOIGT_COLS]


def _two_vjps(
    energy: Tensor, u: Tensor, wrt: list[Tensor]
) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """Gradients of ΣE and Σu: two reverse passes over the shared forward graph.

    (A batched VJP via vmap, or a doubled batch, measured no faster on CPU: the second
    reverse pass through the network is the irreducible cost. For a biased force alone,
    one pass through E − τ·u is cheaper; see :func:`evaluate`.)
    """
    ge = torch.autograd.grad(energy.sum(), wrt, retain_graph=True)
    return ge, torch.autograd.grad(u.sum(), wrt)


def _ensemble_forward(
    models: list[nn.Module], graph: Any, wrt: list[Tensor], capture: bool, create_graph: bool
) -> tuple[dict[str, Any], tuple[Tensor, ...] | None]:
    """Run every member; outputs of member 0 plus ENSEMBLE_* and member-mean ENERGY."""
    energies, member_forces, grads_sum, outs = [], [], None, []
    for idx, m in enumerate(models):
        out = run_model(m, graph, capture=capture and idx == 0)
        outs.append(out)
        e = out[keys.ENERGY]
        energies.append(e)
        if wrt:
            # create_graph so the force variance (atom-based u) stays differentiable.
            g = torch.autograd.grad(e.sum(), wrt, create_graph=create_graph, retain_graph=True)
            member_forces.append(-g[0])
            grads_sum = (
                g if grads_sum is None else tuple(a + b for a, b in zip(grads_sum, g, strict=True))
            )
    first = outs[0]
    merged = dict(first)
    merged[keys.ENSEMBLE_ENERGY] = torch.stack(energies)
    merged[keys.ENERGY] = merged[keys.ENSEMBLE_ENERGY].mean(dim=0)
    if keys.ATOMIC_ENERGIES in first:
        # Member 0's atomic energies stay under ATOMIC_ENERGIES (its gradient features need them).
        merged[_MEAN_ATOMIC] = sum(o[keys.ATOMIC_ENERGIES] for o in outs) / len(models)
    if member_forces:
        merged[keys.ENSEMBLE_FORCES] = torch.stack(member_forces)
    grads = None if grads_sum is None else tuple(g / len(models) for g in grads_sum)
    return merged, grads
