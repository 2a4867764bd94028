"""Uncertainty estimation for MLIPs: gradient features, posterior / distance / ensemble / GMM
uncertainties (total and atom-based, differentiable w.r.t. positions and strain) and conformal
calibration.

Typical use::

    est = fit_uncertainty(model, train_atoms, UncertaintyConfig(method="posterior"))
    cal = calibrate_model(model, est, calibration_atoms, alpha=0.05)
    res = predict(model, graph, est, cal, uncertainty_gradients=True)

Imports are lazy so ``import ubmd.uncertainty`` does not import torch.
"""

from __future__ import annotations

from ubmd._lazy import lazy_getattr

_EXPORTS = {
    "UncertaintyConfig": "ubmd.uncertainty.estimator",
    "UncertaintyEstimator": "ubmd.uncertainty.estimator",
    "fit_uncertainty": "ubmd.uncertainty.fitting",
    "Calibration": "ubmd.uncertainty.calibration",
    "calibrate": "ubmd.uncertainty.calibration",
    "conformal_quantile": "ubmd.uncertainty.calibration",
    "empirical_coverage": "ubmd.uncertainty.calibration",
    "predict": "ubmd.uncertainty.inference",
    "evaluate": "ubmd.uncertainty.inference",
    "run_model": "ubmd.uncertainty.inference",
    "UNCERTAINTY_GRADIENT": "ubmd.uncertainty.inference",
    "UNCERTAINTY_STRESS": "ubmd.uncertainty.inference",
    "ensemble_uncertainty": "ubmd.uncertainty.ensemble",
    "save_bundle": "ubmd.uncertainty.bundle",
    "load_bundle": "ubmd.uncertainty.bundle",
    "calibrate_model": "ubmd.uncertainty.bundle",
    "coverage": "ubmd.uncertainty.bundle",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS)
