"""Benchmark: batch selection at 20,000 and 100,000 candidates x 512 features, batch 64, CPU.

Every (pool size, method) runs in a fresh subprocess so that the peak resident memory
(``resource.getrusage(...).ru_maxrss``, which sees torch's allocations) belongs to that case
alone. Features are float32 with a decaying spectrum (like gradient features); 512 training
structures (the paper's campaign size, ``--train-size``) condition the selection. Reported per case: seconds inside ``select_batch`` (or
``d_optimal``), peak RSS, and the peak minus the RSS before the call (the selection's own memory).

    OMP_NUM_THREADS=1 python tests/benchmarks/select_bench.py [--threads 1] [--sizes 20000 100000]

Targets: <= 5 s per method at 20,000; memory linear in pool size (ratio 100k/20k ~ 5, an N×N
matrix would give 25).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

K = 512
B = 64
T = 512
METHODS = ("random", "max_unc", "max_dist", "max_det", "lcmd", "kmeans_pp")
CASES = (
    [(m, "linear") for m in METHODS]
    + [("max_det", "posterior"), ("lcmd", "posterior"), ("d_optimal", "linear")]
)  # fmt: skip


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def features(n: int, t: int, k: int = K):
    """(pool (n, k), train (t, k)) float32 features with a decaying spectrum, seeded."""
    import numpy as np

    rng = np.random.default_rng(0)
    mix = (rng.standard_normal((k, k)) * np.geomspace(1.0, 1e-3, k)[None, :]).astype(np.float32)
    pool = np.empty((n, k), dtype=np.float32)
    for i in range(0, n, 10_000):  # chunked, so generating the data does not set the peak
        rows = min(10_000, n - i)
        pool[i : i + rows] = rng.standard_normal((rows, k), dtype=np.float32) @ mix.T
    train = rng.standard_normal((t, k), dtype=np.float32) @ mix.T
    return pool, train


def run_case(n: int, method: str, kernel: str, threads: int, t: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from ubmd.select import d_optimal, select_batch

    pool, train = features(n, t)
    before = _current_rss_mb()
    t0 = time.perf_counter()
    if method == "d_optimal":
        res = d_optimal(pool, B, train_features=train)
        extra = f"swaps={len(res.swaps)}"
    else:
        res = select_batch(pool, B, method=method, train_features=train, kernel=kernel)
        extra = ""
    seconds = time.perf_counter() - t0
    assert len(res.indices) == B and len(set(res.indices.tolist())) == B
    return {
        "n": n,
        "method": method,
        "kernel": kernel,
        "seconds": seconds,
        "peak_mb": _rss_mb(),
        "before_mb": before,
        "extra": extra,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--train-size", type=int, default=T)
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000])
    ap.add_argument("--case", nargs=3, metavar=("N", "METHOD", "KERNEL"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        n, method, kernel = int(args.case[0]), args.case[1], args.case[2]
        print(json.dumps(run_case(n, method, kernel, args.threads, args.train_size)))
        return

    print(f"K={K} B={B} T={args.train_size} threads={args.threads} float32 input, float64 compute")
    print(f"{'N':>7} {'method':>10} {'kernel':>9} {'s':>7} {'peak MB':>8} {'own MB':>7}  note")
    rows = {}
    for n in args.sizes:
        for method, kernel in CASES:
            cmd = [sys.executable, __file__, "--threads", str(args.threads)]
            cmd += ["--train-size", str(args.train_size)]
            out = subprocess.run(
                [*cmd, "--case", str(n), method, kernel], capture_output=True, text=True
            )
            if out.returncode != 0:
                print(f"{n:>7} {method:>10} {kernel:>9} FAILED: {out.stderr.strip()[-300:]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            own = r["peak_mb"] - r["before_mb"]
            rows[(n, method, kernel)] = (r["seconds"], r["peak_mb"], own)
            print(
                f"{n:>7} {method:>10} {kernel:>9} {r['seconds']:7.2f} {r['peak_mb']:8.0f} "
                f"{own:7.0f}  {r['extra']}",
                flush=True,
            )

    small, large = min(args.sizes), max(args.sizes)
    at_small = {(m, k): v for (n, m, k), v in rows.items() if n == small}
    worst = max((v[0] for (m, _), v in at_small.items() if m in METHODS), default=float("nan"))
    design_s = at_small.get(("d_optimal", "linear"), (float("nan"),))[0]
    pairs = [(m, k) for m, k in CASES if (large, m, k) in rows and (small, m, k) in rows]
    own = [rows[(large, m, k)][2] / max(rows[(small, m, k)][2], 1e-9) for m, k in pairs]
    peak = [rows[(large, m, k)][1] / rows[(small, m, k)][1] for m, k in pairs]
    nan = float("nan")
    print(
        f"SUMMARY: slowest selection method at N={small}: {worst:.2f} s (target <= 5 s), "
        f"d_optimal {design_s:.2f} s; memory ratio N={large}/{small}: own "
        f"{min(own, default=nan):.1f}-{max(own, default=nan):.1f}, peak RSS "
        f"{min(peak, default=nan):.1f}-{max(peak, default=nan):.1f} "
        f"(linear = {large / small:.0f}, N×N = {(large / small) ** 2:.0f})"
    )


if __name__ == "__main__":
    main()
