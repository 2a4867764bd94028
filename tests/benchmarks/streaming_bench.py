"""Streaming against iterations: the same campaign, seed and label budget in both modes.

Runs the quickstart campaign (alanine dipeptide, GFN2-xTB, built-in model, biased MD) on the
local site once with ``mode: iterations`` and once with ``mode: streaming``, and prints for each
the wall time to the label budget (final model included), the final model's held-out errors and,
for the streaming run, each role's busy share of the wall time (``stream/roles.json``). The last
line is the summary.

    python tests/benchmarks/streaming_bench.py [--budget 48] [--scale quickstart|tiny] [--out DIR]

``--scale tiny`` shrinks training and exploration (a smoke run of a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def campaign(mode: str, *, budget: int, scale: str, out: Path) -> dict:
    src = ROOT / "workflows" / "quickstart" / "campaign.yaml"
    data = yaml.safe_load(src.read_text())
    data["name"] = f"bench_{mode}"
    data["directory"] = str(out / data["name"])
    data["mode"] = mode
    data["stopping"].update(label_budget=budget, max_iterations=10_000)
    batch = data["selection"]["batch_size"]
    # the same training cadence: iterations train every batch, streaming every batch of labels
    data["streaming"] = {
        "segment_steps": 300,
        "train_every_labels": batch,
        "max_labels_in_flight": batch,
    }
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
    from ubmd.campaign.config import parse_campaign
    from ubmd.pipeline.driver import run_campaign
    from ubmd.pipeline.sites import load_site

    config = parse_campaign(data, base_dir=ROOT / "workflows" / "quickstart")
    t0 = time.perf_counter()
    summary = run_campaign(config, load_site("local"), live=False)
    wall = time.perf_counter() - t0
    root = Path(data["directory"])
    final = json.loads((root / "final" / "report.json").read_text())
    roles_file = root / "stream" / "roles.json"
    roles = json.loads(roles_file.read_text())["summary"] if roles_file.exists() else {}
    return {
        "mode": data["mode"],
        "wall_s": wall,
        "models": summary.iterations_done,
        "labels": final.get("labels"),
        "force_rmse": (final.get("test") or {}).get("force_rmse_eV_A"),
        "plane_force_rmse": ((final.get("tests") or {}).get("plane") or {}).get("force_rmse_eV_A"),
        "roles": roles,
        "stop": summary.stop_reason,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=48)
    parser.add_argument("--scale", choices=("quickstart", "tiny"), default="quickstart")
    parser.add_argument("--out", type=Path, default=Path("/tmp/streaming_bench"))
    args = parser.parse_args()
    results = [
        run(campaign(mode, budget=args.budget, scale=args.scale, out=args.out))
        for mode in ("iterations", "streaming")
    ]
    print(f"\n{'mode':>10} {'wall s':>8} {'models':>6} {'labels':>6} {'F 300K':>8} {'F plane':>8}")
    for r in results:
        print(
            f"{r['mode']:>10} {r['wall_s']:>8.0f} {r['models']:>6} {r['labels']:>6} "
            f"{_f(r['force_rmse'])} {_f(r['plane_force_rmse'])}   ({r['stop']})"
        )
    streaming = results[1]
    for role, s in streaming["roles"].items():
        wall = s["busy_s"] + s["idle_s"]
        print(f"  streaming {role:>8}: busy {100 * s['busy_s'] / max(wall, 1e-9):5.1f} % "
              f"({s['tasks']} tasks, {s['worker_s']:.0f} worker-s)")  # fmt: skip
    it, st = results
    print(
        f"summary: budget {args.budget} labels; wall iterations {it['wall_s']:.0f} s, streaming "
        f"{st['wall_s']:.0f} s ({it['wall_s'] / max(st['wall_s'], 1e-9):.2f}x); final force RMSE "
        f"{_f(it['force_rmse'])} vs {_f(st['force_rmse'])} eV/A"
    )


def _f(v: float | None) -> str:
    return f"{v:>8.4f}" if v is not None else f"{'-':>8}"


if __name__ == "__main__":
    main()
