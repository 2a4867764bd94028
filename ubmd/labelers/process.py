"""The one subprocess seam: run a command in its own directory and process group.

Every external code (CP2K, VASP, ...) is started here.  The command runs in a new session
(``start_new_session=True``) so that it and everything it spawns (MPI ranks, helper scripts)
share one process group; on a time limit the whole group gets SIGTERM, then SIGKILL after a
grace period, and we wait for the leader.  After a normal exit the group is swept as well, so
no stray process survives a label.  stdout/stderr go to files in the work directory (not pipes:
a chatty program cannot block on a full pipe) and their tails are returned.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

TAIL_CHARS = 4000


@dataclass(frozen=True)
class ProcessOutcome:
    """What happened to one command."""

    returncode: int | None  # None if killed at the time limit before reporting a status
    timed_out: bool
    wall_time_s: float
    stdout_path: Path
    stderr_path: Path

    def stdout_tail(self, n: int = TAIL_CHARS) -> str:
        return read_tail(self.stdout_path, n)

    def stderr_tail(self, n: int = TAIL_CHARS) -> str:
        return read_tail(self.stderr_path, n)


def read_tail(path: Path, n: int = TAIL_CHARS) -> str:
    """The last ``n`` characters of a text file ("" if it does not exist)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 4 * n))
            return fh.read().decode("utf-8", errors="replace")[-n:]
    except FileNotFoundError:
        return ""


def _signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Send ``sig`` to a process group; False if the group no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # group leader gone and ids reused: nothing of ours left
        return False
    return True


def _process_table() -> list[tuple[int, str, int, int]]:
    """(pid, state, ppid, pgrp) of every process, from /proc; [] where /proc is unavailable."""
    table = []
    proc = Path("/proc")
    if not proc.is_dir():
        return table
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the command name (which may contain spaces): state ppid pgrp ...
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2:
            table.append((int(entry.name), fields[0], int(fields[1]), int(fields[2])))
    return table


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a group; [] where /proc is unavailable."""
    return [pid for pid, state, _, pgrp in _process_table() if pgrp == pgid and state not in "ZX"]


def descendants(root: int) -> list[int]:
    """Live descendants of ``root`` (any group: MPI launchers start ranks in new sessions)."""
    children: dict[int, list[int]] = {}
    live = set()
    for pid, state, ppid, _ in _process_table():
        children.setdefault(ppid, []).append(pid)
        if state not in "ZX":
            live.add(pid)
    out, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid in live:
            out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _signal_pids(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    # Zombies (reparented children nobody has reaped yet) still answer signal 0.
    return not Path("/proc").is_dir() or bool(group_members(pgid))


def kill_group(pgid: int, *, grace_s: float, extra: list[int] | None = None) -> None:
    """SIGTERM the group (and ``extra`` pids), wait up to ``grace_s``, then SIGKILL the rest.

    ``extra`` are processes outside the group that must go too (descendants that started their
    own session, e.g. MPI ranks); they are signalled after the group so that a launcher gets
    the chance to shut its ranks down cleanly first.
    """
    extra = extra or []
    if not _signal_group(pgid, signal.SIGTERM) and not extra:
        return
    _signal_pids(extra, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not _group_alive(pgid) and not any(_pid_alive(p) for p in extra):
            return
        time.sleep(0.02)
    _signal_group(pgid, signal.SIGKILL)
    _signal_pids([p for p in extra if _pid_alive(p)], signal.SIGKILL)
    # SIGKILL is asynchronous: give the kernel a moment so that callers see them gone.
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and any(_pid_alive(p) for p in extra):
        time.sleep(0.01)


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rfind(")") + 2 :][:1] not in ("Z", "X")


def run_command(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    timeout_s: float | None = None,
    grace_s: float = 5.0,
    stdout_name: str = "stdout.log",
    stderr_name: str = "stderr.log",
) -> ProcessOutcome:
    """Run ``argv`` in ``cwd`` (its own process group) and return the outcome.

    ``env`` entries are added to the current environment.  Raises ``FileNotFoundError`` if the
    executable cannot be started; a non-zero exit is reported in the outcome, not raised.
    """
    if not argv:
        raise ValueError("empty command: give at least the executable")
    cwd = Path(cwd)
    cwd.mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ)
    if env:
        full_env.update({str(k): str(v) for k, v in env.items()})
    stdout_path, stderr_path = cwd / stdout_name, cwd / stderr_name
    t0 = time.perf_counter()
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        pgid = proc.pid  # the leader of a new session is its own group leader
        timed_out = False
        try:
            returncode: int | None = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_group(pgid, grace_s=grace_s, extra=descendants(pgid))
            proc.wait()
            returncode = None
        except BaseException:  # KeyboardInterrupt or similar: never leave the group behind
            kill_group(pgid, grace_s=grace_s, extra=descendants(pgid))
            proc.wait()
            raise
        finally:
            # Children that outlived the leader (daemons, orphaned MPI ranks) go too.
            with contextlib.suppress(Exception):
                kill_group(pgid, grace_s=grace_s)
    return ProcessOutcome(
        returncode=returncode,
        timed_out=timed_out,
        wall_time_s=time.perf_counter() - t0,
        stdout_path=stdout_path,
        stderr_path=stderr_path,
    )
