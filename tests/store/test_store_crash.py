"""Crash safety: SIGKILL a writing process at random moments; the store must always reopen
(reader and writer), validate, and hold exactly the batches committed before the kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import store_helpers
from store_helpers import batch_arrays

from ubmd import keys
from ubmd.store import StoreLockedError, StructureStore
from ubmd.store.schema import ATOM_DATASETS, STRUCT_DATASETS
from ubmd.store.superblock import consistency_flags
from ubmd.store.validate import validate

WRITER = [sys.executable, store_helpers.__file__]
N_KILLS = 22


def _spawn(path: Path, first: int, self_kill: str = "") -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", UBMD_TEST_SELF_KILL=self_kill)
    return subprocess.Popen(
        [*WRITER, str(path), str(first)], stdout=subprocess.PIPE, text=True, env=env
    )


def _check_content(path: Path, reported: set[int], in_flight: int | None) -> list[int]:
    """Store == reported batches (+ the in-flight one, complete or absent); returns batch ids."""
    with StructureStore.open(path, mode="r") as st:
        d = st.read_arrays()
    it = d[keys.ITERATION]
    present = sorted(set(it.tolist()))
    assert reported <= set(present), f"committed batches lost: {reported - set(present)}"
    extra = set(present) - reported
    assert extra <= ({in_flight} if in_flight is not None else set()), extra
    assert np.all(np.diff(it) >= 0), "batches out of order"
    atom_it = np.repeat(it, d[keys.N_ATOMS])
    for b in present:
        ref = batch_arrays(b)
        rows, atoms = it == b, atom_it == b
        np.testing.assert_array_equal(d[keys.N_ATOMS][rows], ref[keys.N_ATOMS])
        np.testing.assert_array_equal(d[keys.ENERGY][rows], ref[keys.ENERGY])
        np.testing.assert_array_equal(d[keys.LABELER][rows], ref[keys.LABELER])
        np.testing.assert_array_equal(d[keys.NUMBERS][atoms], ref[keys.NUMBERS])
        np.testing.assert_array_equal(d[keys.POSITIONS][atoms], ref[keys.POSITIONS])
        np.testing.assert_array_equal(d[keys.FORCES][atoms], ref[keys.FORCES])
    return present


def test_sigkill_at_random_moments_keeps_exactly_committed(tmp_path: Path) -> None:
    path = tmp_path / "crash.h5"
    rng = np.random.default_rng(1234)
    reported: set[int] = set()
    next_batch, flagged, in_flight_kept, torn = 0, 0, 0, 0
    for kill in range(N_KILLS):
        proc = _spawn(path, next_batch)
        waited = ""
        if kill % 5 == 4:
            # Sometimes kill without waiting: during start-up, lock, repair or first append.
            time.sleep(rng.uniform(0.0, 0.6))
        else:
            # Else once the writer holds the file and has committed 0-3 more batches (read
            # from its reports, however slow the machine), at a random moment of what follows.
            assert proc.stdout.readline().strip() == "ready"
            commits = int(rng.integers(0, 4))
            waited = "".join(proc.stdout.readline() for _ in range(commits))
            assert waited.count("\n") == commits, f"the writer died: {waited!r}"
            time.sleep(rng.uniform(0.0, 0.25))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        out = waited + out
        assert proc.returncode == -signal.SIGKILL
        lines = [ln.split() for ln in out.splitlines() if ln and ln != "ready"]
        # The kill may cut the last report short: that batch counts as in flight.
        if lines and len(lines[-1]) != 2:
            lines.pop()
        assert all(len(ln) == 2 for ln in lines), out
        done = [int(b) for b, _ in lines]
        reported.update(done)
        in_flight = (done[-1] + 1) if done else next_batch
        if not path.exists():  # killed before the store was created
            continue
        flagged += consistency_flags(path) != 0
        # the store's reader first: a writer killed between opening the file and switching
        # SWMR on leaves a mark that a plain h5py SWMR reader refuses; ours clears it
        present = _check_content(path, reported, in_flight)  # reader on the crashed file
        with h5py.File(path, "r", swmr=True, libver="latest") as f:
            torn += f["positions"].shape[0] > f["committed"][1]  # killed mid-append (kept)
        in_flight_kept += in_flight in present and in_flight not in reported
        assert validate(path) == []
        with StructureStore.open(path, mode="a") as st:  # writer: repairs flags, truncates
            assert len(st) == sum(len(batch_arrays(b)[keys.N_ATOMS]) for b in present)
        assert consistency_flags(path) == 0
        assert validate(path) == []
        reported.update(present)
        next_batch = max(present, default=next_batch - 1) + 1
        next_batch = max(next_batch, in_flight + 1)
    # both hold whatever the timing: 0-3 commits (24 with this seed) are waited for, and every
    # kill after "ready" hits a writer holding the file open
    assert len(reported) > N_KILLS, "the writer hardly ever committed anything"
    assert flagged > N_KILLS // 2, "most kills should hit a writer holding the file open"
    print(
        f"{len(reported)} batches committed; of {N_KILLS} kills {flagged} hit an open writer, "
        f"{torn} left uncommitted rows, {in_flight_kept} left the in-flight batch complete"
    )


N_PUTS = len(ATOM_DATASETS) + len(STRUCT_DATASETS)
# kill point -> is the second batch in the store afterwards? (None: either is correct)
KILL_POINTS = {
    "put:1": False,  # before the first dataset write
    "put:3": False,
    "put:12": False,
    f"put:{N_PUTS}": False,  # the last data write (no new strings in batch 1), before any flush
    "flush:1": False,
    "flushed:1": False,  # data on disk, commit counts not yet written
    "flush:2": None,  # counts written but not flushed
    "flushed:2": True,  # append complete
}


@pytest.mark.parametrize("where", list(KILL_POINTS))
def test_kill_at_chosen_points_inside_append(tmp_path: Path, where: str) -> None:
    """Deterministic kills between the data writes, around the flushes and the commit."""
    path = tmp_path / "s.h5"
    proc = _spawn(path, 0, self_kill=where)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, out
    assert "survived" not in out
    with h5py.File(path, "r", swmr=True, libver="latest") as f:
        torn = f["positions"].shape[0] > f["committed"][1]  # uncommitted rows on disk
    present = _check_content(path, {0}, in_flight=1)
    if KILL_POINTS[where] is not None:
        assert present == ([0, 1] if KILL_POINTS[where] else [0])
    if where == "flushed:1":
        assert torn, "the kill should have left uncommitted rows behind"
    assert validate(path) == []
    with StructureStore.open(path, mode="a") as st:
        st.append_arrays(batch_arrays(2))
    assert _check_content(path, {*present, 2}, None) == [*present, 2]
    assert validate(path) == []


def test_reader_sees_consistent_prefix_while_writer_appends(tmp_path: Path) -> None:
    path = tmp_path / "live.h5"
    StructureStore.create(path).close()
    proc = _spawn(path, 0)
    try:
        assert proc.stdout.readline().strip() == "ready"
        # Single writer: a second one is refused, naming the writer's pid.
        try:
            StructureStore.open(path, mode="a")
            raise AssertionError("second writer was allowed")
        except StoreLockedError as exc:
            assert str(proc.pid) in str(exc)
        seen = []
        with StructureStore.open(path, mode="r") as st:
            # read while the writer appends, until a hundred sizes have been seen (a hundred
            # appends landed between reads; ~1 s here), however slow the machine
            deadline = time.monotonic() + 120
            while len(set(seen)) < 100:
                assert time.monotonic() < deadline, f"reader did not see progress: {seen}"
                st.refresh()
                seen.append(len(st))
                d = st.read_arrays()
                batches = sorted(set(d[keys.ITERATION].tolist()))
                assert batches == list(range(len(batches))), "not a prefix of the batches"
                atom_it = np.repeat(d[keys.ITERATION], d[keys.N_ATOMS])
                last = batches[-1] if batches else None
                if last is not None:  # the newest batch is complete and intact
                    ref = batch_arrays(last)
                    np.testing.assert_array_equal(
                        d[keys.POSITIONS][atom_it == last], ref[keys.POSITIONS]
                    )
                    assert np.count_nonzero(d[keys.ITERATION] == last) == len(ref[keys.N_ATOMS])
        assert seen == sorted(seen) and seen[-1] > seen[0], "reader did not see progress"
    finally:
        proc.kill()
        proc.communicate()
    assert validate(path) == []


def test_reader_repairs_file_of_writer_killed_before_swmr(tmp_path: Path) -> None:
    """A writer killed between opening the file and switching SWMR on leaves a mark no SWMR
    reader may pass; with no live writer (free lock) the reader clears it."""
    path = tmp_path / "s.h5"
    with StructureStore.create(path) as st:
        st.append_arrays(batch_arrays(0))
    code = (
        "import h5py, os, signal, sys; f = h5py.File(sys.argv[1], 'r+', libver='latest'); "
        "f.flush(); os.kill(os.getpid(), signal.SIGKILL)"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(path)], check=False)
    assert proc.returncode == -signal.SIGKILL
    assert consistency_flags(path) != 0
    with pytest.raises(OSError, match="already open"):
        h5py.File(path, "r", libver="latest", swmr=True)
    assert _check_content(path, {0}, None) == [0]
    assert consistency_flags(path) == 0
    assert validate(path) == []
