"""Nothing the driver starts outlives it, even when the driver is SIGKILLed (an OOM kill on a
login node leaves no chance to clean up).

parsl's interchange is a child of the driver, and LocalProvider starts each worker pool through
``bash -c '... &'`` in a process group of its own, so the pool is re-parented to init at once;
when the driver dies neither notices, and both hold ports and CPU for good. So the driver starts
this watchdog first: a small process (``python -m ubmd.pipeline.watchdog``) reading a pipe whose
write end only the driver holds. At EOF (the driver died, or let go at its normal end: it says
so on the pipe first, since a SIGKILLed driver closes its files before it shows as dead) it ends

- every process carrying this run's token in its environment: the driver sets it before parsl
  starts anything, so everything parsl starts inherits it, detached or not;
- the driver's descendants it last saw (a snapshot every second, by pid and start time, so a
  reused pid is never hit), for anything that started with a clean environment;

with SIGTERM, then SIGKILL for what is left after a grace period, and exits. The token is new for
every run: the watchdog of a killed run never touches the run that resumes it.

Optionally (``state=``, ``--state``) it keeps a small JSON file saying what it watches: written
(atomically) once it runs and again whenever the set of descendants it saw changes. A user can
read there which processes a driver's death would end; a test waits on it instead of a clock.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# the environment variable that marks every process one driver run starts
TOKEN_VAR = "UBMD_RUN_TOKEN"
GRACE_S = 2.0  # SIGTERM -> SIGKILL
INTERVAL_S = 1.0  # descendant snapshots and driver checks
STOP = b"stop\n"  # the driver's normal end, written before it closes the pipe


@dataclass
class Watchdog:
    """The driver's side: a running watchdog and the write end of its pipe."""

    process: subprocess.Popen
    write_fd: int
    token: str
    previous_token: str | None

    def stop(self, timeout: float = 10.0) -> None:
        """The driver's normal end: let go (the watchdog ends what parsl's cleanup left
        running apart from the driver's own children, then exits) and take the token out of
        this process's environment."""
        if self.previous_token is None:
            os.environ.pop(TOKEN_VAR, None)
        else:
            os.environ[TOKEN_VAR] = self.previous_token
        with contextlib.suppress(OSError):
            os.write(self.write_fd, STOP)
        with contextlib.suppress(OSError):
            os.close(self.write_fd)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=timeout)  # else it finishes on its own


def start(
    log: str | os.PathLike[str] | None = None,
    *,
    state: str | os.PathLike[str] | None = None,
    grace_s: float = GRACE_S,
    interval_s: float = INTERVAL_S,
) -> Watchdog:
    """Start the watchdog of this (driver) process and mark what it starts from now on.

    Call before parsl starts anything; call :meth:`Watchdog.stop` at the end. ``log``: a file
    the watchdog appends what it ended to; ``state``: a JSON file it keeps up to date with the
    descendants it watches (see :func:`write_state`)."""
    token = uuid.uuid4().hex
    read_fd, write_fd = os.pipe()  # not inheritable: only this process holds the write end
    env = {k: v for k, v in os.environ.items() if k != TOKEN_VAR}
    command = [sys.executable, "-m", "ubmd.pipeline.watchdog", "--driver", str(os.getpid())]
    command += ["--token", token, "--grace", str(grace_s), "--interval", str(interval_s)]
    if log is not None:
        command += ["--log", str(log)]
    if state is not None:
        command += ["--state", str(state)]
    try:
        process = subprocess.Popen(
            command,
            stdin=read_fd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,  # the driver's stderr may be gone when it matters
            env=env,
            start_new_session=True,  # a Ctrl-C or hangup of the driver's terminal is not its end
        )
    except BaseException:
        os.close(write_fd)
        raise
    finally:
        os.close(read_fd)
    previous = os.environ.get(TOKEN_VAR)
    os.environ[TOKEN_VAR] = token
    return Watchdog(process, write_fd, token, previous)


# ------------------------------------------------------------------ the watchdog process
def watch(
    fd: int, driver: int, interval: float = INTERVAL_S, state: Path | None = None
) -> tuple[dict, Any, bool]:
    """Wait for EOF on ``fd`` or the driver's end. Returns the driver's descendants last seen
    (pid -> psutil.Process), those started after this watchdog (the driver's older children,
    when a test or a benchmark runs the driver in-process, are none of its business), the
    driver's psutil.Process (None if it was gone before the watchdog started) and whether the
    driver said it stops (:data:`STOP` before the EOF: its normal end). ``state``: a
    file to keep what it watches in (:func:`write_state`), after the first snapshot and after
    each one that changed it."""
    import psutil

    try:
        parent = psutil.Process(driver)
        since = psutil.Process().create_time()  # same clock as the children's start times
    except psutil.NoSuchProcess:
        return {}, None, False
    if parent.pid != os.getppid():  # the driver died before the watchdog started
        return {}, None, False
    seen: dict[int, psutil.Process] = {}
    written: set | None = None  # the snapshot last written to ``state``
    said = b""
    while True:
        ready, _, _ = select.select([fd], [], [], interval)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                return seen, parent, said == STOP
            said += chunk
            continue
        # a fork of the driver may hold the pipe open: check the driver itself too
        if not _alive(parent):
            return seen, parent, False
        _remember(seen, parent, since)
        if state is not None and (now := _identities(seen)) != written:
            write_state(state, parent.pid, seen.values())
            written = now


def _remember(seen: dict, parent, since: float) -> None:
    import psutil

    with contextlib.suppress(psutil.Error):
        for child in parent.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                # strictly later: started in the same clock tick as the watchdog is older
                if child.pid != os.getpid() and child.create_time() > since:
                    seen[child.pid] = child
    for pid in [pid for pid, p in seen.items() if not _alive(p)]:
        del seen[pid]


def _identities(seen: dict) -> set:
    import psutil

    identities = set()
    for pid, p in seen.items():
        with contextlib.suppress(psutil.Error):
            identities.add((pid, p.create_time()))  # cached by psutil: no system call
    return identities


def write_state(path: Path, driver: int, watched: Iterable) -> None:
    """Replace ``path`` (atomically: a reader never sees half a file) by what this watchdog
    watches: its pid, the driver's, the time, and each descendant it would end should the
    driver die (``pid``, ``started``: the start time as a Unix time, ``command``). Never
    raises: the watchdog must outlive a full disk."""
    import psutil

    procs = []
    for p in watched:
        with contextlib.suppress(psutil.Error):
            command = " ".join(p.cmdline())[:200]
            procs.append({"pid": p.pid, "started": p.create_time(), "command": command})
    data = {
        "watchdog": os.getpid(),
        "driver": driver,
        "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "watching": sorted(procs, key=lambda d: d["pid"]),
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


def carriers(token: str) -> list:
    """This user's processes whose environment holds ``token``."""
    import psutil

    uid, out = os.getuid(), []
    for p in psutil.process_iter(["uids"]):
        with contextlib.suppress(psutil.Error):
            mine = p.info["uids"] is not None and p.info["uids"].real == uid
            if mine and p.environ().get(TOKEN_VAR) == token:
                out.append(p)
    return out


def sweep(token: str, seen: Iterable, exclude: set[int], grace: float = GRACE_S) -> list[str]:
    """End what the driver started: SIGTERM, then SIGKILL after ``grace``. Scans again for what
    a dying process started meanwhile. Returns a line per process ended."""
    import psutil

    ended: list[str] = []
    targets = list(seen)
    for _ in range(3):
        found = {p.pid: p for p in [*targets, *carriers(token)] if p.pid not in exclude}
        targets = [p for p in found.values() if _alive(p)]
        if not targets:
            break
        ended += [_describe(p) for p in targets]
        _signal(targets, "terminate")
        _, alive = psutil.wait_procs(targets, timeout=grace)
        alive = [p for p in alive if _alive(p)]
        _signal(alive, "kill")
        psutil.wait_procs(alive, timeout=grace)
        targets = []
    return ended


def _signal(procs: Iterable, how: str) -> None:
    import psutil

    for p in procs:
        with contextlib.suppress(psutil.Error):  # psutil refuses a pid that was reused
            getattr(p, how)()


def _children(p) -> list:
    import psutil

    try:
        return p.children()
    except psutil.Error:
        return []


def _alive(p) -> bool:
    """Running and not a zombie (a zombie waits for its parent or init; it holds nothing)."""
    import psutil

    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _describe(p) -> str:
    import psutil

    try:
        return f"{p.pid} {' '.join(p.cmdline())[:200]}"
    except psutil.Error:
        return str(p.pid)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ubmd.pipeline.watchdog")
    parser.add_argument("--driver", type=int, required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--grace", type=float, default=GRACE_S)
    parser.add_argument("--interval", type=float, default=INTERVAL_S)
    parser.add_argument("--log", type=Path)
    parser.add_argument("--state", type=Path)
    args = parser.parse_args(argv)
    seen, driver, stopped = watch(sys.stdin.fileno(), args.driver, args.interval, args.state)
    spare, how = {os.getpid(), args.driver}, "died"
    if stopped and driver is not None and _alive(driver):
        # the normal end: the driver reaps its own children (parsl waits for its interchange;
        # multiprocessing's helpers end with it); the rest, detached pools, are not its
        spare |= {p.pid for p in _children(driver)}
        how = "finished"
    ended = sweep(args.token, seen.values(), spare, args.grace)
    if args.log is not None and ended:
        with contextlib.suppress(OSError), args.log.open("a") as f:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            f.writelines(f"{stamp} driver {args.driver} {how}: ended {line}\n" for line in ended)
    return 0


if __name__ == "__main__":
    sys.exit(main())
