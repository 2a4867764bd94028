"""The per-iteration report: held-out errors, calibrated coverage, histograms, Ramachandran."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ubmd import keys
from ubmd.campaign.common import as_config, resolve_device
from ubmd.campaign.config import CampaignConfig
from ubmd.campaign.frames import read_frames


def _errors(model: Any, arrays: dict[str, np.ndarray], device: str) -> dict[str, Any]:
    """Energy and force errors of a model (or ensemble mean) against labelled arrays."""
    import torch

    from ubmd.models.data import select
    from ubmd.models.graph import Graph
    from ubmd.models.metrics import residual_stats
    from ubmd.uncertainty import predict

    ref = next(iter(model.members)) if hasattr(model, "members") else model
    n = len(arrays[keys.N_ATOMS])
    # stress only where the reference gave one (periodic frames labelled with stress)
    has_stress = np.asarray(arrays.get(keys.HAS_STRESS, np.zeros(n, bool)), bool)
    de, df, ds = [], [], []
    for start in range(0, n, 64):
        part = select(arrays, np.arange(start, min(start + 64, n)))
        graph = Graph.from_arrays(
            part, cutoff=ref.cutoff, device=torch.device(device), dtype=ref.dtype
        )
        want = bool(has_stress[start : start + 64].any())
        res = predict(model, graph, None, forces=True, stress=want)
        de.append((res[keys.ENERGY].cpu().numpy() - part[keys.ENERGY]) / part[keys.N_ATOMS])
        df.append(res[keys.FORCES].cpu().numpy() - part[keys.FORCES])
        if want:
            rows = np.asarray(part[keys.HAS_STRESS], bool)
            ds.append(res[keys.STRESS].cpu().numpy()[rows] - part[keys.STRESS][rows])
    e_mae, e_rmse, e_mean = residual_stats(np.concatenate(de))
    f_mae, f_rmse, _ = residual_stats(np.concatenate(df))
    out = {
        "n_structures": n,
        "energy_rmse_eV_atom": e_rmse,
        "energy_mae_eV_atom": e_mae,
        "energy_mean_error_eV_atom": e_mean,
        "force_rmse_eV_A": f_rmse,
        "force_mae_eV_A": f_mae,
    }
    if ds:
        ds_all = np.concatenate(ds)
        s_mae, s_rmse, _ = residual_stats(ds_all)
        out["n_stress"] = len(ds_all)
        out["stress_rmse_meV_A3"] = 1000 * s_rmse
        out["stress_mae_meV_A3"] = 1000 * s_mae
    return out


def _test_metrics(config: CampaignConfig, bundle: str, device: str) -> dict[str, Any]:
    """Errors and calibrated coverage of the bundle on the held-out test set(s)."""
    from ubmd.models.data import labelled_arrays
    from ubmd.uncertainty import coverage, load_bundle

    evaluation = config.evaluation
    if not evaluation.test_set and not evaluation.test_sets:
        return {}
    model, estimator, calibration = load_bundle(bundle, device=device)
    out: dict[str, Any] = {}
    if evaluation.test_set:
        arrays = labelled_arrays(str(config.path(evaluation.test_set)))
        out["test"] = _errors(model, arrays, device)
        if estimator is not None and calibration is not None:
            out["calibration"] = coverage(model, estimator, calibration, arrays, device=device)
    if evaluation.test_sets:
        out["tests"] = {
            name: _errors(model, labelled_arrays(str(config.path(path))), device)
            for name, path in evaluation.test_sets.items()
        }
    return out


def report_task(
    cfg: dict[str, Any], *, bundle: str, store_path: str, iteration: int | None, out: str
) -> dict[str, Any]:
    """Metrics and plots after an iteration (None: of the final model, on every label);
    rewrites the campaign's summary table and curve."""
    from ubmd.campaign import report
    from ubmd.campaign.layout import CampaignLayout, write_json_atomic
    from ubmd.store import StructureStore

    config = as_config(cfg)
    layout = CampaignLayout(config.campaign_dir)
    device = resolve_device(config.device)
    rep: dict[str, Any] = {"iteration": "final" if iteration is None else iteration}
    rep.update(_test_metrics(config, bundle, device))
    with StructureStore.open(store_path, mode="r") as store:
        ok = store.read_arrays(status=keys.STATUS_OK)
        n_failed = len(store.select(status=keys.STATUS_FAILED))
    rep["labels"] = len(ok[keys.N_ATOMS])
    rep["labels_failed"] = int(n_failed)
    if iteration is None:
        if config.evaluation.ramachandran:
            rep.update(_ramachandran(ok, layout.final / "ramachandran.png", None))
        write_json_atomic(out, rep)
        report.write_summary(layout)
        return rep
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
        rep.update(_ramachandran(ok, layout.iteration(iteration) / "ramachandran.png", iteration))
    write_json_atomic(out, rep)
    report.write_summary(layout)
    return rep


def _ramachandran(ok: dict[str, np.ndarray], png: Path, iteration: int | None) -> dict[str, Any]:
    from ubmd.campaign import report
    from ubmd.campaign.ramachandran import phi_psi, quadtree_coverage

    n_atoms = ok[keys.N_ATOMS]
    if not len(n_atoms) or np.any(n_atoms != n_atoms[0]):
        return {"ramachandran_coverage": None}
    pos = ok[keys.POSITIONS].reshape(len(n_atoms), n_atoms[0], 3)
    angles = phi_psi(pos, ok[keys.NUMBERS][: n_atoms[0]])
    cov = quadtree_coverage(angles)
    if iteration is None:
        groups = {"every label": angles}
    else:
        latest = ok[keys.ITERATION] == iteration
        groups = {"labelled": angles[~latest], f"iteration {iteration}": angles[latest]}
    report.plot_ramachandran(groups, png, coverage=cov)
    return {"ramachandran_coverage": cov}
