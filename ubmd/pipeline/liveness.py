"""A campaign driver notices when an executor is gone, instead of waiting forever or
reporting parsl's failure as a bug.

Each HighThroughputExecutor runs an interchange process beside the driver; tasks and results
pass through it. If it dies (the OOM killer on a login node, a stray ``kill``), parsl's
submit side neither notices nor fails the tasks in flight (parsl issue 3374): the driver
would wait for results that can never come. The driver's waiting loops call
:meth:`InterchangeWatch.check` on every tick (one non-blocking ``waitpid`` per executor), and
a dead interchange ends the run with :class:`InterchangeLost`: a one-line error that says
how to go on. Nothing stored is at risk: the store commits each label as it arrives.

A task whose worker died on every try (parsl's ``WorkerLost``, ``ManagerLost``) is
:class:`WorkerLost`, not a traceback: nothing in the task went wrong, its process was killed.
Parsl itself gives up on an executor whose blocks all fail (workers that never start: a
broken ``worker_init``, a scheduler that rejects the job) and fails its tasks. That is the
site's problem, not a label's or ubmd's: :class:`BlocksFailed` says where the blocks' output
is, and the driver checks for it before it records a failed task as a failed label.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class ExecutorLost(ChildProcessError):
    """An executor can run no more tasks. A ``ChildProcessError`` (an ``OSError``): not a bug
    in ubmd, so the CLI prints its message without a traceback and exits non-zero."""


class InterchangeLost(ExecutorLost):
    """parsl's interchange of an executor exited while the campaign ran."""


class BlocksFailed(ExecutorLost):
    """parsl gave up on an executor: its blocks failed (workers that never started)."""


class WorkerLost(ExecutorLost):
    """A task's worker process or worker pool died on every try (killed, out of memory)."""


def worker_lost(exc: BaseException, task: str) -> WorkerLost | None:
    """A one-line :class:`WorkerLost` when ``exc`` (a task's failure after parsl's retries) is
    the loss of the process that ran it rather than an error of the task itself; else None."""
    from parsl.executors.high_throughput.errors import ManagerLost
    from parsl.executors.high_throughput.errors import WorkerLost as ParslWorkerLost

    if not isinstance(exc, (ParslWorkerLost, ManagerLost)):
        return None
    return WorkerLost(
        f"the {task} task failed on every try: {exc} (a process killed, often by the "
        "out-of-memory killer, or a node lost); every label stored so far is kept: run the "
        "same command again to resume (the site's `retries` sets the tries)"
    )


@dataclass(frozen=True)
class InterchangeWatch:
    """Started parsl HighThroughputExecutors by label; :meth:`check` polls their interchanges."""

    executors: Mapping[str, Any]

    @classmethod
    def of(cls, executors: Mapping[str, Any]) -> InterchangeWatch:
        """From parsl's executors by label (``dfk.executors``); executors without a local
        interchange process (parsl's internal ``_parsl_internal``, other kinds) are skipped."""
        from parsl.executors import HighThroughputExecutor

        return cls(
            {
                label: ex
                for label, ex in executors.items()
                if isinstance(ex, HighThroughputExecutor) and ex.interchange_proc is not None
            }
        )

    def check(self) -> None:
        """Raise :class:`InterchangeLost` if an interchange has exited, after putting its
        executor in parsl's bad state: its tasks fail, and parsl's cleanup skips the scale-in
        that would wait forever on the dead interchange. Raise :class:`BlocksFailed` if
        parsl has put an executor in that state itself."""
        for label, executor in self.executors.items():
            proc = executor.interchange_proc
            code = proc.poll()
            if code is None:
                if executor.bad_state_is_set:
                    raise _blocks_failed(label, executor)
                continue
            exc = InterchangeLost(
                f"parsl's interchange of executor {label!r} (pid {proc.pid}) {_how(code)} "
                "while the campaign ran, so no task can finish; every label stored so far "
                "is kept: run the same command again to resume"
            )
            if not executor.bad_state_is_set:
                executor.set_bad_state_and_fail_all(exc)
            raise exc


def _blocks_failed(label: str, executor: Any) -> BlocksFailed:
    reason = " ".join(str(executor.executor_exception).split())  # parsl's, on one line
    return BlocksFailed(
        f"parsl gave up on executor {label!r}: its blocks failed ({reason}); their "
        f"scripts and output are in {executor.provider.script_dir}; check the site's "
        "worker_init and scheduler settings, then run the same command again to resume "
        "(every label stored so far is kept)"
    )


def _how(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (the out-of-memory killer sends this)" if -code == signal.SIGKILL else ""
        return f"was killed by {name}{hint}"
    return f"exited with status {code}"
