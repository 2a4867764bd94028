"""Timing helper shared by the benchmark scripts (run as scripts, so imported by name)."""

from __future__ import annotations

import statistics
import time


def median_cpu(fns: dict, repeats: int) -> dict[str, float]:
    """Median CPU seconds of this process per call of each function, calls interleaved
    (after three warm-up calls each), so machine load disturbs the ratios little."""
    for fn in fns.values():
        for _ in range(3):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.process_time()
            fn()
            times[k].append(time.process_time() - t0)
    return {k: statistics.median(v) for k, v in times.items()}
