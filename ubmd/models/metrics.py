"""Error metrics of a model on labelled data (energy per atom, forces, stress)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ubmd import keys
from ubmd.models import data as mdata
from ubmd.models.potential import compute


def predict_arrays(
    model: torch.nn.Module,
    arrays: dict[str, np.ndarray],
    *,
    batch_size: int = 16,
    stress: bool = True,
    device: str | torch.device | None = None,
) -> dict[str, np.ndarray]:
    """Predicted energy (S,), forces (A,3) and stress (S,6) for flat labelled arrays."""
    if device is not None:
        model = model.to(device)
    device = next(model.parameters()).device
    samples = mdata.make_samples(arrays, cutoff=model.cutoff, device=device, dtype=model.dtype)
    energy, forces, stresses = [], [], []
    for start in range(0, len(samples), batch_size):
        batch = mdata.Sample.collate(samples[start : start + batch_size])
        want = stress and bool(batch.graph.pbc.all(dim=1).any())
        out = compute(model, batch.graph, stress=want)
        energy.append(out[keys.ENERGY].cpu().double().numpy())
        forces.append(out[keys.FORCES].cpu().double().numpy())
        s = out[keys.STRESS] if want else torch.full((batch.graph.n_structures, 6), float("nan"))
        stresses.append(s.cpu().double().numpy())
    return {
        keys.ENERGY: np.concatenate(energy),
        keys.FORCES: np.concatenate(forces),
        keys.STRESS: np.concatenate(stresses),
    }


def residual_stats(residuals: np.ndarray) -> tuple[float, float, float]:
    """MAE, RMSE and signed mean of residuals (predicted - label), every element once.

    The signed mean matters: an RMSE that is mostly the mean is an offset, not noise.
    """
    r = np.asarray(residuals, float).ravel()
    return float(np.abs(r).mean()), float(np.sqrt((r**2).mean())), float(r.mean())


def error_metrics(
    model: torch.nn.Module, data: Any, *, batch_size: int = 16, device: str | None = None
) -> dict[str, Any]:
    """MAE/RMSE of energy per atom (eV/atom), force components (eV/Å), stress (eV/Å^3)."""
    arrays = mdata.labelled_arrays(data)
    pred = predict_arrays(model, arrays, batch_size=batch_size, device=device)
    n_atoms = np.asarray(arrays[keys.N_ATOMS], float)
    e_mae, e_rmse, e_mean = residual_stats((pred[keys.ENERGY] - arrays[keys.ENERGY]) / n_atoms)
    f_mae, f_rmse, _ = residual_stats(pred[keys.FORCES] - arrays[keys.FORCES])
    result: dict[str, Any] = {
        "n_structures": len(n_atoms),
        "n_atoms": int(n_atoms.sum()),
        "energy_per_atom_mae": e_mae,
        "energy_per_atom_rmse": e_rmse,
        "energy_per_atom_mean_error": e_mean,
        "forces_mae": f_mae,
        "forces_rmse": f_rmse,
    }
    has = np.asarray(arrays[keys.HAS_STRESS], bool) & np.isfinite(pred[keys.STRESS]).all(axis=1)
    if has.any():
        s_mae, s_rmse, _ = residual_stats(pred[keys.STRESS][has] - arrays[keys.STRESS][has])
        result["stress_mae"], result["stress_rmse"] = s_mae, s_rmse
        result["n_stress"] = int(has.sum())
    result["arrays"], result["predictions"] = arrays, pred
    return result
