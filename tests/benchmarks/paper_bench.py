"""Biased vs unbiased active learning at the same label budget: the papers' comparison, run here.

For each seed, the campaign is run twice, once as shipped (uncertainty-biased MD) and once with
plain MD explorers (``sampler: md``), with everything else equal; then each campaign's final
model (trained on every label) is measured. Prints one row per campaign and the mean and spread
per variant: Ramachandran coverage of the labels, energy and force RMSE on the 300 K test set and
on the whole-plane test set, wall time.

    python tests/benchmarks/paper_bench.py --scale small              # the quickstart, 3 seeds
    python tests/benchmarks/paper_bench.py --scale full --seeds 0     # ala2_paper, 512 labels
    python tests/benchmarks/paper_bench.py --scale mil53 --seeds 0    # MIL-53(Al), NPT

``--scale mil53`` compares the shipped NPT campaign (bias on forces and stress) with the same
campaign without the bias stress (variant ``no_stress_bias``: ``tau_stress_rel`` 0) and adds the
cell volumes the labels reached (closed pore about 800 Å^3, large pore about 1430 Å^3) and the
stress error on the held-out set that spans both pores.

Campaigns go to ``--out`` (default ``runs/paper_bench``) and resume when run again, so a long
run can be stopped and continued with the same command. Last line: mean whole-plane force RMSE,
biased / unbiased.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from ubmd.campaign.config import apply_overrides, parse_overrides
from ubmd.strict import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SCALES = {
    "small": ROOT / "workflows" / "quickstart" / "campaign.yaml",
    "full": ROOT / "workflows" / "ala2_paper" / "campaign.yaml",
    "mil53": ROOT / "workflows" / "mil53_npt" / "campaign.yaml",
}
DEFAULT_VARIANTS = {"mil53": ["biased", "no_stress_bias"]}
# MIL-53(Al) volumes: below CLOSED_A3 a label is near the closed pore (802 Å^3), above OPEN_A3
# near the large pore (1427 Å^3); between them, the breathing transition.
CLOSED_A3, OPEN_A3 = 1000.0, 1250.0


def campaign_file(
    scale: str, variant: str, seed: int, out: Path, *, changes: dict | None = None, tag: str = ""
) -> Path:
    """The shipped campaign with its seed, directory and (unbiased) sampler changed, plus
    ``changes`` (dotted key -> value); paths made absolute so the file works from ``out``."""
    source = SCALES[scale]
    data = yaml.safe_load(source.read_text())
    apply_overrides(data, changes or {}, where=str(source))
    name = f"{scale}{tag}_{variant}_seed{seed}"
    data.update(name=name, seed=seed, directory=str(out / name))

    def absolute(p: str) -> str:
        return str((source.parent / p).resolve())

    for system in data["systems"]:
        system["structure"] = absolute(system["structure"])
    evaluation = data.get("evaluation", {})
    if evaluation.get("test_set"):
        evaluation["test_set"] = absolute(evaluation["test_set"])
    evaluation["test_sets"] = {k: absolute(v) for k, v in evaluation.get("test_sets", {}).items()}
    settings = data["labeler"].get("settings", {})
    for key, value in settings.items():
        if isinstance(value, str) and (source.parent / value).exists():
            settings[key] = absolute(value)
    if variant == "unbiased":
        data["exploration"]["settings"]["sampler"] = "md"
    elif variant == "no_stress_bias":
        data["exploration"]["settings"]["tau_stress_rel"] = 0.0
    elif variant != "biased":
        raise SystemExit(f"unknown variant {variant!r} (biased, unbiased, no_stress_bias)")
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run(path: Path, log: Path, site: str = "local") -> float:
    """Run (or resume) one campaign on ``site``; wall seconds of this call."""
    t0 = time.perf_counter()
    with open(log, "a") as fh:
        res = subprocess.run(
            [sys.executable, "-m", "ubmd.cli", "run", str(path), "--site", site, "--no-live"],
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    if res.returncode != 0:
        raise SystemExit(f"campaign {path} failed (exit {res.returncode}); see {log}")
    return time.perf_counter() - t0


def final_row(directory: Path) -> dict:
    rep = json.loads((directory / "final" / "report.json").read_text())
    row = {
        "labels": rep["labels"],
        "coverage": rep.get("ramachandran_coverage"),
        "E_300K": 1000 * rep["test"]["energy_rmse_eV_atom"],
        "F_300K": rep["test"]["force_rmse_eV_A"],
    }
    if "energy_mean_error_eV_atom" in rep["test"]:  # reports written before it lack it
        row["E_300K_offset"] = 1000 * rep["test"]["energy_mean_error_eV_atom"]
    if "stress_rmse_meV_A3" in rep["test"]:
        row["S_test"] = rep["test"]["stress_rmse_meV_A3"]
    plane = (rep.get("tests") or {}).get("plane")
    if plane:
        row["E_plane"] = 1000 * plane["energy_rmse_eV_atom"]
        row["F_plane"] = plane["force_rmse_eV_A"]
    explored = explored_coverage(directory)
    if explored is not None:
        row["coverage_explored"] = explored
    volumes = label_volumes(directory / "store.h5")
    if len(volumes):
        row["V_min"], row["V_max"] = float(volumes.min()), float(volumes.max())
        row["n_closed"] = int((volumes < CLOSED_A3).sum())
        row["n_between"] = int(((volumes >= CLOSED_A3) & (volumes <= OPEN_A3)).sum())
        row["n_open"] = int((volumes > OPEN_A3).sum())
    return row


def explored_coverage(directory: Path) -> float | None:
    """Ramachandran coverage of every candidate frame the explorers recorded (all iterations),
    beside ``coverage`` (of the labels): how much of the plane the trajectories visited, of
    which the selection labels a few. None for a system with no alanine backbone."""
    import h5py

    from ubmd.campaign.ramachandran import phi_psi, quadtree_coverage

    angles = []
    for path in sorted(directory.glob("iter_*/explore/explorer_*.h5")):
        with h5py.File(path, "r") as f:
            positions, numbers = f["positions"][()], f["numbers"][()]
            ends = np.cumsum(f["n_atoms"][()])
        for pos, z in zip(
            np.split(positions, ends[:-1]), np.split(numbers, ends[:-1]), strict=True
        ):
            try:
                angles.append(np.reshape(phi_psi(pos, z), (-1, 2)))
            except ValueError:
                return None
    return quadtree_coverage(np.concatenate(angles)) if angles else None


PHASE_LINE = re.compile(r"^\[\s*([\d.]+)s\] iteration (\d+) (\w[\w ]*?):")


def phase_seconds(log: Path) -> dict[str, float]:
    """Wall seconds per phase (train, explore, select, label, report, ...) from a campaign's
    log: each phase lasts until the next phase's first line."""
    marks = []
    for line in log.read_text().splitlines() if log.exists() else []:
        m = PHASE_LINE.match(line)
        if m and (not marks or marks[-1][1:] != (int(m.group(2)), m.group(3))):
            marks.append((float(m.group(1)), int(m.group(2)), m.group(3)))
    totals: dict[str, float] = {}
    for (t0, _, phase), (t1, _, _) in itertools.pairwise(marks):
        if t1 >= t0:  # a resumed run's log restarts its clock
            totals[phase] = totals.get(phase, 0.0) + t1 - t0
    return totals


def label_volumes(store_path: Path) -> np.ndarray:
    """Cell volumes (Å^3) of the periodic ok labels of a store (empty for molecules)."""
    from ubmd import keys
    from ubmd.store import StructureStore

    with StructureStore.open(store_path, mode="r") as store:
        arrays = store.read_arrays(status=keys.STATUS_OK)
    cells = np.asarray(arrays[keys.CELL]).reshape(-1, 3, 3)
    pbc = np.asarray(arrays[keys.PBC]).reshape(-1, 3).all(axis=1)
    return np.abs(np.linalg.det(cells[pbc]))


def read_summary(directory: Path) -> list[dict]:
    """Rows of a campaign's reports/summary.tsv (numbers as floats, '-' as None)."""
    path = directory / "reports" / "summary.tsv"
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    head = lines[0].split("\t")

    def value(text: str):
        try:
            return float(text)
        except ValueError:
            return None if text == "-" else text

    return [dict(zip(head, map(value, line.split("\t")), strict=True)) for line in lines[1:]]


CURVES = (
    ("ramachandran_coverage", "Ramachandran coverage"),
    ("force_rmse_eV_A", "force RMSE, 300 K set (eV/Å)"),
    ("plane_force_rmse_eV_A", "force RMSE, whole plane (eV/Å)"),
    ("energy_rmse_meV_atom", "energy RMSE, 300 K set (meV/atom)"),
)


def plot_curves(directories: dict[str, Path], path: Path) -> None:
    """Coverage and held-out errors against labels, every campaign in one figure (the final
    model as a star at its label count)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summaries = {name: read_summary(d) for name, d in directories.items()}
    shown = [
        (k, t) for k, t in CURVES if any(r.get(k) for rows in summaries.values() for r in rows)
    ]
    if not shown:
        return
    fig, axes = plt.subplots(1, len(shown), figsize=(3.6 * len(shown), 3.2), squeeze=False)
    for (key, title), ax in zip(shown, axes[0], strict=True):
        seeds = sorted({name.rsplit("seed", 1)[-1] for name in summaries})
        for name, rows in summaries.items():
            it = [r for r in rows if r["iteration"] != "final" and r.get(key) is not None]
            # colour by variant, line style by seed
            color = "C3" if "unbiased" in name or "no_stress" in name else "C0"
            style = ("-", "--", ":", "-.")[seeds.index(name.rsplit("seed", 1)[-1]) % 4]
            ax.plot([r["labels"] for r in it], [r[key] for r in it], style, color=color, label=name)
            final = [r for r in rows if r["iteration"] == "final" and r.get(key) is not None]
            if final:
                ax.plot(final[0]["labels"], final[0][key], "*", color=color, ms=10)
        ax.set_xlabel("labels")
        ax.set_title(title, fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_volumes(directories: dict[str, Path], path: Path) -> None:
    """Histogram of the labelled cell volumes of each campaign (MIL-53)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.linspace(600, 1700, 45)
    for name, directory in directories.items():
        ax.hist(
            label_volumes(directory / "store.h5"), bins=bins, histtype="step", lw=1.5, label=name
        )
    for v, text in ((802.3, "closed pore"), (1427.4, "large pore")):
        ax.axvline(v, color="grey", ls=":")
        ax.text(v, ax.get_ylim()[1] * 0.95, text, ha="center", va="top", fontsize=8)
    ax.set_xlabel("cell volume of the label (Å$^3$)")
    ax.set_ylabel("labels")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def export(directory: Path, dest: Path, wall_s: float) -> None:
    """The small artefacts behind a results table: what `ubmd evaluate` and a reader need."""
    import shutil

    dest.mkdir(parents=True, exist_ok=True)
    for src, name in (
        (directory / "final" / "model.pt", "model.pt"),
        (directory / "final" / "report.json", "final_report.json"),
        (directory / "final" / "ramachandran.png", "ramachandran.png"),
        (directory / "store.h5", "store.h5"),
        (directory / "campaign.yaml", "campaign.yaml"),
        (directory / "reports" / "summary.tsv", "summary.tsv"),
        (directory / "reports" / "learning_curve.png", "learning_curve.png"),
    ):
        if src.exists():
            shutil.copyfile(src, dest / name)
    (dest / "wall_time_s.json").write_text(json.dumps(wall_s))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="small")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--variants", nargs="+", help="default: biased unbiased (mil53: biased no_stress_bias)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "paper_bench")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change the campaign for both variants, e.g. exploration.start_from=store (YAML value)",
    )
    parser.add_argument("--tag", default="", help="appended to the scale in run names")
    parser.add_argument("--site", default="local", help="site name or file for `ubmd run`")
    parser.add_argument(
        "--export",
        type=Path,
        help="copy each campaign's final model, store, summary and plots to EXPORT/NAME/",
    )
    args = parser.parse_args()
    args.variants = args.variants or DEFAULT_VARIANTS.get(args.scale, ["biased", "unbiased"])
    args.out = (
        args.out.resolve()
    )  # campaign files resolve a relative directory from their own folder
    try:
        changes = parse_overrides(args.set, where="--set")
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None
    args.out.mkdir(parents=True, exist_ok=True)
    rows, directories = [], {}
    for seed in args.seeds:
        for variant in args.variants:
            path = campaign_file(args.scale, variant, seed, args.out, changes=changes, tag=args.tag)
            directory = args.out / path.stem
            directories[path.stem] = directory
            times = directory / "wall_time_s.json"
            wall = json.loads(times.read_text()) if times.exists() else 0.0
            if not (directory / "final" / "report.json").exists():
                wall += run(path, args.out / f"{path.stem}.log", args.site)
                times.write_text(json.dumps(wall))
            rows.append({"variant": variant, "seed": seed, **final_row(directory), "wall_s": wall})
            phases = phase_seconds(args.out / f"{path.stem}.log")
            if phases:
                total = sum(phases.values())
                print(
                    f"{path.stem} wall time by phase: "
                    + ", ".join(
                        f"{k} {v:.0f} s ({100 * v / total:.0f} %)" for k, v in phases.items()
                    ),
                    flush=True,
                )
            if args.export is not None:
                export(directory, args.export / path.stem, wall)
            print(_fmt_row(rows[-1]), flush=True)
    print("\nmean (spread = sample std over seeds)")
    keys = [k for k in rows[0] if k not in ("variant", "seed")]
    means = {}
    for variant in args.variants:
        mine = [r for r in rows if r["variant"] == variant]
        cells = []
        for k in keys:
            vals = [r[k] for r in mine if r.get(k) is not None]
            if not vals:
                continue
            mean = statistics.fmean(vals)
            std = statistics.stdev(vals) if len(vals) > 1 else 0.0
            means[(variant, k)] = mean
            cells.append(f"{k} {mean:.4g} ± {std:.2g}")
        print(f"{variant:9s} n={len(mine)}  " + "  ".join(cells))
    curves = args.out / f"{args.scale}{args.tag}_curves.png"
    plot_curves(directories, curves)
    print(f"learning curves: {curves}")
    if args.scale == "mil53":
        plot = args.out / f"{args.scale}{args.tag}_volumes.png"
        plot_volumes(directories, plot)
        print(f"volume histogram: {plot}")
    if ("biased", "F_plane") in means and ("unbiased", "F_plane") in means:
        ratio = means[("biased", "F_plane")] / means[("unbiased", "F_plane")]
        print(f"whole-plane force RMSE biased/unbiased: {ratio:.3f}")
    elif ("biased", "S_test") in means and ("no_stress_bias", "S_test") in means:
        ratio = means[("biased", "S_test")] / means[("no_stress_bias", "S_test")]
        print(f"held-out stress RMSE with/without the bias stress: {ratio:.3f}")


def _fmt_row(row: dict) -> str:
    return "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items())


if __name__ == "__main__":
    main()
