"""Fitting an uncertainty estimator on a training set.

``fit_uncertainty(model_or_ensemble, training_data, config)`` runs the model over the training
set once, fits the chosen method and returns an :class:`UncertaintyEstimator`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ubmd import keys
from ubmd.uncertainty.estimator import UncertaintyConfig, UncertaintyEstimator
from ubmd.uncertainty.features import SketchedGradient, structure_mean
from ubmd.uncertainty.gmm import GMMHead
from ubmd.uncertainty.inference import as_graphs, as_models, run_model
from ubmd.uncertainty.kernels import DistanceHead, PosteriorHead


def fit_uncertainty(
    model_or_ensemble: nn.Module | Sequence[nn.Module],
    training_data: Any,
    config: UncertaintyConfig | None = None,
    *,
    device: str | torch.device | None = None,
) -> UncertaintyEstimator:
    """Fit an estimator on training data (a Graph, a list of Graphs, or ase.Atoms frames).

    For an ensemble (a sequence of models) the features come from the first member.
    """
    config = config or UncertaintyConfig()
    models = as_models(model_or_ensemble)
    if config.method == "ensemble" and len(models) < 2:
        raise ValueError(f"method 'ensemble' needs at least 2 models, got {len(models)}")
    model = models[0]
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    sketch = None
    if config.features == "sketched_gradient":
        sketch = SketchedGradient.for_model(model, sketch_dim=config.sketch_dim, seed=config.seed)
        sketch = sketch.to(dev)
    est = UncertaintyEstimator(config, sketch=sketch)
    if config.method == "ensemble":
        return est

    # Posterior: accumulate Φᵀ Φ and Σ||φ||² per batch, so memory stays O(K²) however large
    # the training set; distance keeps the (rescaled) features themselves; GMM the latents.
    acc = {"atom": _Moments(), "total": _Moments()}
    atom_rows, struct_rows = [], []
    for phi, phi_s in _training_rows(est, model, training_data, dev):
        if config.method == "posterior":
            acc["atom"].add(phi)
            acc["total"].add(phi_s)
        else:
            atom_rows.append(phi)
            if phi_s is not None:
                struct_rows.append(phi_s)
    if config.method == "gmm":
        est.atom_head = GMMHead.fit(
            torch.cat(atom_rows),
            n_components=config.gmm_components,
            seed=config.seed,
            reg_covar=config.gmm_reg_covar,
        ).to(dev)
    elif config.method == "posterior":
        est.total_head = acc["total"].posterior(config.sigma)
        est.atom_head = acc["atom"].posterior(config.sigma)
    else:
        est.total_head = DistanceHead.fit(torch.cat(struct_rows))
        est.atom_head = DistanceHead.fit(torch.cat(atom_rows))
    return est


def _training_rows(
    est: UncertaintyEstimator, model: nn.Module, training_data: Any, dev: torch.device
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """Per training batch: atom and structure features (φ_i, φ_s), or (latents, None) for GMM."""
    need_features = est.config.method in ("posterior", "distance")
    batches = as_graphs(training_data, model, batch_size=est.config.batch_size, device=dev)
    for graph in batches:
        graph = graph.detach()
        # Gradient features need autograd even at fit time (∂E_i/∂z_l); last-layer ones do not.
        # Positions require grad so that this works with frozen model parameters too.
        graph.positions.requires_grad_(est.needs_capture)
        with torch.set_grad_enabled(est.needs_capture):
            out = run_model(model, graph, capture=est.needs_capture)
            if need_features:
                phi = est.atomic_features(out).detach()
                phi_s = structure_mean(phi, graph.batch, graph.n_structures)
        yield (phi, phi_s) if need_features else (out[keys.LATENT].detach(), None)


class _Moments:
    """Running Φᵀ Φ, Σ||φ||² and row count (float64)."""

    def __init__(self) -> None:
        self.gram: Tensor | None = None
        self.sum_sq = 0.0
        self.n = 0

    def add(self, phi: Tensor) -> None:
        phi = phi.to(torch.float64)
        g = phi.T @ phi
        self.gram = g if self.gram is None else self.gram + g
        self.sum_sq += float(phi.pow(2).sum())
        self.n += phi.shape[0]

    def posterior(self, sigma: float) -> PosteriorHead:
        if self.gram is None:
            raise ValueError("no training features (empty training set)")
        return PosteriorHead.from_moments(self.gram, self.sum_sq, self.n, sigma=sigma)
