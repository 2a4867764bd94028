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
    config: CampaignConfig, store_path: str, iteration: int | None
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(train, calibration) arrays of every ok label from before ``iteration``.

    Rows are put in a canonical order (by content hash) first, so the split and the training
    order do not depend on the order labels happened to arrive in; the calibration split is
    re-drawn every iteration (docs/training.md). ``iteration=None``: the final model's
    data, every ok label for training and none held out. With
    ``model.max_energy_above_min_eV_atom``, labels that far above the lowest label of their
    composition (per atom) are left out of both (they stay in the store).
    """
    from ubmd.models.data import select
    from ubmd.store import StructureStore

    with StructureStore.open(store_path, mode="r") as store:
        rows = store.select(status=keys.STATUS_OK)
        its = store.read_arrays(indices=rows)[keys.ITERATION] if len(rows) else np.zeros(0, int)
        if iteration is not None:
            rows = rows[its < iteration]
        if len(rows) == 0:
            raise ValueError(f"no labelled structures before iteration {iteration} in {store_path}")
        hashes = store.content_hashes(rows)
        order = np.lexsort(hashes.T[::-1])  # canonical: by content hash bytes
        arrays = store.read_arrays(indices=rows[order])
    limit = config.model.max_energy_above_min_eV_atom
    if limit is not None:
        arrays = select(arrays, np.flatnonzero(energy_above_minimum(arrays) <= limit))
    n = len(arrays[keys.N_ATOMS])
    if iteration is None:
        return arrays, select(arrays, np.zeros(0, dtype=int))
    rng = np.random.default_rng(task_seed(config, "calibration", iteration))
    perm = rng.permutation(n)
    n_cal = max(1, round(config.uncertainty.calibration.fraction * n)) if n >= 10 else 0
    cal, train = np.sort(perm[:n_cal]), np.sort(perm[n_cal:])
    return select(arrays, train), select(arrays, cal)


def energy_above_minimum(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """(S,) energy per atom above the lowest one among structures of the same composition."""
    n_atoms = arrays[keys.N_ATOMS]
    owner = np.repeat(np.arange(len(n_atoms)), n_atoms)
    species = np.unique(arrays[keys.NUMBERS])
    counts = np.zeros((len(n_atoms), len(species)), dtype=np.int64)
    np.add.at(counts, (owner, np.searchsorted(species, arrays[keys.NUMBERS])), 1)
    _, group = np.unique(counts, axis=0, return_inverse=True)
    group = group.reshape(-1)
    per_atom = np.asarray(arrays[keys.ENERGY], float) / n_atoms
    lowest = np.full(group.max() + 1, np.inf)
    np.minimum.at(lowest, group, per_atom)
    return per_atom - lowest[group]


def train_task(
    cfg: dict[str, Any],
    store_path: str,
    *,
    iteration: int | None,
    member: int,
    out: str,
    init: str | None = None,
) -> dict[str, Any]:
    """Train ensemble member ``member`` on the labels before ``iteration`` (None: every label,
    the final model) and save it to ``out``: fine-tuning the model file ``init`` when given,
    from scratch otherwise. A member depends only on the data, its seed and ``init``."""
    import torch

    from ubmd.campaign.validate import train_config
    from ubmd.models import load_model, save_model
    from ubmd.models.train import train_member

    config = as_config(cfg)
    train, _ = training_split(config, store_path, iteration)
    seed = task_seed(config, "train", "final" if iteration is None else iteration)
    tc = train_config(config, seed=seed, fine_tuning=init is not None)
    tc = _with_device(tc, resolve_device(config.device))
    start = None if init is None else load_model(init, device=tc.resolved_device())
    ckpt = Path(out).parent / f"checkpoints_{member}"
    t0 = time.perf_counter()
    model, history = train_member(tc, train, member, init_model=start, checkpoint_dir=ckpt)
    provenance = {
        "n_train": len(train[keys.N_ATOMS]),
        "training_data": training_data_digest(train),
        "warm_start": init or "",
        # float sums follow the thread count: the same count reproduces a member bit for bit
        "torch_threads": torch.get_num_threads(),
    }
    save_model(out, model, extra=provenance)
    shutil.rmtree(ckpt, ignore_errors=True)
    last = history[-1] if history else {}
    return {
        "epochs": len(history),
        "wall_time_s": time.perf_counter() - t0,
        "last": last,
        "warm_start": init,
        "n_train": len(train[keys.N_ATOMS]),
    }


def training_data_digest(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 of the sorted content hashes of a training set's structures: which labels a
    model was trained on (compare with the store's ``content_hashes``)."""
    import hashlib

    from ubmd.store.batch import structure_hash

    n_atoms = arrays[keys.N_ATOMS]
    ends = np.cumsum(n_atoms)
    hashes = []
    for s, (a, b) in enumerate(zip(ends - n_atoms, ends, strict=True)):
        hashes.append(
            structure_hash(
                arrays[keys.NUMBERS][a:b], arrays[keys.POSITIONS][a:b], arrays[keys.CELL][s]
            )
        )
    return hashlib.sha256(b"".join(sorted(hashes))).hexdigest()


def warm_start_model(config: CampaignConfig, layout: Any, iteration: int, member: int) -> Any:
    """The model file member ``member`` of ``iteration`` fine-tunes (None: from scratch).

    ``iteration`` None is the final model: it fine-tunes the latest trained member."""
    spec = config.model
    if not spec.warm_start:
        return None
    if iteration is None:
        done = [i for i in layout.iterations_present() if layout.member(i, member).exists()]
        return layout.member(done[-1], member) if done else None
    if iteration <= 1 or (spec.retrain_every and iteration % spec.retrain_every == 0):
        return None
    previous = layout.member(iteration - 1, member)
    return previous if previous.exists() else None


def _with_device(tc: Any, device: str) -> Any:
    import dataclasses

    return dataclasses.replace(tc, device=device)


def bundle_task(
    cfg: dict[str, Any],
    store_path: str,
    *,
    iteration: int | None,
    members: list[str],
    out: str,
    calibration_from: str | None = None,
) -> dict[str, Any]:
    """Fit the uncertainty on the training split, calibrate on the held-out split, save the bundle.

    The final model (``iteration`` None) holds nothing out: its conformal factors are those of
    the bundle ``calibration_from`` (the last iteration's, fitted on labels that model had not
    seen), an approximation that ``ubmd evaluate --calibration`` checks on a test set."""
    from ubmd.campaign.validate import uncertainty_config
    from ubmd.models import load_model
    from ubmd.models.ensemble import Ensemble
    from ubmd.uncertainty import fit_uncertainty, load_bundle, save_bundle

    config = as_config(cfg)
    device = resolve_device(config.device)
    models = [load_model(p, device=device) for p in members]
    model = models[0] if len(models) == 1 else Ensemble(models)
    train, cal = training_split(config, store_path, iteration)
    estimator = fit_uncertainty(model, train, uncertainty_config(config))
    if calibration_from is not None:
        calibration = load_bundle(calibration_from, device=device)[2]
    else:
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
    return features_and_uncertainty(bundle, arrays, device, batch_size=batch_size)[0]


def features_and_uncertainty(
    bundle: str, arrays: dict[str, np.ndarray], device: str, *, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """(S, K) structure features and (S,) uncertainties under a bundle's model and estimator."""
    import torch

    from ubmd.models.data import select
    from ubmd.models.graph import Graph
    from ubmd.uncertainty import load_bundle, predict

    model, estimator, _ = load_bundle(bundle, device=device)
    ref = next(iter(model.members)) if hasattr(model, "members") else model
    feats, uncs = [], []
    n = len(arrays[keys.N_ATOMS])
    for start in range(0, n, batch_size):
        part = select(arrays, np.arange(start, min(start + batch_size, n)))
        graph = Graph.from_arrays(
            part, cutoff=ref.cutoff, device=torch.device(device), dtype=ref.dtype
        )
        res = predict(model, graph, estimator, forces=False)
        feats.append(res[keys.FEATURES].cpu().numpy())
        uncs.append(res[keys.UNCERTAINTY].cpu().numpy().astype(np.float64))
    if not feats:
        return np.zeros((0, 0)), np.zeros(0)
    return np.concatenate(feats), np.concatenate(uncs)
