"""Parsl apps: thin wrappers that run library step functions on the executor of their role.

The step functions live in :mod:`ubmd.campaign.steps` (no parsl there); they take and return
paths and small dicts, so large arrays travel as files, not through parsl's pickles.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, NoReturn

from ubmd.pipeline.liveness import InterchangeWatch, worker_lost
from ubmd.pipeline.sites import ExecutorSpec, SiteConfig

# The order in which an executor that several roles share (a laptop's) starts queued tasks,
# lower first (parsl's HighThroughputExecutor `priority`): labels are the budget and the slowest
# step, a selection is what labels wait for, a new model freshens every later candidate; reports
# can wait, and exploration, which a streaming campaign runs ahead of need, only fills workers
# nothing else wants. Executors of one role (a cluster's) see one priority: first come first served.
PRIORITY_OF_STEP: dict[str, int] = {
    "label_task": 0,
    "select_task": 1,
    "select_stream_task": 1,
    "train_task": 2,
    "bundle_task": 2,
    "report_task": 3,
    "explore_task": 4,
    "segment_task": 4,
}


def _run_step(
    step_name: str,
    threads: int,
    /,
    *args: Any,
    parsl_resource_specification: dict[str, Any] | None = None,  # parsl's, not the step's
    **kwargs: Any,
) -> Any:
    """Executed in a worker: pin the thread count, then call the named library step."""
    import importlib
    import os

    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:  # a label-only worker without torch is fine
        pass
    import time

    t0 = time.time()
    steps = importlib.import_module("ubmd.campaign.steps")
    out = getattr(steps, step_name)(*args, **kwargs)
    if isinstance(out, dict):  # when the body ran, for the orchestration-overhead benchmark
        out = {**out, "_body_s": (t0, time.time())}
    return out


@dataclass
class TaskTracker:
    """Every future submitted, by phase, for the live display and ``status``."""

    futures: dict[str, list[Any]] = field(default_factory=lambda: collections.defaultdict(list))

    def add(self, phase: str, future: Any) -> Any:
        self.futures[phase].append(future)
        return future

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for phase, futs in self.futures.items():
            c = collections.Counter(_state(f) for f in futs)
            out[phase] = dict(c)
        return out


def _state(future: Any) -> str:
    if future.done():
        return "failed" if future.exception() is not None else "done"
    record = getattr(future, "task_record", None) or {}
    status = getattr(record.get("status"), "name", "pending")
    if status in ("launched", "running", "running_ended"):
        return "running"
    return "pending"


class Apps:
    """One parsl python_app per step, bound to the executor its role maps to."""

    ROLE_OF_STEP: ClassVar[dict[str, str]] = {
        "label_task": "label",
        "train_task": "train",
        "bundle_task": "train",
        "explore_task": "explore",
        "select_task": "select",
        "report_task": "select",
        # streaming mode's own tasks (ubmd.campaign.streaming)
        "segment_task": "explore",
        "select_stream_task": "select",
    }

    def __init__(self, site: SiteConfig, *, watch: InterchangeWatch | None = None) -> None:
        from parsl import python_app

        # the running executors' interchanges (None: nothing to watch, as in unit tests)
        self.watch = watch
        self._apps: dict[str, Callable[..., Any]] = {}
        self._specs: dict[str, ExecutorSpec] = {}
        for step, role in self.ROLE_OF_STEP.items():
            label = site.roles[role]
            spec = self._specs[step] = site.executors[label]
            threads = max(1, int(spec.cores_per_worker))
            app = python_app(_run_step, executors=[label])
            extra: dict[str, Any] = {}
            if step == "label_task":  # site properties the labeler needs (see sites.py)
                extra = {"launcher": spec.mpi_command, "scratch_dir": site.scratch_dir or ""}
            extra["parsl_resource_specification"] = {"priority": PRIORITY_OF_STEP[step]}
            self._apps[step] = _bind(app, step, threads, extra)

    def check_alive(self) -> None:
        """Raise :class:`~ubmd.pipeline.liveness.ExecutorLost` if an executor's interchange
        has exited or parsl gave up on its blocks: the waiting loops call this on every tick
        (parsl would wait forever), and before they record a task's failure."""
        if self.watch is not None:
            self.watch.check()

    def task_failed(self, task: str, exc: BaseException) -> NoReturn:
        """Raise what a task that failed after parsl's retries means for the run: its
        executor's loss, its worker's loss (one line each), or else the task's own error."""
        self.check_alive()
        if (lost := worker_lost(exc, task)) is not None:
            raise lost from exc
        raise RuntimeError(f"{task} task failed after retries: {exc}") from exc

    def threads_alone(self, step: str, tasks: int) -> int:
        """Threads for each of ``tasks`` tasks of ``step`` while nothing else runs on their
        executor (:meth:`ExecutorSpec.threads_alone`)."""
        return self._specs[step].threads_alone(tasks)

    def __getattr__(self, step: str) -> Callable[..., Any]:
        try:
            return self.__dict__["_apps"][step]
        except KeyError:
            raise AttributeError(step) from None


def _bind(
    app: Callable[..., Any], step: str, threads: int, extra: dict[str, Any]
) -> Callable[..., Any]:
    def submit(*args: Any, threads_override: int | None = None, **kwargs: Any) -> Any:
        n = threads if threads_override is None else threads_override
        return app(step, n, *args, **extra, **kwargs)

    submit.__name__ = step
    return submit
