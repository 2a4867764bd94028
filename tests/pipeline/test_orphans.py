"""Nothing a driver starts outlives it: after a SIGKILL of the driver (an OOM kill on a login
node) its watchdog ends its interchange, worker pools and workers (within a heartbeat period on
an idle machine); a watchdog ends only its own run's processes. The tests wait on evidence
(the watchdog's state file, its exit, its log), with deadlines only as failure bounds."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
import yaml

from ubmd.pipeline import watchdog

# A stand-in driver: starts the watchdog like the real one, then processes the way parsl does
# (a direct child, a pool detached through `bash -c '... &'` in its own process group, a child
# deaf to SIGTERM, a child with a clean environment) and one child from before the watchdog.
# argv: the watchdog's log and state files.
DUMMY_DRIVER = textwrap.dedent(
    """
    import json, os, subprocess, sys, time
    from ubmd.pipeline import watchdog

    older = subprocess.Popen(["sleep", "300"])
    time.sleep(0.05)  # a clock tick (start times count in 10 ms ticks)
    guard = watchdog.start(sys.argv[1], state=sys.argv[2], grace_s=0.5, interval_s=0.1)
    direct = subprocess.Popen(["sleep", "300"])
    detached = subprocess.run(
        ["/bin/bash", "-c", "sleep 300 >/dev/null 2>&1 & echo $!"],
        capture_output=True, text=True, preexec_fn=os.setpgrp, check=True,
    )
    deaf = subprocess.Popen(
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
         "signal.SIG_IGN); print('ready', flush=True); time.sleep(300)"],
        stdout=subprocess.PIPE, text=True,
    )
    deaf.stdout.readline()
    clean = subprocess.Popen(["/bin/sleep", "300"], env={})
    ours = [direct.pid, int(detached.stdout), deaf.pid, clean.pid]
    print(json.dumps({"ours": ours, "older": older.pid, "watchdog": guard.process.pid}),
          flush=True)
    line = sys.stdin.readline().strip()
    if line == "stop":  # the normal end
        guard.stop(timeout=40)  # a bound for a loaded machine: it returns once the dog exits
        print(json.dumps({"token": os.environ.get(watchdog.TOKEN_VAR),
                          "watchdog_rc": guard.process.poll()}), flush=True)
    elif line == "close":  # what a SIGKILL does first: the pipe closes, the driver still shows
        os.close(guard.write_fd)
        print(json.dumps({"watchdog_rc": guard.process.wait(timeout=40)}), flush=True)
    time.sleep(300)
    """
)


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _procs(pids: list[int]) -> list[psutil.Process]:
    out = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            out.append(psutil.Process(pid))
    return out


def _gone_within(procs: list[psutil.Process], seconds: float) -> list[psutil.Process]:
    """Those of ``procs`` still alive after ``seconds`` (waiting no longer than needed)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(_alive(p) for p in procs):
        time.sleep(0.05)
    return [p for p in procs if _alive(p)]


def _watched(state: Path, pids: set[int], proc: subprocess.Popen, seconds: float) -> dict:
    """Wait until the watchdog's state file lists all of ``pids`` (it has taken a snapshot
    since they started), and return that state. ``seconds`` only bounds a failure."""
    deadline = time.monotonic() + seconds
    while True:
        with contextlib.suppress(FileNotFoundError):
            data = json.loads(state.read_text())  # replaced atomically: never half written
            if pids <= {entry["pid"] for entry in data["watching"]}:
                return data
        assert proc.poll() is None, "the driver ended"
        assert time.monotonic() < deadline, f"the watchdog never listed {pids}: {state}"
        time.sleep(0.05)


def _cleanup(procs: list[psutil.Process]) -> None:
    for p in procs:
        with contextlib.suppress(psutil.Error):
            if _alive(p):
                p.kill()


@pytest.fixture
def other_run():
    """A process of another run (another token): no watchdog but its own may touch it."""
    env = {**os.environ, watchdog.TOKEN_VAR: "another-run"}
    proc = subprocess.Popen(["sleep", "300"], env=env)
    yield psutil.Process(proc.pid)
    proc.kill()
    proc.wait()


FILES = ("watchdog.log", "watchdog.json")


def _start_dummy(tmp_path: Path) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen(
        [sys.executable, "-c", DUMMY_DRIVER, *(str(tmp_path / f) for f in FILES)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    info = json.loads(proc.stdout.readline())
    return proc, info


@pytest.mark.timeout(60)
def test_watchdog_ends_what_a_killed_driver_started(tmp_path, other_run):
    proc, info = _start_dummy(tmp_path)
    ours, older = _procs(info["ours"]), _procs([info["older"]])
    dog = _procs([info["watchdog"]])
    try:
        assert len(ours) == 4 and all(_alive(p) for p in ours)
        # wait for a snapshot holding the clean-environment child: the only way the watchdog
        # finds it (the others carry the token; the direct child may even count as older than
        # the watchdog, having started in the same 10 ms tick)
        clean = ours[3]
        state = _watched(tmp_path / "watchdog.json", {clean.pid}, proc, 40)
        assert state["watchdog"] == dog[0].pid and state["driver"] == proc.pid
        assert older[0].pid not in {entry["pid"] for entry in state["watching"]}
        t0 = time.monotonic()
        proc.kill()
        proc.wait()
        # the watchdog ends them (SIGKILL for the deaf one) and exits: about a second here
        # (printed); the bound only fails a watchdog that does not (they would live 300 s)
        left = _gone_within(ours + dog, 30.0)
        elapsed = time.monotonic() - t0
        assert not left, [p.cmdline() for p in left]
        print(f"the watchdog ended the driver's processes {elapsed:.1f} s after its SIGKILL")
        # another run's process and the driver's older child are none of its business
        assert _alive(other_run) and _alive(older[0])
        log = (tmp_path / "watchdog.log").read_text()
        assert all(f" {p.pid} " in log for p in ours), log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _cleanup(ours + older + dog)


@pytest.mark.timeout(60)
def test_watchdog_exits_at_the_drivers_normal_end(tmp_path, other_run):
    proc, info = _start_dummy(tmp_path)
    ours, older = _procs(info["ours"]), _procs([info["older"]])
    try:
        # the driver lets go: the watchdog ends the detached leftover and exits; the driver's
        # own children are the driver's to reap; the token is gone
        proc.stdin.write("stop\n")
        proc.stdin.flush()
        after = json.loads(proc.stdout.readline())
        assert after == {"token": None, "watchdog_rc": 0}
        direct, detached, deaf, clean = ours
        assert not _gone_within([detached], 2.0)
        assert all(_alive(p) for p in (direct, deaf, clean, older[0], other_run))
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
        _cleanup(ours + older)


@pytest.mark.timeout(60)
def test_a_closed_pipe_without_the_stop_word_is_the_drivers_death(tmp_path):
    """A SIGKILLed driver's pipe closes before the driver shows as dead: the watchdog must not
    take that window for the normal end (which spares the driver's own children)."""
    proc, info = _start_dummy(tmp_path)
    ours = _procs(info["ours"])
    try:
        _watched(tmp_path / "watchdog.json", {ours[3].pid}, proc, 40)  # the clean child
        proc.stdin.write("close\n")
        proc.stdin.flush()
        assert json.loads(proc.stdout.readline()) == {"watchdog_rc": 0}
        assert proc.poll() is None  # the driver still runs, as in that window
        assert not _gone_within(ours, 5.0)  # its direct children too: not spared
        log = (tmp_path / "watchdog.log").read_text()
        assert "died" in log and "finished" not in log, log
    finally:
        proc.kill()
        proc.wait()
        _cleanup(ours)


# ------------------------------------------------------------------ a real campaign driver
def _campaign_processes(driver: psutil.Process, root: Path) -> list[psutil.Process]:
    """The driver's descendants and the worker pools it launched (LocalProvider detaches those
    from the driver's tree: found by the campaign folder on their command line)."""
    found = {}
    with contextlib.suppress(psutil.Error):
        found.update({p.pid: p for p in driver.children(recursive=True)})
    for p in psutil.process_iter(["cmdline"]):
        if str(root) in " ".join(p.info["cmdline"] or []) and p.pid != driver.pid:
            with contextlib.suppress(psutil.Error):
                found.update({q.pid: q for q in [p, *p.children(recursive=True)]})
    return list(found.values())


def _has(procs: list[psutil.Process], text: str) -> bool:
    for p in procs:
        with contextlib.suppress(psutil.Error):
            if text in " ".join(p.cmdline()):
                return True
    return False


@pytest.mark.timeout(450)
def test_killed_campaign_driver_leaves_no_process(shrunk, tmp_path):
    """`ubmd run` with parsl's scripts off PATH (a venv not activated), SIGKILLed once its
    interchange and workers run: its watchdog ends all of them (within a heartbeat period
    unless the machine is loaded: printed, not asserted), then exits."""
    from ubmd.pipeline.parsl_config import make_config
    from ubmd.pipeline.sites import load_site

    heartbeat = make_config(load_site("local"), tmp_path / "hb").executors[0].heartbeat_period
    config = shrunk(name="orphans")
    root = Path(yaml.safe_load(config.read_text())["directory"])
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    assert subprocess.run(["which", "interchange.py"], env=env, capture_output=True).returncode
    with (tmp_path / "driver.err").open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ubmd.cli", "run", str(config), "--site", "local", "--no-live"],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
            start_new_session=True,
        )
    driver = psutil.Process(proc.pid)
    family: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 240
        while not (_has(family, "interchange") and _has(family, "spawn_main")):
            if proc.poll() is not None:
                raise AssertionError((tmp_path / "driver.err").read_text()[-3000:])
            assert time.monotonic() < deadline, "no interchange and workers in time"
            time.sleep(0.1)
            family = _campaign_processes(driver, root)
        dogs = [p for p in family if _has([p], "ubmd.pipeline.watchdog")]
        assert len(dogs) == 1, family
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        # the watchdog ends the rest, then exits; the bound only fails one that never does
        assert not _gone_within(dogs, 120), "the watchdog did not finish"
        log = (root / "parsl" / "watchdog.log").read_text()
        # the watchdog ended them, not parsl's own timeouts (a pool ends itself once the
        # interchange has been silent for the heartbeat threshold)
        assert "interchange" in log and "process_worker_pool" in log, log
        left = _gone_within(family, 30)  # only stragglers the watchdog missed are left
        elapsed = time.monotonic() - t0
        assert not left, [(p.pid, " ".join(p.cmdline())[:120]) for p in left]
        print(
            f"{len(family)} processes ended {elapsed:.1f} s after the driver's SIGKILL "
            f"(heartbeat period {heartbeat} s)"
        )
    finally:
        if proc.poll() is None:
            proc.kill()
        _cleanup(family + _campaign_processes(driver, root) if family else family)
