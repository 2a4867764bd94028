"""The single-writer lock: a reader's momentary shared hold delays a writer, never refuses it;
a live writer's hold refuses a second writer, naming its pid."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ubmd.store import StoreLockedError
from ubmd.store import lock as lock_mod
from ubmd.store.lock import WriterLock, no_live_writer


def _holder(path: Path, *, mode: str, hold_s: float) -> subprocess.Popen:
    """A separate process that takes the lock ``mode`` ('shared' as a checking reader does,
    'exclusive' as a writer does), says "held" and keeps it ``hold_s`` seconds."""
    code = textwrap.dedent(
        f"""
        import time
        from ubmd.store.lock import WriterLock, no_live_writer
        if {mode!r} == "shared":
            with no_live_writer({str(path)!r}) as free:
                assert free
                print("held", flush=True)
                time.sleep({hold_s})
        else:
            lock = WriterLock({str(path)!r})
            print("held", flush=True)
            time.sleep({hold_s})
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_writer_waits_out_a_readers_momentary_shared_hold(tmp_path: Path) -> None:
    store = tmp_path / "s.h5"
    WriterLock(store).release()  # the lock file exists, as after any writer
    reader = _holder(store, mode="shared", hold_s=0.5)
    try:
        t0 = time.monotonic()
        lock = WriterLock(store)  # refused at once before the grace period
        waited = time.monotonic() - t0
        assert lock.held
        lock.release()
        assert waited < lock_mod.READER_GRACE_S
    finally:
        reader.wait(timeout=30)
    assert reader.returncode == 0


def test_a_live_writer_refuses_a_second_one_after_the_grace(tmp_path: Path, monkeypatch) -> None:
    store = tmp_path / "s.h5"
    monkeypatch.setattr(lock_mod, "READER_GRACE_S", 0.3)
    writer = _holder(store, mode="exclusive", hold_s=30)
    try:
        t0 = time.monotonic()
        with pytest.raises(StoreLockedError, match=f"by pid {writer.pid}"):
            WriterLock(store)
        assert time.monotonic() - t0 >= 0.3
        with no_live_writer(store) as free:
            assert not free
    finally:
        writer.kill()
        writer.wait()
    with no_live_writer(store) as free:  # the kernel dropped the dead writer's lock
        assert free
    WriterLock(store).release()
