"""Explorer start structures, one explorer task, and batch selection on the pooled candidates."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ubmd import keys
from ubmd.campaign.common import as_config, resolve_device, task_seed
from ubmd.campaign.config import CampaignConfig
from ubmd.campaign.frames import read_frames, structure_key, write_frames, write_npy
from ubmd.campaign.labels import ORIGIN_FIELDS
from ubmd.campaign.layout import atomic_path
from ubmd.campaign.learning import energy_above_minimum, structure_features, training_split


def write_starts(
    config: CampaignConfig, store: Any, iteration: int, path: str | os.PathLike[str]
) -> None:
    """Start structures of this iteration's explorers: the systems' structures and, with
    ``start_from: store``, the labelled structures of the previous iteration too."""
    from ubmd.campaign.validate import read_structures

    frames = []
    for name, starts in read_structures(config).items():
        for atoms in starts:
            atoms = atoms.copy()
            atoms.calc = None
            atoms.info = {"system": name}
            frames.append(atoms)
    if config.exploration.start_from == "store" and iteration > 1:
        for atoms in store.read_atoms(indices=store_starts(config, store, iteration)):
            atoms.calc = None
            atoms.info = {"system": "store"}
            frames.append(atoms)
    write_frames(path, frames)


def store_starts(config: CampaignConfig, store: Any, iteration: int) -> np.ndarray:
    """Rows of the previous iteration's ok labels to start from: those at most
    ``exploration.start_max_energy_above_min_eV_atom`` (else the training limit
    ``model.max_energy_above_min_eV_atom``; else all) above the lowest label of their
    composition. Biased MD started from the high-energy frontier climbs further each
    iteration (quickstart, docs/results.md); a limit near the thermal energy lets
    trajectories chain across the plane at the temperature they sample."""
    limit = config.exploration.start_max_energy_above_min_eV_atom
    if limit is None:
        limit = config.model.max_energy_above_min_eV_atom
    if limit is None:
        return store.select(iteration=iteration - 1, status=keys.STATUS_OK)
    rows = store.select(status=keys.STATUS_OK)  # the minimum is over every label
    if len(rows) == 0:
        return rows
    arrays = store.read_arrays(indices=rows)
    keep = (arrays[keys.ITERATION] == iteration - 1) & (energy_above_minimum(arrays) <= limit)
    return rows[keep]


def explorer_model(bundle: str, device: str, *, compile: bool = False, skin_A: float = 1.0) -> Any:
    """The bundle (model + uncertainty + calibration) as the MD engine's differentiable model."""
    from ubmd.md.adapter import UBMDModel

    return UBMDModel.from_file(bundle, device=device, compile=compile, skin_A=skin_A)


def explore_task(
    cfg: dict[str, Any], *, bundle: str, starts: str, iteration: int, explorer: int, out: str
) -> dict[str, Any]:
    """Run one explorer (``replicas`` batched replicas) and write its candidate file."""
    from ubmd.campaign.validate import explore_config
    from ubmd.md.explore import run_explorer

    config = as_config(cfg)
    device = resolve_device(config.device)
    ec = explore_config(config, seed=task_seed(config, "explore", iteration, explorer))
    import dataclasses

    ec = dataclasses.replace(ec, device=device, explorer_id=explorer)
    if device == "cpu":  # an explorer worker runs long MD: keep its per-step buffers
        from ubmd.md.allocator import retain_freed_memory

        retain_freed_memory()
    frames = read_frames(starts)
    rng = np.random.default_rng(task_seed(config, "starts", iteration, explorer))
    picks = rng.choice(
        len(frames),
        size=config.exploration.replicas,
        replace=len(frames) < config.exploration.replicas,
    )
    spec = config.exploration
    model = explorer_model(bundle, device, compile=spec.compile, skin_A=spec.neighbour_skin_A)
    with atomic_path(out, ".h5") as tmp:
        tmp.unlink()  # the writer creates its own file
        summary = run_explorer(
            ec,
            model,
            [frames[int(i)] for i in picks],
            out_path=tmp,
            replicas=config.exploration.replicas,
        )
    stops: dict[str, int] = {}
    for rep in summary.get("replicas", {}).values():
        stops[rep.get("stop_reason") or "running"] = (
            stops.get(rep.get("stop_reason") or "running", 0) + 1
        )
    return {
        "n_frames": summary.get("n_frames"),
        "stop_reasons": stops,
        "wall_time_s": summary.get("wall_time_s"),
        "compiled": summary.get("compiled"),
        # where an explorer's time goes: start-up and compiling, then the steady rate
        **{
            k: summary.get(k)
            for k in ("warmup_s", "steady_steps", "steady_atom_steps_per_s", "steady_mean_replicas")
        },
    }


def _not_stored(frames: list[Any], store_path: str) -> np.ndarray:
    """Indices of the frames that are neither in the store nor repeats of an earlier frame."""
    from ubmd.store import StructureStore

    with StructureStore.open(store_path, mode="r") as store:
        seen = {bytes(h) for h in store.content_hashes()}
    keep = []
    for i, atoms in enumerate(frames):
        key = structure_key(atoms)
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return np.asarray(keep, dtype=np.int64)


def select_task(
    cfg: dict[str, Any],
    *,
    bundle: str,
    candidates: list[str],
    store_path: str,
    iteration: int,
    out: str,
) -> dict[str, Any]:
    """Pool every explorer's candidates and pick the batch (conditioned on the training set)."""
    config = as_config(cfg)
    device = resolve_device(config.device)
    frames, pool, u = _pooled_candidates(candidates)
    # a candidate already in the store (a stop frame that is a start structure taken from the
    # store) or repeated in the pool would only be labelled again and skipped as a duplicate
    new = _not_stored(frames, store_path)
    n_candidates = len(frames)
    frames, pool, u = [frames[i] for i in new], pool[new], u[new]
    if not frames:
        write_frames(out, [])
        return {"candidates": n_candidates, "selected": 0}
    picks = _batch_indices(
        config,
        bundle=bundle,
        store_path=store_path,
        iteration=iteration,
        pool=pool,
        uncertainties=u,
        batch_size=min(config.selection.batch_size, len(frames)),
        device=device,
    )
    method = config.selection.method
    picked = [
        _selected_frame(frames[i], candidate=int(i), uncertainty=float(u[i]), method=method)
        for i in picks
    ]
    # the candidates' uncertainties (for the report's histogram) first: the selection file marks done
    write_npy(Path(out).with_suffix(".uncertainty.npy"), u)
    write_frames(out, picked)
    return {"candidates": n_candidates, "selected": len(picked)}


def _pooled_candidates(paths: list[str]) -> tuple[list[Any], np.ndarray, np.ndarray]:
    """Frames, features and uncertainties of every candidate file, concatenated in order."""
    from ubmd.md.writer import candidates_to_atoms, read_candidates

    frames, feats, uncs = [], [], []
    for path in paths:
        data = read_candidates(path)
        if not len(data[keys.N_ATOMS]):
            continue
        frames.extend(candidates_to_atoms(data))
        feats.append(data[keys.FEATURES])
        u = np.asarray(data.get(keys.CALIBRATED_UNCERTAINTY, []), dtype=np.float64)
        if u.size == 0 or not np.all(np.isfinite(u)):  # no total calibration (yet): raw values
            u = np.asarray(data[keys.UNCERTAINTY], dtype=np.float64)
        uncs.append(u)
    pool = np.concatenate(feats) if feats else np.zeros((0, 0))
    u = np.concatenate(uncs) if uncs else np.zeros(0)
    return frames, pool, u


def _batch_indices(
    config: CampaignConfig,
    *,
    bundle: str,
    store_path: str,
    iteration: int,
    pool: np.ndarray,
    uncertainties: np.ndarray,
    batch_size: int,
    device: str,
) -> list[int]:
    """Pool rows the campaign's selection method picks, conditioned on the training set."""
    import torch

    from ubmd.campaign.validate import selection_settings
    from ubmd.select import select_batch

    train, _ = training_split(config, store_path, iteration)
    train_feats = structure_features(bundle, train, device)
    result = select_batch(
        torch.as_tensor(pool),
        batch_size,
        method=config.selection.method,
        train_features=torch.as_tensor(train_feats),
        uncertainties=torch.as_tensor(uncertainties),
        seed=task_seed(config, "select", iteration),
        **selection_settings(config),
    )
    return np.asarray(result.indices).tolist()


def _selected_frame(atoms: Any, *, candidate: int, uncertainty: float, method: str) -> Any:
    """A picked frame ready to label: numbers and positions, its origin and why it was picked."""
    info = {k: atoms.info[k] for k in ORIGIN_FIELDS if k in atoms.info}
    info.update(selection_uncertainty=uncertainty, selection_method=method, candidate=candidate)
    clean = atoms.copy()
    clean.calc = None
    for name in list(clean.arrays):
        if name not in ("numbers", "positions"):  # per-frame model outputs are not labels
            del clean.arrays[name]
    clean.info = info
    return clean
