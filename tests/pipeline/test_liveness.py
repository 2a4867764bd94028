"""A driver whose parsl interchange dies ends with a clear error instead of waiting forever
(parsl's submit side does not notice: parsl issue 3374), and the store keeps its labels."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from ubmd.pipeline.liveness import InterchangeLost, InterchangeWatch


class _Executor:
    """What the watch uses of a parsl HighThroughputExecutor."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.interchange_proc = proc
        self.failed_with: BaseException | None = None

    @property
    def bad_state_is_set(self) -> bool:
        return self.failed_with is not None

    def set_bad_state_and_fail_all(self, exc: BaseException) -> None:
        self.failed_with = exc


def test_a_live_interchange_passes_and_a_dead_one_is_named():
    alive = _Executor(subprocess.Popen(["sleep", "60"]))
    killed = _Executor(subprocess.Popen(["sleep", "60"]))
    exited = _Executor(subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"]))
    try:
        InterchangeWatch({"labels": alive}).check()
        killed.interchange_proc.send_signal(signal.SIGKILL)
        killed.interchange_proc.wait()
        exited.interchange_proc.wait()
        with pytest.raises(InterchangeLost, match=r"'train' \(pid \d+\) was killed by SIGKILL"):
            InterchangeWatch({"labels": alive, "train": killed}).check()
        # parsl's own "this executor is broken": its tasks fail, its cleanup skips it
        assert isinstance(killed.failed_with, InterchangeLost)
        assert alive.failed_with is None
        with pytest.raises(InterchangeLost, match="exited with status 3.*run the same command"):
            InterchangeWatch({"explore": exited}).check()
        # an OSError: the CLI shows it as one line, without a traceback
        assert issubclass(InterchangeLost, OSError)
    finally:
        for ex in (alive, killed):
            if ex.interchange_proc.poll() is None:
                ex.interchange_proc.kill()
                ex.interchange_proc.wait()


def _interchange_of(config: Path) -> psutil.Process | None:
    """The running interchange of the campaign ``config``: a child of the
    driver (found by the driver's command line)."""
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "high_throughput.interchange" not in cmd and "HTEX interchange" not in cmd:
            continue
        with contextlib.suppress(psutil.Error):
            parent = p.parent()
            if parent is not None and str(config) in " ".join(parent.cmdline()):
                return p
    return None


@pytest.mark.timeout(400)
def test_driver_ends_with_a_clear_error_when_its_interchange_is_killed(shrunk, tmp_path):
    from ubmd.store import StructureStore

    config = shrunk(name="lost", iterations=3)
    root = Path(yaml.safe_load(config.read_text())["directory"])
    err_path = tmp_path / "driver.err"
    with err_path.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ubmd.cli", "run", str(config), "--site", "local", "--no-live"],
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    try:
        # wait for the first labels to be stored: then the driver waits on a training task
        deadline = time.monotonic() + 240
        store = root / "store.h5"
        interchange = None
        while interchange is None or not store.exists() or _labels(store) < 10:
            assert proc.poll() is None, err_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "no labels stored in time"
            time.sleep(0.2)
            interchange = interchange or _interchange_of(config)
        before = _labels(store)
        interchange.send_signal(signal.SIGKILL)
        t0 = time.monotonic()
        rc = proc.wait(timeout=120)  # without the check the driver never returns
        waited = time.monotonic() - t0
        err = err_path.read_text()
        assert rc == 2, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        assert "interchange" in err and "killed by SIGKILL" in err and "resume" in err, err
        with StructureStore.open(store, mode="r") as st:
            assert len(st) >= before  # everything stored before the kill is still there
        # the driver's watchdog ends the worker pools parsl could no longer scale in
        deadline = time.monotonic() + 60
        while left := _left_in(root):
            assert time.monotonic() < deadline, left
            time.sleep(0.2)
        print(f"driver ended {waited:.1f} s after its interchange's SIGKILL")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _left_in(root: Path) -> list[str]:
    """Command lines of the processes still running in the campaign folder ``root``."""
    left = []
    for p in psutil.process_iter(["cmdline", "status"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if str(root) in cmd and p.info["status"] != psutil.STATUS_ZOMBIE:
            left.append(cmd[:160])
    return left


def _labels(store: Path) -> int:
    from ubmd.store import StructureStore

    try:
        with StructureStore.open(store, mode="r") as st:
            return len(st)
    except (OSError, ValueError):  # still being created, or locked by the writer
        return 0
