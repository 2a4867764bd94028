"""Training data split, training an ensemble member, and fitting + calibrating the uncertainty."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from ubmd import keys
from ubmd.campaign.common import as_config, resolve_device, task_seed
from ubmd.campaign.config import CampaignConfig


def training_split(
    config: CampaignConfig, store_path: str, iteration: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(train, calibration) arrays of every ok label from before ``iteration``.

    Rows are put in a canonical order (by content hash) first, so the split and the training
    order do not depend on the order labels happened to arrive in; the calibration split is
    re-drawn every iteration (DESIGN.md).
    """
    from ubmd.models.data import select
    from ubmd.store import StructureStore

    with StructureStore.open(store_path, mode="r") as store:
        rows = store.select(status=keys.STATUS_OK)
        its = store.read_arrays(indices=rows)[keys.ITERATION] if len(rows) else np.zeros(0, int)
        rows = rows[its < iteration]
        if len(rows) == 0:
            raise ValueError(f"no labelled structures before iteration {iteration} in {store_path}")
        hashes = store.content_hashes(rows)
        order = np.lexsort(hashes.T[::-1])  # canonical: by content hash bytes
        arrays = store.read_arrays(indices=rows[order])
    n = len(arrays[keys.N_ATOMS])
    rng = np.random.default_rng(task_seed(config, "calibration", iteration))
    perm = rng.permutation(n)
    n_cal = max(1, round(config.uncertainty.calibration.fraction * n)) if n >= 10 else 0
    cal, train = np.sort(perm[:n_cal]), np.sort(perm[n_cal:])
    return select(arrays, train), select(arrays, cal)


def train_task(
    cfg: dict[str, Any],
    store_path: str,
    iteration: int,
    member: int,
    out: str,
) -> dict[str, Any]:
    """Train ensemble member ``member`` from scratch on the labels before ``iteration``; save
    to ``out``. (From scratch, so a member depends only on the data and its seed.)"""
    from ubmd.campaign.validate import train_config
    from ubmd.models import save_model
    from ubmd.models.train import train_member

    config = as_config(cfg)
    train, _ = training_split(config, store_path, iteration)
    tc = train_config(config, seed=task_seed(config, "train", iteration))
    tc = _with_device(tc, resolve_device(config.device))
    ckpt = Path(out).parent / f"checkpoints_{member}"
    t0 = time.perf_counter()
    model, history = train_member(tc, train, member, checkpoint_dir=ckpt)
    save_model(out, model)
    shutil.rmtree(ckpt, ignore_errors=True)
    last = history[-1] if history else {}
    return {"epochs": len(history), "wall_time_s": time.perf_counter() - t0, "last": last}


def _with_device(tc: Any, device: str) -> Any:
    import dataclasses

    return dataclasses.replace(tc, device=device)


def bundle_task(
    cfg: dict[str, Any], store_path: str, iteration: int, members: list[str], out: str
) -> dict[str, Any]:
    """Fit the uncertainty on the training split, calibrate on the held-out split, save the bundle."""
    from ubmd.campaign.validate import uncertainty_config
    from ubmd.models import load_model
    from ubmd.models.ensemble import Ensemble
    from ubmd.uncertainty import fit_uncertainty, save_bundle

    config = as_config(cfg)
    device = resolve_device(config.device)
    models = [load_model(p, device=device) for p in members]
    model = models[0] if len(models) == 1 else Ensemble(models)
    train, cal = training_split(config, store_path, iteration)
    estimator = fit_uncertainty(model, train, uncertainty_config(config))
    calibration = _calibrate(model, estimator, cal, config.uncertainty.calibration.alpha)
    save_bundle(out, model, estimator, calibration)
    return {
        "n_train": len(train[keys.N_ATOMS]),
        "n_calibration": len(cal[keys.N_ATOMS]),
        "calibration": None if calibration is None else calibration.to_dict(),
    }


def _calibrate(model: Any, estimator: Any, cal: dict[str, np.ndarray], alpha: float) -> Any:
    """Conformal factors for each variant that has enough calibration points for ``alpha``
    (a small campaign can calibrate the atom-based uncertainty long before the total one)."""
    import math

    from ubmd.uncertainty import calibrate
    from ubmd.uncertainty.bundle import uncertainties_and_residuals

    if not len(cal[keys.N_ATOMS]):
        return None
    cols = uncertainties_and_residuals(model, estimator, cal)
    need = math.ceil(1.0 / alpha - 1.0 - 1e-12)
    parts = {}
    if cols["u_total"].numel() >= need:
        parts.update(u_total=cols["u_total"], r_total=cols["r_total"])
    if "u_atom" in cols and cols["u_atom"].numel() >= need:
        parts.update(u_atom=cols["u_atom"], r_atom=cols["r_atom"])
    return calibrate(alpha=alpha, **parts) if parts else None


def structure_features(
    bundle: str, arrays: dict[str, np.ndarray], device: str, *, batch_size: int = 64
) -> np.ndarray:
    """(S, K) structure features of labelled arrays under a bundle's model and estimator."""
    import torch

    from ubmd.models.data import select
    from ubmd.models.graph import Graph
    from ubmd.uncertainty import load_bundle, predict

    model, estimator, _ = load_bundle(bundle, device=device)
    members = list(model.members) if hasattr(model, "members") else [model]
    ref = members[0]
    out = []
    n = len(arrays[keys.N_ATOMS])
    for start in range(0, n, batch_size):
        part = select(arrays, np.arange(start, min(start + batch_size, n)))
        graph = Graph.from_arrays(
            part, cutoff=ref.cutoff, device=torch.device(device), dtype=ref.dtype
        )
        res = predict(model, graph, estimator, forces=False)
        out.append(res[keys.FEATURES].cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))
