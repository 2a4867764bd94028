"""Campaign benchmark: orchestration overhead, and biased vs unbiased exploration side by side.

Runs the quickstart campaign (alanine dipeptide, GFN2-xTB, built-in model) on the local site
twice with the same seed and label budget: once with uncertainty-biased MD (as shipped) and
once with plain MD. Prints

1. the orchestration overhead of the biased run per iteration: the part of the iteration's wall
   time during which no app body was running (parsl dispatch, driver bookkeeping, store appends),
   as a fraction of the iteration (target <= 5 %);
2. one table: after each iteration, labels, Ramachandran coverage and held-out force RMSE for both.

    python tests/benchmarks/campaign_bench.py [--iterations 6] [--out /tmp/campaign_bench]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def union_length(spans: list[tuple[float, float]], lo: float, hi: float) -> float:
    """Length of the union of intervals clipped to [lo, hi]."""
    total, end = 0.0, lo
    for a, b in sorted((max(a, lo), min(b, hi)) for a, b in spans):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def run(name: str, sampler: str, iterations: int, out: Path) -> tuple[object, Path]:
    from ubmd.campaign.config import parse_campaign
    from ubmd.pipeline.driver import run_campaign
    from ubmd.pipeline.sites import load_site

    src = ROOT / "workflows" / "quickstart" / "campaign.yaml"
    data = yaml.safe_load(src.read_text())
    data["name"] = name
    data["directory"] = str(out / name)
    data["exploration"]["settings"]["sampler"] = sampler
    data["stopping"]["max_iterations"] = iterations
    config = parse_campaign(data, base_dir=src.parent)
    t0 = time.perf_counter()
    summary = run_campaign(config, load_site("local"), live=False)
    print(
        f"{name}: {summary.iterations_done} iterations in {time.perf_counter() - t0:.0f} s ({summary.stop_reason})",
        flush=True,
    )
    return summary, out / name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--out", type=Path, default=Path("/tmp/ubmd_campaign_bench"))
    args = parser.parse_args()
    if args.out.exists():
        import shutil

        shutil.rmtree(args.out)
    biased, biased_dir = run("biased", "biased_md", args.iterations, args.out)
    _, unbiased_dir = run("unbiased", "md", args.iterations, args.out)

    print("\norchestration overhead (biased run): wall time with no app body running")
    print(f"{'iteration':>9} {'wall s':>8} {'in apps s':>10} {'overhead':>9}")
    fractions = []
    for it, lo, hi in biased.iteration_spans:
        spans = [(a, b) for i, _, a, b in biased.body_spans if i == it]
        busy = union_length(spans, lo, hi)
        frac = 1.0 - busy / (hi - lo)
        fractions.append(frac)
        print(f"{it:>9} {hi - lo:>8.1f} {busy:>10.1f} {100 * frac:>8.1f}%")
    total_wall = sum(hi - lo for _, lo, hi in biased.iteration_spans)
    total_busy = sum(
        union_length([(a, b) for i, _, a, b in biased.body_spans if i == it], lo, hi)
        for it, lo, hi in biased.iteration_spans
    )
    overall = 1.0 - total_busy / total_wall

    print("\nbiased vs unbiased (same seed, same label budget)")
    print(
        f"{'iteration':>9} {'labels':>7} {'cov biased':>11} {'cov unbiased':>13} {'F-RMSE biased':>14} {'F-RMSE unbiased':>16}"
    )
    last = {}
    for it in range(1, args.iterations + 1):
        rb = _report(biased_dir, it)
        ru = _report(unbiased_dir, it)
        if rb is None and ru is None:
            break
        row = {
            "labels": (rb or ru).get("labels"),
            "cov_b": (rb or {}).get("ramachandran_coverage"),
            "cov_u": (ru or {}).get("ramachandran_coverage"),
            "rmse_b": ((rb or {}).get("test") or {}).get("force_rmse_eV_A"),
            "rmse_u": ((ru or {}).get("test") or {}).get("force_rmse_eV_A"),
        }
        last = row
        print(
            f"{it:>9} {row['labels']:>7} {_f(row['cov_b']):>11} {_f(row['cov_u']):>13} {_f(row['rmse_b']):>14} {_f(row['rmse_u']):>16}"
        )
    print(
        f"SUMMARY orchestration overhead {100 * overall:.2f} % of iteration wall time (target <= 5 %); "
        f"final Ramachandran coverage biased {_f(last.get('cov_b'))} vs unbiased {_f(last.get('cov_u'))}; "
        f"force RMSE biased {_f(last.get('rmse_b'))} vs unbiased {_f(last.get('rmse_u'))} eV/A"
    )


def _report(root: Path, it: int) -> dict | None:
    path = root / f"iter_{it:03d}" / "report.json"
    return json.loads(path.read_text()) if path.exists() else None


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


if __name__ == "__main__":
    sys.exit(main())
