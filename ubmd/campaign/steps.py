"""The steps of a campaign iteration as plain functions (no parsl): paths and small dicts in and out.

:mod:`ubmd.pipeline` wraps the ``*_task`` functions into parsl apps; the others run in the driver.
Every task writes its one artefact atomically, and every random choice is seeded from the
campaign seed and the task's place (iteration, member, explorer), so a resumed campaign
computes exactly what an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from ubmd import keys
from ubmd.campaign.config import CampaignConfig
from ubmd.campaign.layout import atomic_path, write_atomic

# Provenance fields a selected frame carries in atoms.info into its label and the store.
ORIGIN_FIELDS = (
    "explorer",
    "replica",
    "md_step",
    "temperature_K",
    "bias_strength",
    "bias_stress_strength",
    "sampler",
    "selection_uncertainty",
    "selection_method",
)


def _config(cfg: dict[str, Any] | CampaignConfig) -> CampaignConfig:
    return cfg if isinstance(cfg, CampaignConfig) else CampaignConfig.model_validate(cfg)


def resolve_device(name: str) -> str:
    """ "auto" -> "cuda" when a GPU is visible (parsl binds one per worker), else "cpu"."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def task_seed(config: CampaignConfig, *parts: Any) -> int:
    """A 31-bit seed from the campaign seed and a task's place in the DAG."""
    text = ":".join(str(p) for p in (config.seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") & 0x7FFFFFFF


# ------------------------------------------------------------------ frames files
def write_frames(path: str | os.PathLike[str], frames: list[Any]) -> None:
    """Full-precision extxyz, written atomically."""
    from ubmd.store.convert import write_extxyz

    write_atomic(path, lambda tmp: write_extxyz(tmp, frames), suffix=".extxyz")


def read_frames(path: str | os.PathLike[str]) -> list[Any]:
    from ubmd.store.convert import read_extxyz

    return read_extxyz(path) if Path(path).stat().st_size else []


def _save_npy(path: Path, values: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, values)


def count_frames(path: str | os.PathLike[str]) -> int:
    return len(read_frames(path))


def structure_key(atoms: Any) -> bytes:
    """The store's content hash of a structure (numbers, positions, cell)."""
    from ubmd.store.batch import make_batch

    arrays = {
        keys.NUMBERS: atoms.numbers,
        keys.POSITIONS: atoms.positions,
        keys.N_ATOMS: np.array([len(atoms)]),
        keys.CELL: atoms.cell.array[None],
        keys.PBC: atoms.pbc[None],
    }
    return make_batch(arrays, _provenance({"status": "failed", "reason": "key"})).hashes()[0]


def stored_hashes(store: Any) -> set[bytes]:
    return {h.tobytes() for h in store.content_hashes()}


def count_labels(store: Any, *, min_iteration: int = 0) -> int:
    it = store.read_arrays(status=keys.STATUS_OK)[keys.ITERATION]
    return int(np.count_nonzero(it >= min_iteration))


# ------------------------------------------------------------------ initial data
def write_initial_selection(config: CampaignConfig, path: str | os.PathLike[str]) -> None:
    """Random Gaussian displacements of every system's start structures (the paper's start)."""
    from ubmd.campaign.validate import read_structures

    rng = np.random.default_rng(task_seed(config, "initial"))
    frames = []
    for name, starts in read_structures(config).items():
        for k in range(config.initial_data.random_displacements):
            atoms = starts[k % len(starts)].copy()
            atoms.calc = None
            atoms.info = {"system": name, "sampler": "random_displacement"}
            atoms.positions = atoms.positions + rng.normal(
                0.0, config.initial_data.displacement_A, atoms.positions.shape
            )
            frames.append(atoms)
    write_frames(path, frames)


def import_labelled(config: CampaignConfig, store: Any) -> int:
    """Append the campaign's already-labelled structures (iteration -1); duplicates skipped."""
    from ubmd.store import Provenance
    from ubmd.store.convert import read_structures

    added = 0
    for p in config.initial_data.labelled:
        frames = read_structures(config.path(p))
        prov = [Provenance(campaign_id=config.name, iteration=-1, sampler="import") for _ in frames]
        added += len(store.append(frames, provenance=prov).indices)
    return added


# ------------------------------------------------------------------ labels
def _provenance(fields: dict[str, Any]) -> Any:
    from ubmd.store import Provenance

    known = Provenance.__dataclass_fields__
    return Provenance(**{k: v for k, v in fields.items() if k in known})


def _origin(atoms: Any) -> dict[str, Any]:
    return {k: atoms.info[k] for k in ORIGIN_FIELDS if k in atoms.info}


def label_task(
    cfg: dict[str, Any], selection: str, index: int, iteration: int, out: str, workdir: str
) -> dict[str, Any]:
    """Label frame ``index`` of a selection file with the campaign's labeler (with retries)."""
    from ubmd.labelers import RetryPolicy, label_with_retries, make_labeler

    config = _config(cfg)
    atoms = read_frames(selection)[index]
    labeler = make_labeler(config.labeler.name, **config.labeler_settings())
    shutil.rmtree(workdir, ignore_errors=True)  # a retried task starts clean
    result = label_with_retries(
        labeler,
        atoms,
        workdir=workdir,
        policy=RetryPolicy(max_attempts=config.labeler.max_attempts),
    )
    record = {
        "campaign_id": config.name,
        "iteration": iteration,
        "labeler": result.labeler,
        "labeler_hash": result.settings_hash,
        "status": result.status,
        "reason": result.reason,
        "wall_time_s": result.wall_time_s,
        **_origin(atoms),
    }
    _write_label(
        out, atoms, record, result.energy, result.forces, result.stress, result.free_energy
    )
    return {"status": result.status, "reason": result.reason, "wall_time_s": result.wall_time_s}


def write_failed_label(
    cfg: dict[str, Any], selection: Path, index: int, iteration: int, out: Path, reason: str
) -> None:
    config = _config(cfg)
    atoms = read_frames(selection)[index]
    record = {
        "campaign_id": config.name,
        "iteration": iteration,
        "labeler": config.labeler.name,
        "status": keys.STATUS_FAILED,
        "reason": reason,
        **_origin(atoms),
    }
    _write_label(out, atoms, record, None, None, None, None)


def _write_label(
    out: str | Path, atoms: Any, record: dict[str, Any], energy, forces, stress, free_energy
) -> None:
    import json

    arrays = {
        "numbers": atoms.numbers,
        "positions": atoms.positions,
        "cell": atoms.cell.array,
        "pbc": atoms.pbc,
        "record": np.array(json.dumps(record, default=float)),
    }
    for name, value in (
        ("energy", energy),
        ("forces", forces),
        ("stress", stress),
        ("free_energy", free_energy),
    ):
        if value is not None:
            arrays[name] = np.asarray(value, dtype=np.float64)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    write_atomic(out, write, suffix=".npz")


def append_label(store: Any, path: str | os.PathLike[str]) -> bool:
    """Append one label result file to the store; True if it is an ok label."""
    import json

    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    with np.load(path, allow_pickle=False) as data:
        atoms = Atoms(
            numbers=data["numbers"], positions=data["positions"], cell=data["cell"], pbc=data["pbc"]
        )
        record = json.loads(str(data["record"]))
        results = {k: data[k] for k in ("energy", "forces", "stress", "free_energy") if k in data}
    if "energy" in results:
        results["energy"] = float(results["energy"])
    if "free_energy" in results:
        results["free_energy"] = float(results["free_energy"])
    if results:
        atoms.calc = SinglePointCalculator(atoms, **results)
    store.append([atoms], provenance=[_provenance(record)])
    return record["status"] == keys.STATUS_OK


# ------------------------------------------------------------------ training data
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


# ------------------------------------------------------------------ train + calibrate
def train_task(
    cfg: dict[str, Any],
    store_path: str,
    iteration: int,
    member: int,
    out: str,
    init: str | None = None,
) -> dict[str, Any]:
    """Train ensemble member ``member`` on the labels before ``iteration``; save to ``out``."""
    from ubmd.campaign.validate import train_config
    from ubmd.models import save_model
    from ubmd.models.train import train_member

    config = _config(cfg)
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

    config = _config(cfg)
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


# ------------------------------------------------------------------ explore
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
        for atoms in store.read_atoms(iteration=iteration - 1, status=keys.STATUS_OK):
            atoms.calc = None
            atoms.info = {"system": "store"}
            frames.append(atoms)
    write_frames(path, frames)


def explorer_model(bundle: str, device: str) -> Any:
    """The bundle (model + uncertainty + calibration) as the MD engine's differentiable model."""
    from ubmd.md.adapter import UBMDModel

    return UBMDModel.from_file(bundle, device=device)


def explore_task(
    cfg: dict[str, Any], bundle: str, starts: str, iteration: int, explorer: int, out: str
) -> dict[str, Any]:
    """Run one explorer (``replicas`` batched replicas) and write its candidate file."""
    from ubmd.campaign.validate import explore_config
    from ubmd.md.explore import run_explorer

    config = _config(cfg)
    device = resolve_device(config.device)
    ec = explore_config(config, seed=task_seed(config, "explore", iteration, explorer))
    import dataclasses

    ec = dataclasses.replace(ec, device=device, explorer_id=explorer)
    frames = read_frames(starts)
    rng = np.random.default_rng(task_seed(config, "starts", iteration, explorer))
    picks = rng.choice(
        len(frames),
        size=config.exploration.replicas,
        replace=len(frames) < config.exploration.replicas,
    )
    model = explorer_model(bundle, device)
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
    }


# ------------------------------------------------------------------ select
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


def select_task(
    cfg: dict[str, Any],
    bundle: str,
    candidates: list[str],
    store_path: str,
    iteration: int,
    out: str,
) -> dict[str, Any]:
    """Pool every explorer's candidates and pick the batch (conditioned on the training set)."""
    import torch

    from ubmd.md.writer import candidates_to_atoms, read_candidates
    from ubmd.select import select_batch

    config = _config(cfg)
    device = resolve_device(config.device)
    frames, feats, uncs = [], [], []
    for path in candidates:
        data = read_candidates(path)
        if not len(data[keys.N_ATOMS]):
            continue
        frames.extend(candidates_to_atoms(data))
        feats.append(data[keys.FEATURES])
        u = np.asarray(data.get(keys.CALIBRATED_UNCERTAINTY, []), dtype=np.float64)
        if u.size == 0 or not np.all(np.isfinite(u)):  # no total calibration (yet): raw values
            u = np.asarray(data[keys.UNCERTAINTY], dtype=np.float64)
        uncs.append(u)
    if not frames:
        write_frames(out, [])
        return {"candidates": 0, "selected": 0}
    pool = np.concatenate(feats)
    u = np.concatenate(uncs)
    train, _ = training_split(config, store_path, iteration)
    train_feats = structure_features(bundle, train, device)
    batch = min(config.selection.batch_size, len(frames))
    result = select_batch(
        torch.as_tensor(pool),
        batch,
        method=config.selection.method,
        train_features=torch.as_tensor(train_feats),
        uncertainties=torch.as_tensor(u),
        seed=task_seed(config, "select", iteration),
        **config.selection.settings,
    )
    picked = []
    for i in np.asarray(result.indices).tolist():
        atoms = frames[i]
        info = {k: atoms.info[k] for k in ORIGIN_FIELDS if k in atoms.info}
        info.update(
            selection_uncertainty=float(u[i]),
            selection_method=config.selection.method,
            candidate=int(i),
        )
        clean = atoms.copy()
        clean.calc = None
        for name in list(clean.arrays):
            if name not in ("numbers", "positions"):
                del clean.arrays[name]
        clean.info = info
        picked.append(clean)
    # the candidates' uncertainties (for the report's histogram) first: the selection file marks done
    write_atomic(
        Path(out).with_suffix(".uncertainty.npy"),
        lambda tmp: _save_npy(tmp, u),
        suffix=".npy",
    )
    write_frames(out, picked)
    return {"candidates": len(frames), "selected": len(picked)}


# ------------------------------------------------------------------ report
def _test_metrics(config: CampaignConfig, bundle: str, device: str) -> dict[str, Any]:
    """Errors and calibrated coverage of the bundle on the held-out test set."""
    import torch

    from ubmd.models.data import labelled_arrays, select
    from ubmd.models.graph import Graph
    from ubmd.uncertainty import coverage, load_bundle, predict

    if not config.evaluation.test_set:
        return {}
    model, estimator, calibration = load_bundle(bundle, device=device)
    ref = next(iter(model.members)) if hasattr(model, "members") else model
    arrays = labelled_arrays(str(config.path(config.evaluation.test_set)))
    n = len(arrays[keys.N_ATOMS])
    de, df = [], []
    for start in range(0, n, 64):
        part = select(arrays, np.arange(start, min(start + 64, n)))
        graph = Graph.from_arrays(
            part, cutoff=ref.cutoff, device=torch.device(device), dtype=ref.dtype
        )
        res = predict(model, graph, None, forces=True)
        de.append((res[keys.ENERGY].cpu().numpy() - part[keys.ENERGY]) / part[keys.N_ATOMS])
        df.append(res[keys.FORCES].cpu().numpy() - part[keys.FORCES])
    de_all, df_all = np.concatenate(de), np.concatenate(df)
    out: dict[str, Any] = {
        "test": {
            "n_structures": n,
            "energy_rmse_eV_atom": float(np.sqrt(np.mean(de_all**2))),
            "energy_mae_eV_atom": float(np.mean(np.abs(de_all))),
            "force_rmse_eV_A": float(np.sqrt(np.mean(df_all**2))),
            "force_mae_eV_A": float(np.mean(np.abs(df_all))),
        }
    }
    if estimator is not None and calibration is not None:
        out["calibration"] = coverage(model, estimator, calibration, arrays, device=device)
    return out


def report_task(
    cfg: dict[str, Any], bundle: str, store_path: str, iteration: int, out: str
) -> dict[str, Any]:
    """Metrics and plots after an iteration; rewrites the campaign's summary table and curve."""
    from ubmd.campaign import report
    from ubmd.campaign.layout import CampaignLayout, write_json_atomic
    from ubmd.campaign.ramachandran import phi_psi, quadtree_coverage
    from ubmd.store import StructureStore

    config = _config(cfg)
    layout = CampaignLayout(config.campaign_dir)
    device = resolve_device(config.device)
    rep: dict[str, Any] = {"iteration": iteration}
    rep.update(_test_metrics(config, bundle, device))
    with StructureStore.open(store_path, mode="r") as store:
        ok = store.read_arrays(status=keys.STATUS_OK)
        n_failed = len(store.select(status=keys.STATUS_FAILED))
    rep["labels"] = len(ok[keys.N_ATOMS])
    rep["labels_failed"] = int(n_failed)
    selection = layout.selection(iteration)
    unc_file = selection.with_suffix(".uncertainty.npy")
    cand_u = np.load(unc_file) if unc_file.exists() else np.zeros(0)
    picked = read_frames(selection) if selection.exists() else []
    rep["candidates"] = int(cand_u.size)
    rep["selected"] = len(picked)
    sel_u = np.array([a.info.get("selection_uncertainty", np.nan) for a in picked], dtype=float)
    report.plot_uncertainty_histogram(
        {"candidates": cand_u, "selected": sel_u},
        layout.iteration(iteration) / "uncertainty_histogram.png",
    )
    if config.evaluation.ramachandran:
        rep.update(
            _ramachandran(
                ok,
                layout.iteration(iteration) / "ramachandran.png",
                iteration,
                phi_psi,
                quadtree_coverage,
                report,
            )
        )
    write_json_atomic(out, rep)
    report.write_summary(layout)
    return rep


def _ramachandran(
    ok: dict[str, np.ndarray], png: Path, iteration: int, phi_psi, quadtree_coverage, report
) -> dict[str, Any]:
    n_atoms = ok[keys.N_ATOMS]
    if not len(n_atoms) or np.any(n_atoms != n_atoms[0]):
        return {"ramachandran_coverage": None}
    pos = ok[keys.POSITIONS].reshape(len(n_atoms), n_atoms[0], 3)
    angles = phi_psi(pos, ok[keys.NUMBERS][: n_atoms[0]])
    cov = quadtree_coverage(angles)
    latest = ok[keys.ITERATION] == iteration
    report.plot_ramachandran(
        {"labelled": angles[~latest], f"iteration {iteration}": angles[latest]}, png, coverage=cov
    )
    return {"ramachandran_coverage": cov}
