"""Streaming against iterations: the same campaign, seeds and label budget in both modes.

Runs the quickstart campaign (alanine dipeptide, built-in model, biased MD) on the local site
with ``mode: iterations`` and with ``mode: streaming`` for each seed, and prints one table: wall
time to the label budget (final model included), the final model's held-out force RMSE (300 K
and whole-plane sets), the Ramachandran coverage of the labels, and the busy share of the
explore, label and train roles (a role is busy while one of its tasks runs; both modes record
every task's span, ``reports/roles.json`` and ``stream/roles.json``) and of the site's workers (the
roles share them here: the share of worker-seconds some task used). The last line is the
summary: streaming / iterations wall time, busy shares, and the differences in error and
coverage against the spread of the seeds.

``--labeler cp2k`` labels with CP2K (PBE, ``data/ala2/cp2k_settings.yaml``; a single point costs
about as much as an exploration segment) and evaluates on the CP2K test sets; ``xtb`` (GFN2-xTB,
milliseconds per label) is the quickstart's own reference. ``--scale tiny`` shrinks training and
exploration (a smoke run). A campaign that has finished is not run again (its ``bench.json``):
after an interruption, the same command goes on.

    python tests/benchmarks/streaming_bench.py [--labeler cp2k] [--seeds 0 1 2] [--budget 48]
        [--set streaming.KEY=VALUE ...]  (changes the streaming campaigns only)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import yaml

from ubmd.campaign.config import apply_overrides, parse_overrides
from ubmd.strict import ConfigError

ROOT = Path(__file__).resolve().parents[2]
ALA2 = ROOT / "data" / "ala2"
ROLES = ("explore", "label", "train")


def campaign(mode: str, *, seed: int, budget: int, scale: str, labeler: str, out: Path) -> dict:
    src = ROOT / "workflows" / "quickstart" / "campaign.yaml"
    data = yaml.safe_load(src.read_text())
    data["name"] = f"bench_{labeler}_{mode}_seed{seed}"
    data["directory"] = str(out / data["name"])
    data.update(mode=mode, seed=seed)
    data["stopping"].update(label_budget=budget, max_iterations=10_000)
    batch = data["selection"]["batch_size"]
    # the same training cadence: iterations train every batch, streaming every batch of labels
    data["streaming"] = {
        "segment_steps": 300,
        "train_every_labels": batch,
        "max_labels_in_flight": batch,
    }
    if labeler == "cp2k":
        settings = yaml.safe_load((ALA2 / "cp2k_settings.yaml").read_text())
        data["labeler"] = {"name": "cp2k", "settings": settings}
        data["evaluation"]["test_set"] = str(ALA2 / "ala2_cp2k_300K.extxyz")
        data["evaluation"]["test_sets"] = {"plane": str(ALA2 / "ala2_cp2k_plane.extxyz")}
    if scale == "tiny":
        data["initial_data"]["random_displacements"] = 10
        data["model"]["training"] = {"max_epochs": 20}
        data["model"]["fine_tuning"] = {"max_epochs": 10}
        data["model"]["hyperparameters"] = {"n_features": 16}
        data["exploration"].update(explorers=2, replicas=2)
        data["exploration"]["settings"].update(n_steps=100, record_every=20)
        data["streaming"]["segment_steps"] = 50
    return data


def run(data: dict) -> dict:
    """Run one campaign (or read what a finished one measured)."""
    root = Path(data["directory"])
    done = root / "bench.json"
    if done.exists():
        return json.loads(done.read_text())
    from ubmd.campaign.config import parse_campaign
    from ubmd.pipeline.driver import run_campaign
    from ubmd.pipeline.sites import load_site

    config = parse_campaign(data, base_dir=ROOT / "workflows" / "quickstart")
    site = load_site("local")
    t0 = time.perf_counter()
    summary = run_campaign(config, site, live=False)
    wall = time.perf_counter() - t0
    final = json.loads((root / "final" / "report.json").read_text())
    roles_file = root / ("stream" if data["mode"] == "streaming" else "reports") / "roles.json"
    recorded = json.loads(roles_file.read_text())
    roles = recorded["summary"]
    # the share of the site's worker-seconds some task used (roles share the workers here)
    window = sum(end - start for start, end in recorded["runs"])
    workers = site.executors["local"].workers_per_node()
    worker_s = sum(r["worker_s"] for r in roles.values())
    result = {
        "mode": data["mode"],
        "seed": data["seed"],
        "wall_s": wall,
        "models": summary.iterations_done,
        "labels": final.get("labels"),
        "force_rmse": (final.get("test") or {}).get("force_rmse_eV_A"),
        "plane_force_rmse": ((final.get("tests") or {}).get("plane") or {}).get("force_rmse_eV_A"),
        "coverage": final.get("ramachandran_coverage"),
        "busy": {r: busy_share(roles[r]) for r in ROLES},
        "workers_busy": worker_s / max(workers * window, 1e-9),
        "stop": summary.stop_reason,
    }
    done.write_text(json.dumps(result, indent=1))
    return result


def busy_share(role: dict) -> float:
    return role["busy_s"] / max(role["busy_s"] + role["idle_s"], 1e-9)


def _f(v: float | None, spec: str = "8.4f") -> str:
    return format(v, spec) if v is not None else "-"


def _mean_std(rows: list[dict], key) -> tuple[float, float]:
    values = np.array([key(r) for r in rows], dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0


def print_table(results: list[dict]) -> None:
    head = f"{'mode':>10} {'seed':>4} {'wall s':>7} {'models':>6} {'labels':>6} {'F 300K':>8} "
    head += f"{'F plane':>8} {'cover':>6} " + " ".join(f"{r + ' busy':>12}" for r in ROLES)
    head += f" {'workers busy':>12}"
    print("\n" + head)
    for r in results:
        busy = " ".join(f"{100 * r['busy'][k]:>11.0f}%" for k in ROLES)
        print(
            f"{r['mode']:>10} {r['seed']:>4} {r['wall_s']:>7.0f} {r['models']:>6} "
            f"{r['labels']:>6} {_f(r['force_rmse'])} {_f(r['plane_force_rmse'])} "
            f"{_f(r['coverage'], '6.3f')} {busy} {100 * r['workers_busy']:>11.0f}%"
        )
    for mode in ("iterations", "streaming"):
        rows = [r for r in results if r["mode"] == mode]
        if not rows:
            continue
        cells = [
            "{:.0f} ± {:.0f}".format(*_mean_std(rows, lambda r: r["wall_s"])),
            "{:.4f} ± {:.4f}".format(*_mean_std(rows, lambda r: r["force_rmse"])),
            "{:.4f} ± {:.4f}".format(*_mean_std(rows, lambda r: r["plane_force_rmse"])),
            "{:.3f} ± {:.3f}".format(*_mean_std(rows, lambda r: r["coverage"])),
        ]
        cells += [
            "{:.0f} %".format(100 * _mean_std(rows, lambda r, k=k: r["busy"][k])[0]) for k in ROLES
        ]
        workers = 100 * _mean_std(rows, lambda r: r["workers_busy"])[0]
        print(f"{mode:>10} mean ± std: wall {cells[0]} s, F 300K {cells[1]}, F plane {cells[2]}, "
              f"coverage {cells[3]}; busy " + ", ".join(
                  f"{k} {c}" for k, c in zip(ROLES, cells[4:], strict=True))
              + f"; workers busy {workers:.0f} %")  # fmt: skip


def summary_line(results: list[dict], budget: int) -> str:
    it = [r for r in results if r["mode"] == "iterations"]
    st = [r for r in results if r["mode"] == "streaming"]
    ratio = np.mean([s["wall_s"] / i["wall_s"] for s, i in zip(st, it, strict=True)])
    st_f, st_sd = _mean_std(st, lambda r: r["plane_force_rmse"])
    it_f, it_sd = _mean_std(it, lambda r: r["plane_force_rmse"])
    busy = {k: 100 * _mean_std(st, lambda r, k=k: r["busy"][k])[0] for k in ROLES}
    wbusy = 100 * _mean_std(st, lambda r: r["workers_busy"])[0]
    return (
        f"summary: {len(it)} seed(s), budget {budget} labels: wall streaming / iterations "
        f"{ratio:.2f}; streaming busy explore {busy['explore']:.0f} %, label "
        f"{busy['label']:.0f} %, workers {wbusy:.0f} %; plane force RMSE streaming {st_f:.4f} ± {st_sd:.4f} vs "
        f"iterations {it_f:.4f} ± {it_sd:.4f} eV/A"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=48)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--labeler", choices=("xtb", "cp2k"), default="xtb")
    parser.add_argument("--scale", choices=("quickstart", "tiny"), default="quickstart")
    parser.add_argument("--out", type=Path, default=Path("/tmp/streaming_bench"))
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change the streaming campaigns only, e.g. streaming.max_trajectory_steps=1500",
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=("iterations", "streaming"),
        default=["iterations", "streaming"],
        help="run only these (the summary line compares the modes when both ran)",
    )
    args = parser.parse_args()
    args.out = args.out.resolve()
    try:
        changes = parse_overrides(args.set, where="--set")
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None
    results = []
    for seed in args.seeds:
        for mode in args.modes:
            data = campaign(
                mode,
                seed=seed,
                budget=args.budget,
                scale=args.scale,
                labeler=args.labeler,
                out=args.out,
            )
            if mode == "streaming":
                apply_overrides(data, changes, where="--set")
            results.append(run(data))
            print(json.dumps(results[-1]), flush=True)
    print_table(results)
    if len(args.modes) == 2:
        print(summary_line(results, args.budget))
    else:
        f, f_sd = _mean_std(results, lambda r: r["force_rmse"])
        print(f"summary: {args.modes[0]} only, {len(results)} seed(s), budget {args.budget} "
              f"labels: F 300K {f:.4f} ± {f_sd:.4f} eV/A")  # fmt: skip


if __name__ == "__main__":
    main()
