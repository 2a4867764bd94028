"""Model files that carry a fitted uncertainty estimator and its calibration.

The estimator and calibration are stored as plain dicts in the model file's ``extra`` (see
:func:`ubmd.models.save_model`), so everything loads with ``torch.load(weights_only=True)``.
Also: calibrating a model on labelled data and measuring coverage on fresh data.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ubmd import keys
from ubmd.uncertainty.calibration import (
    Calibration,
    atom_residual,
    calibrate,
    empirical_coverage,
    total_residual,
)
from ubmd.uncertainty.estimator import UncertaintyEstimator
from ubmd.uncertainty.inference import predict

EXTRA_ESTIMATOR = "uncertainty"
EXTRA_CALIBRATION = "calibration"


def save_bundle(
    path: str | os.PathLike,
    model: nn.Module,
    estimator: UncertaintyEstimator | None = None,
    calibration: Calibration | None = None,
    *,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write model + estimator + calibration to one model file (atomically)."""
    from ubmd.models import save_model

    payload = dict(extra or {})
    if estimator is not None:
        payload[EXTRA_ESTIMATOR] = estimator.to_dict()
    if calibration is not None:
        payload[EXTRA_CALIBRATION] = calibration.to_dict()
    save_model(path, model, extra=payload)


def load_bundle(
    path: str | os.PathLike, device: str | torch.device | None = None
) -> tuple[nn.Module, UncertaintyEstimator | None, Calibration | None]:
    """(model, estimator or None, calibration or None) from a file written by save_bundle."""
    from ubmd.models.files import model_from_payload, read_model_file

    payload = read_model_file(path)
    model = model_from_payload(payload, device=device, source=os.fspath(path))
    extra = payload.get("extra", {}) or {}
    est = cal = None
    if EXTRA_ESTIMATOR in extra:
        est = UncertaintyEstimator.from_dict(extra[EXTRA_ESTIMATOR], device=device)
        est = est.to(device or next(model.parameters()).device)
    if EXTRA_CALIBRATION in extra:
        cal = Calibration.from_dict(extra[EXTRA_CALIBRATION])
    return model, est, cal


def uncertainties_and_residuals(
    model: nn.Module,
    estimator: UncertaintyEstimator,
    data: Any,
    *,
    batch_size: int = 32,
    device: str | torch.device | None = None,
) -> dict[str, Tensor]:
    """Raw u_total (S,), u_atom (A,) and residuals |ΔE|/N (S,), force RMSE per atom (A,).

    ``data``: labelled ase.Atoms, extxyz path(s), a store, or arrays (as for training).
    """
    from ubmd.models.data import labelled_arrays, select
    from ubmd.models.graph import Graph
    from ubmd.uncertainty.inference import as_models

    first = as_models(model)[0]  # cutoff/dtype/device of the (first) member
    dev = torch.device(device) if device is not None else next(first.parameters()).device
    cols: dict[str, list[Tensor]] = {"u_total": [], "u_atom": [], "r_total": [], "r_atom": []}
    arrays = labelled_arrays(data)
    n = len(arrays[keys.N_ATOMS])
    for start in range(0, n, batch_size):
        part = select(arrays, np.arange(start, min(start + batch_size, n)))
        graph = Graph.from_arrays(part, cutoff=first.cutoff, device=dev, dtype=first.dtype)
        res = predict(model, graph, estimator, forces=True)
        e_ref = torch.as_tensor(part[keys.ENERGY], dtype=res[keys.ENERGY].dtype, device=dev)
        f_ref = torch.as_tensor(part[keys.FORCES], dtype=res[keys.FORCES].dtype, device=dev)
        cols["u_total"].append(res[keys.UNCERTAINTY])
        cols["r_total"].append(total_residual(res[keys.ENERGY], e_ref, graph.n_atoms))
        if keys.ATOMIC_UNCERTAINTY in res:
            cols["u_atom"].append(res[keys.ATOMIC_UNCERTAINTY])
            cols["r_atom"].append(atom_residual(res[keys.FORCES], f_ref))
    return {k: torch.cat(v).cpu() for k, v in cols.items() if v}


def calibrate_model(
    model: nn.Module,
    estimator: UncertaintyEstimator,
    data: Any,
    *,
    alpha: float = 0.05,
    batch_size: int = 32,
    device: str | torch.device | None = None,
) -> Calibration:
    """Conformal calibration on a held-out labelled split (total and atom-based)."""
    cols = uncertainties_and_residuals(model, estimator, data, batch_size=batch_size, device=device)
    return calibrate(
        alpha=alpha,
        u_total=cols["u_total"],
        r_total=cols["r_total"],
        u_atom=cols.get("u_atom"),
        r_atom=cols.get("r_atom"),
    )


def coverage(
    model: nn.Module,
    estimator: UncertaintyEstimator,
    calibration: Calibration,
    data: Any,
    *,
    batch_size: int = 32,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Empirical coverage of the calibrated intervals on fresh labelled data (target 1 − α)."""
    cols = uncertainties_and_residuals(model, estimator, data, batch_size=batch_size, device=device)
    out = {"alpha": calibration.alpha, "n_structures": float(cols["u_total"].numel())}
    if calibration.c_total is not None:
        out["coverage_total"] = empirical_coverage(
            calibration.c_total * cols["u_total"], cols["r_total"]
        )
    if calibration.c_atom is not None and "u_atom" in cols:
        out["coverage_atom"] = empirical_coverage(
            calibration.c_atom * cols["u_atom"], cols["r_atom"]
        )
        out["n_atoms"] = float(cols["u_atom"].numel())
    return out
