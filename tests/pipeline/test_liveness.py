"""A driver whose executor is gone ends with a clear error and keeps its store as it was:
its parsl interchange died (parsl's submit side would wait forever: parsl issue 3374), or
parsl gave up on its blocks (workers that never start), which is no label's failure."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import psutil
import pytest
import yaml

from ubmd.pipeline.liveness import BlocksFailed, InterchangeLost, InterchangeWatch

ROOT = Path(__file__).resolve().parents[2]


class _Executor:
    """What the watch uses of a parsl HighThroughputExecutor."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.interchange_proc = proc
        self.failed_with: BaseException | None = None
        self.provider = types.SimpleNamespace(script_dir="/runinfo/000/submit_scripts")

    @property
    def bad_state_is_set(self) -> bool:
        return self.failed_with is not None

    @property
    def executor_exception(self) -> BaseException | None:
        return self.failed_with

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
        assert issubclass(InterchangeLost, OSError) and issubclass(BlocksFailed, OSError)
        # parsl's own bad state (its blocks failed): named, with where their output is
        alive.set_bad_state_and_fail_all(RuntimeError("Error 1:\n\tJob is MISSING\n\tEXIT CODE: 3"))
        with pytest.raises(
            BlocksFailed,
            match=r"'labels'.*Error 1: Job is MISSING EXIT CODE: 3"
            r".*/runinfo/000/submit_scripts",
        ):
            InterchangeWatch({"labels": alive}).check()
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


@pytest.mark.timeout(400)
def test_workers_that_never_start_leave_no_failed_labels_and_resume_works(shrunk, tmp_path):
    """A site whose worker_init fails: parsl gives up on the executor, the run ends with a
    clear error, the store holds no failed labels (the structures were never tried), and
    the same campaign on a working site then labels them."""
    from ubmd.store import StructureStore

    site = yaml.safe_load((ROOT / "site_configs" / "local.yaml").read_text())
    site["executors"]["local"]["worker_init"] = "exit 3"
    bad_site = tmp_path / "bad_site.yaml"
    bad_site.write_text(yaml.safe_dump(site))
    config = shrunk(name="noworkers", iterations=1)
    root = Path(yaml.safe_load(config.read_text())["directory"])
    run = [sys.executable, "-m", "ubmd.cli", "run", str(config), "--no-live", "--site"]
    res = subprocess.run([*run, str(bad_site)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    assert "gave up on executor 'local'" in res.stderr and "submit_scripts" in res.stderr
    assert "EXIT CODE: 3" in res.stderr, res.stderr
    if (root / "store.h5").exists():
        with StructureStore.open(root / "store.h5") as st:
            assert len(st) == 0  # nothing recorded as a failed label
    res = subprocess.run([*run, "local"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    with StructureStore.open(root / "store.h5") as st:
        ok = len(st.select(status="ok"))
    assert ok >= 10, ok  # the 10 initial labels at least, none of them failed


def _busy_workers_of(root: Path) -> list[psutil.Process]:
    """The worker processes of the campaign whose folder is ``root`` (children of its worker
    pools, which carry the folder on their command line) that are running a task: those
    using CPU. The idle ones are left alone: one killed while it waits for a task holds the
    pool's task queue lock for good (the out-of-memory killer picks the busy one)."""
    workers = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "process_worker_pool" in cmd and str(root) in cmd:
            with contextlib.suppress(psutil.Error):
                workers += [w for w in p.children() if "spawn_main" in " ".join(w.cmdline())]
    before = {}
    for w in workers:
        with contextlib.suppress(psutil.Error):
            before[w.pid] = sum(w.cpu_times()[:2])
    time.sleep(0.3)
    busy = []
    for w in workers:
        with contextlib.suppress(psutil.Error):
            if w.pid in before and sum(w.cpu_times()[:2]) - before[w.pid] > 0.05:
                busy.append(w)
    return busy


@pytest.mark.timeout(400)
def test_a_task_whose_worker_is_killed_on_every_try_ends_the_run_clearly(shrunk, tmp_path):
    """Workers SIGKILLed while the first model trains (the out-of-memory killer), with no
    retries left: the run ends with a one-line error naming the task, not parsl's traceback."""
    site = yaml.safe_load((ROOT / "site_configs" / "local.yaml").read_text())
    site["retries"] = 0
    site_path = tmp_path / "no_retries.yaml"
    site_path.write_text(yaml.safe_dump(site))
    config = shrunk(name="oom")
    root = Path(yaml.safe_load(config.read_text())["directory"])
    err_path = tmp_path / "driver.err"
    command = [sys.executable, "-m", "ubmd.cli", "run", str(config), "--no-live", "--site"]
    with err_path.open("w") as err:
        proc = subprocess.Popen(
            [*command, str(site_path)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 240
        while _labels(root / "store.h5") < 10:  # then only training runs
            assert proc.poll() is None, err_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "no labels stored in time"
            time.sleep(0.2)
        killed = 0
        deadline = time.monotonic() + 120
        while proc.poll() is None:
            assert time.monotonic() < deadline, "the driver did not end"
            for w in _busy_workers_of(root):
                with contextlib.suppress(psutil.Error):
                    w.kill()
                    killed += 1
        err = err_path.read_text()
        assert killed, "no worker was found to kill"
        assert proc.returncode == 2, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        assert "task failed on every try" in err and "loss of" in err, err
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
