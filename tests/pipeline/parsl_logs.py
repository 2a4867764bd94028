"""What parsl did, read from the logs it writes under a campaign's ``parsl/`` folder.

``runinfo/NNN/parsl.log`` (the driver's DataFlowKernel) records every try of every task::

    Parsl task 10 try 0 launched on executor local with executor id 11
    Task 10 try 0 failed with exception of type WorkerLost
    Parsl task 10 try 1 launched on executor local with executor id 12
    Task 10 changing state from launched to exec_done

and ``worker_logs/<executor>/block-<b>/<pool>/worker_<k>.log`` which worker process (its pid is
in the line) received and completed each executor task::

    1796086573.954922 ... HTEX-Worker-1-3906 ... Received executor task 12
    1796086578.042794 ... HTEX-Worker-1-3906 ... Completed executor task 12

Executor task ids count per executor, so a try is named by (executor, executor id).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_LAUNCHED = re.compile(
    r"Parsl task (\d+) try (\d+) launched on executor (\S+) with executor id (\d+)"
)
_FAILED = re.compile(r"Task (\d+) try (\d+) failed with exception of type (\w+)")
_DONE = re.compile(r"Task (\d+) changing state from \w+ to exec_done")
_WORKER = re.compile(
    r"^(\d+\.\d+) .*HTEX-Worker-(\d+)-(\d+) .* (Received|Completed) executor task (\d+)$"
)


@dataclass
class Try:
    task: int
    try_id: int
    executor: str
    executor_id: int
    failure: str | None = None  # the exception type when this try failed


@dataclass
class WorkerRun:
    """One executor task in one worker process: when it was received and (if) completed."""

    executor: str
    executor_id: int
    block: str
    pid: int
    received: float
    completed: float | None = None


def dfk_log(parsl_dir: Path) -> Path:
    """The parsl.log of the only run under ``parsl_dir`` (executor ids restart per run)."""
    logs = sorted((parsl_dir / "runinfo").glob("*/parsl.log"))
    assert len(logs) == 1, f"expected one parsl run, found {logs}"
    return logs[0]


def tries(parsl_dir: Path) -> dict[int, list[Try]]:
    """Every try of every task, in order, with the exception type of those that failed."""
    out: dict[int, list[Try]] = {}
    for line in dfk_log(parsl_dir).read_text(errors="replace").splitlines():
        if m := _LAUNCHED.search(line):
            task, try_id = int(m[1]), int(m[2])
            out.setdefault(task, []).append(Try(task, try_id, m[3], int(m[4])))
        elif m := _FAILED.search(line):
            task, try_id = int(m[1]), int(m[2])
            (hit,) = [t for t in out.get(task, []) if t.try_id == try_id]
            hit.failure = m[3]
    return out


def finished(parsl_dir: Path) -> set[int]:
    """The tasks that ended in exec_done (a result, not an exception)."""
    text = dfk_log(parsl_dir).read_text(errors="replace")
    return {int(m[1]) for m in _DONE.finditer(text)}


def worker_runs(parsl_dir: Path) -> list[WorkerRun]:
    """Every executor task a worker process received, from the worker logs."""
    runs: dict[tuple[str, int], WorkerRun] = {}
    for log in sorted((parsl_dir / "worker_logs").glob("*/block-*/*/worker_*.log")):
        executor, block = log.parents[2].name, log.parents[1].name
        for line in log.read_text(errors="replace").splitlines():
            m = _WORKER.search(line)
            if m is None:
                continue
            key = (executor, int(m[5]))
            if m[4] == "Received":
                runs[key] = WorkerRun(executor, int(m[5]), block, int(m[3]), float(m[1]))
            elif key in runs:
                runs[key].completed = float(m[1])
    return list(runs.values())


def busy(parsl_dir: Path, executor: str) -> list[WorkerRun]:
    """The executor tasks that workers of ``executor`` have received and not completed."""
    return [r for r in worker_runs(parsl_dir) if r.executor == executor and r.completed is None]


def task_of(parsl_dir: Path, executor: str, executor_id: int) -> Try | None:
    """The task try that parsl sent to ``executor`` as ``executor_id``."""
    for task_tries in tries(parsl_dir).values():
        for t in task_tries:
            if t.executor == executor and t.executor_id == executor_id:
                return t
    return None


def check_retried_elsewhere(
    parsl_dir: Path, killed: WorkerRun, failure: str, product: Path
) -> WorkerRun:
    """Assert that the task whose try ran as ``killed`` failed with ``failure`` on that try
    only, was tried again, and finished in another worker process, which wrote ``product``
    (its modification time lies inside the retried run). Returns the retried run."""
    first = task_of(parsl_dir, killed.executor, killed.executor_id)
    assert first is not None, f"no task was launched as {killed}"
    history = tries(parsl_dir)
    attempts = history[first.task]
    expected = [(0, failure), (1, None)]  # one try lost with the worker, one more that ran
    assert [(t.try_id, t.failure) for t in attempts] == expected, f"tries: {attempts}"
    assert first.task in finished(parsl_dir), f"task {first.task} did not finish: {attempts}"
    failed = {t.task: t.failure for ts in history.values() for t in ts if t.failure}
    assert failed == {first.task: failure}, f"other tasks failed too: {failed}"
    retry = attempts[1]
    (again,) = [
        r
        for r in worker_runs(parsl_dir)
        if (r.executor, r.executor_id) == (retry.executor, retry.executor_id)
    ]
    assert again.completed is not None, f"the retried try never completed: {again}"
    assert again.pid != killed.pid, "the retry ran in the killed worker process"
    written = product.stat().st_mtime
    assert again.received <= written <= again.completed, (
        f"{product} was not written by the retried try ({again.received} <= {written} "
        f"<= {again.completed})"
    )
    return again
