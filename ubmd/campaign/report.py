"""Per-iteration reports: a table and PNG plots in the campaign directory.

``reports/summary.tsv`` has one row per iteration (labels, held-out errors, coverage of the
calibrated intervals, Ramachandran coverage); ``reports/learning_curve.png`` plots the errors
against the number of labels; each iteration folder gets its uncertainty histogram and, for
alanine dipeptide, its Ramachandran plot.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ubmd.campaign.layout import CampaignLayout, atomic_path

SUMMARY_COLUMNS = (
    "iteration",
    "labels",
    "labels_failed",
    "energy_rmse_meV_atom",
    "force_rmse_eV_A",
    "force_mae_eV_A",
    "coverage_total",
    "coverage_atom",
    "ramachandran_coverage",
    "candidates",
    "selected",
)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def summary_rows(layout: CampaignLayout) -> list[dict[str, Any]]:
    """One row per iteration report, then one for the final model (iteration "final").

    Extra named test sets add ``<name>_energy_rmse_meV_atom`` and ``<name>_force_rmse_eV_A``;
    a test set with stress labels adds ``stress_rmse_meV_A3``."""
    reports = [(it, layout.report(it)) for it in layout.iterations_present()]
    reports.append(("final", layout.final_report))
    rows = []
    for it, path in reports:
        if not path.exists():
            continue
        rep = json.loads(path.read_text())
        test = rep.get("test") or {}
        cov = rep.get("calibration") or {}
        row = {
            "iteration": it,
            "labels": rep.get("labels"),
            "labels_failed": rep.get("labels_failed"),
            "energy_rmse_meV_atom": _scale(test.get("energy_rmse_eV_atom"), 1000.0),
            "force_rmse_eV_A": test.get("force_rmse_eV_A"),
            "force_mae_eV_A": test.get("force_mae_eV_A"),
            "coverage_total": cov.get("coverage_total"),
            "coverage_atom": cov.get("coverage_atom"),
            "ramachandran_coverage": rep.get("ramachandran_coverage"),
            "candidates": rep.get("candidates"),
            "selected": rep.get("selected"),
        }
        if "stress_rmse_meV_A3" in test:  # periodic test sets labelled with stress
            row["stress_rmse_meV_A3"] = test["stress_rmse_meV_A3"]
        for name, metrics in (rep.get("tests") or {}).items():
            row[f"{name}_energy_rmse_meV_atom"] = _scale(metrics.get("energy_rmse_eV_atom"), 1e3)
            row[f"{name}_force_rmse_eV_A"] = metrics.get("force_rmse_eV_A")
        rows.append(row)
    return rows


def _scale(v: float | None, f: float) -> float | None:
    return None if v is None else v * f


def write_summary(layout: CampaignLayout) -> list[dict[str, Any]]:
    """Rewrite reports/summary.tsv and reports/learning_curve.png from every report.json."""
    rows = summary_rows(layout)
    layout.reports.mkdir(parents=True, exist_ok=True)
    columns = list(SUMMARY_COLUMNS)
    for row in rows:
        columns += [c for c in row if c not in columns]
    lines = ["\t".join(columns)]
    for row in rows:
        lines.append("\t".join(_fmt(row.get(c)) for c in columns))
    with atomic_path(layout.reports / "summary.tsv", ".tsv") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    if rows:
        plot_learning_curve(rows, layout.reports / "learning_curve.png")
    return rows


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.5g}"
    return str(v)


def plot_learning_curve(rows: list[dict[str, Any]], path: Path) -> None:
    """Held-out force and energy errors (every test set) and Ramachandran coverage against labels;
    the final model is the last point, drawn as a star."""
    plt = _plt()
    labels = [r["labels"] or 0 for r in rows]
    final = [r["iteration"] == "final" for r in rows]
    tail = "_force_rmse_eV_A"
    names = sorted({k[: -len(tail)] for r in rows for k in r if k.endswith(tail)})
    sets = [("", "test"), *((n + "_", n) for n in names)]
    cov = [r["ramachandran_coverage"] for r in rows]
    n_panels = 3 if any(c is not None for c in cov) else 2
    fig, ax = plt.subplots(1, n_panels, figsize=(4.2 * n_panels, 3.6))
    for k, (prefix, name) in enumerate(sets):
        for panel, key in ((0, "force_rmse_eV_A"), (1, "energy_rmse_meV_atom")):
            ys = np.array(
                [np.nan if r.get(prefix + key) is None else r[prefix + key] for r in rows]
            )
            if np.all(np.isnan(ys)):
                continue
            x = np.array(labels, dtype=float)
            curve = ~np.array(final)
            ax[panel].plot(x[curve], ys[curve], "o-", color=f"C{k}", label=name)
            ax[panel].plot(x[~curve], ys[~curve], "*", ms=12, color=f"C{k}")
    ax[0].set_ylabel("held-out force RMSE (eV/Å)")
    ax[1].set_ylabel("held-out energy RMSE (meV/atom)")
    if n_panels == 3:
        ax[2].plot(labels, [np.nan if c is None else c for c in cov], "s-", color="C2")
        ax[2].set_ylabel("Ramachandran coverage")
        ax[2].set_ylim(0, 1)
    for a in ax:
        a.set_xlabel("labels in training set")
    if any(a.get_legend_handles_labels()[0] for a in ax[:1]):
        ax[0].legend(fontsize=8, title="★ final model", title_fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def plot_uncertainty_histogram(
    values: dict[str, np.ndarray], path: Path, *, threshold: float | None = None
) -> None:
    """Histograms of (calibrated) uncertainties, e.g. of all candidates vs the selected batch."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    finite = [v[np.isfinite(v)] for v in values.values() if np.size(v)]
    if finite:
        hi = max(float(np.max(v)) for v in finite if v.size) if any(v.size for v in finite) else 1.0
        bins = np.linspace(0.0, hi if hi > 0 else 1.0, 40)
        for name, v in values.items():
            v = np.asarray(v)[np.isfinite(v)]
            if v.size:
                ax.hist(v, bins=bins, alpha=0.6, label=f"{name} ({v.size})", density=True)
    if threshold is not None:
        ax.axvline(threshold, color="k", ls="--", label="stop threshold")
    ax.set_xlabel("calibrated uncertainty")
    ax.set_ylabel("density")
    ax.legend()
    fig.tight_layout()
    _save(fig, path)


def plot_ramachandran(
    points: dict[str, np.ndarray], path: Path, *, coverage: float | None = None
) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    for i, (name, pts) in enumerate(points.items()):
        pts = np.asarray(pts).reshape(-1, 2)
        ax.scatter(
            pts[:, 0], pts[:, 1], s=6 if i == 0 else 14, alpha=0.6, label=f"{name} ({len(pts)})"
        )
    ax.set_xlim(-180, 180)
    ax.set_ylim(-180, 180)
    ax.set_xlabel("φ (deg)")
    ax.set_ylabel("ψ (deg)")
    title = "Ramachandran"
    if coverage is not None:
        title += f" — coverage {coverage:.3f}"
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def _save(fig: Any, path: Path) -> None:
    plt = _plt()
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
