"""Busy and idle time per role (explore, select, label, train, report) of a streaming campaign.

The driver records when each task's body ran (the worker's clock, seconds since the epoch) and
when each driver run started and ended; a role is busy while at least one of its tasks runs.
An iterations-mode campaign keeps the same record (``reports/roles.json``), so that the two
modes compare. Kept in ``stream/roles.json`` (rewritten atomically) so that a resumed run adds to it, shown by
``ubmd status`` and drawn as a timeline (``reports/timeline.png``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ubmd.campaign.layout import atomic_path, read_json, write_json_atomic

ROLES = ("explore", "select", "label", "train", "report")
PHASE_ROLE = {"calibrate": "train"}  # the driver's phases that are not role names


@dataclass
class RoleClock:
    spans: list[dict[str, Any]] = field(default_factory=list)  # role, task, start, end
    runs: list[list[float]] = field(default_factory=list)  # [start, end] of each driver run

    @classmethod
    def load(cls, path: Path) -> RoleClock:
        if not path.exists():
            return cls()
        data = read_json(path)
        return cls(spans=list(data.get("spans", [])), runs=list(data.get("runs", [])))

    def start_run(self) -> None:
        now = time.time()
        self.runs.append([now, now])

    def add(self, role: str, task: str, body: tuple[float, float]) -> None:
        self.spans.append({"role": role, "task": task, "start": body[0], "end": body[1]})

    def add_phases(self, spans: list[tuple[int, str, float, float]]) -> None:
        """The driver's (iteration, phase, start, end) task spans; calibrating is training."""
        for _, phase, t0, t1 in spans:
            self.add(PHASE_ROLE.get(phase, phase), phase, (t0, t1))

    def save(self, path: Path) -> None:
        if self.runs:
            self.runs[-1][1] = time.time()
        write_json_atomic(path, {"summary": self.summary(), "spans": self.spans, "runs": self.runs})

    def summary(self) -> dict[str, dict[str, float]]:
        """Per role: busy seconds (some task of it running), idle seconds (of the driver runs'
        wall time), worker seconds (all its tasks' durations added) and its task count."""
        wall = sum(max(0.0, b - a) for a, b in self.runs)
        out = {}
        for role in ROLES:
            spans = [(s["start"], s["end"]) for s in self.spans if s["role"] == role]
            busy = _union_length(spans)
            out[role] = {
                "busy_s": round(busy, 3),
                "idle_s": round(max(0.0, wall - busy), 3),
                "worker_s": round(sum(b - a for a, b in spans), 3),
                "tasks": len(spans),
            }
        return out


def _union_length(spans: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(spans):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def format_roles(summary: dict[str, dict[str, float]]) -> str:
    """One line, e.g. ``explore busy 95% (120 s), label busy 40% ...``."""
    parts = []
    for role, s in summary.items():
        wall = s["busy_s"] + s["idle_s"]
        share = 100.0 * s["busy_s"] / wall if wall > 0 else 0.0
        parts.append(f"{role} busy {share:.0f}% ({s['busy_s']:.0f} s, {s['tasks']} tasks)")
    return ", ".join(parts)


def plot_timeline(clock: RoleClock, png: Path) -> None:
    """One band per role, one lane per concurrently running task, a bar per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = min([r[0] for r in clock.runs] + [s["start"] for s in clock.spans] or [0.0])
    fig, ax = plt.subplots(figsize=(10, 1.0 + 0.9 * len(ROLES)))
    colours = dict(
        zip(ROLES, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:grey"), strict=True)
    )
    ticks = []
    for band, role in enumerate(ROLES):
        spans = sorted((s["start"] - t0, s["end"] - t0) for s in clock.spans if s["role"] == role)
        lane_ends: list[float] = []
        for a, b in spans:
            lane = next((k for k, e in enumerate(lane_ends) if e <= a), len(lane_ends))
            if lane == len(lane_ends):
                lane_ends.append(b)
            lane_ends[lane] = b
            height = 0.8 / 4
            y = band + 0.1 + (lane % 4) * height
            ax.broken_barh([(a, max(b - a, 1e-3))], (y, height * 0.9), color=colours[role])
        ticks.append(band + 0.5)
    ax.set_yticks(ticks, list(ROLES))
    ax.set_xlabel("wall time (s)")
    ax.set_title("tasks per role")
    for run in clock.runs[1:]:  # where a resumed run started
        ax.axvline(run[0] - t0, color="grey", linestyle=":")
    fig.tight_layout()
    with atomic_path(png, ".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
