"""The live campaign display: iteration, phase, tasks by state, labels stored, failures."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from ubmd.pipeline.apps import TaskTracker


class Display:
    """A rich Live table when enabled (a terminal), else one log line per phase change."""

    def __init__(self, tracker: TaskTracker, *, enabled: bool = True) -> None:
        self.tracker = tracker
        self.state: dict[str, Any] = {
            "iteration": 0,
            "phase": "starting",
            "labels_stored": 0,  # by this run
            "labels_failed": 0,
            "labels_before": 0,  # already in the store when this run started (a resume)
        }
        self.console = Console(stderr=True)
        self.enabled = enabled and self.console.is_terminal
        self._live: Live | None = None
        self._t0 = time.monotonic()
        self._last_phase: tuple[Any, Any] | None = None

    def __enter__(self) -> Display:
        if self.enabled:
            self._live = Live(
                self._table(), console=self.console, refresh_per_second=2, transient=False
            )
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.update(self._table())
            self._live.__exit__(*exc)
        self._log()

    def update(self, **changes: Any) -> None:
        self.state.update(changes)
        self.refresh()

    def refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._table())
        key = (self.state.get("iteration"), self.state.get("phase"))
        if key != self._last_phase:
            self._last_phase = key
            if self._live is None:
                self._log()

    def _log(self) -> None:
        s = self.state
        tasks = " ".join(
            f"{phase}:" + ",".join(f"{k}={v}" for k, v in sorted(c.items()))
            for phase, c in self.tracker.counts().items()
        )
        line = (
            f"[{time.monotonic() - self._t0:7.1f}s] iteration {s['iteration']} {s['phase']}: "
            f"labels stored {self._stored()}, failed {s['labels_failed']}"
        )
        if tasks:
            line += f" | tasks {tasks}"
        if s.get("message"):
            line += f" | {s['message']}"
        print(line, file=sys.stderr, flush=True)

    def _stored(self) -> str:
        s = self.state
        if not s["labels_before"]:
            return str(s["labels_stored"])
        return f"{s['labels_before'] + s['labels_stored']} ({s['labels_stored']} this run)"

    def _table(self) -> Table:
        s = self.state
        table = Table(
            title=f"ubmd campaign — {time.monotonic() - self._t0:.0f} s", show_header=True
        )
        table.add_column("")
        table.add_column("value")
        table.add_row("iteration", str(s["iteration"]))
        table.add_row("phase", str(s["phase"]))
        table.add_row("labels stored", self._stored())
        table.add_row("label failures", str(s["labels_failed"]))
        for phase, counts in self.tracker.counts().items():
            table.add_row(
                f"tasks: {phase}", ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
            )
        report = s.get("last_report") or {}
        test = report.get("test") or {}
        if test.get("force_rmse_eV_A") is not None:
            table.add_row("held-out force RMSE (eV/Å)", f"{test['force_rmse_eV_A']:.4f}")
        if report.get("ramachandran_coverage") is not None:
            table.add_row("Ramachandran coverage", f"{report['ramachandran_coverage']:.3f}")
        if s.get("message"):
            table.add_row("note", str(s["message"]))
        return table
