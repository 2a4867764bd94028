"""Candidate HDF5 files: round trip, ASE conversion, a killed writer leaves a readable file."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ubmd import keys
from ubmd.md.writer import CandidateWriter, candidates_to_atoms, read_candidates


def _frames(n_atoms, step0=0, k=None):
    rng = np.random.default_rng(step0)
    A = int(sum(n_atoms))
    out = {
        keys.N_ATOMS: np.array(n_atoms),
        keys.NUMBERS: rng.integers(1, 9, A),
        keys.POSITIONS: rng.normal(size=(A, 3)),
        keys.CELL: np.stack([np.eye(3) * 10] * len(n_atoms)),
        keys.PBC: np.ones((len(n_atoms), 3), bool),
        keys.ENERGY: rng.normal(size=len(n_atoms)),
        keys.MD_STEP: np.arange(len(n_atoms)) + step0,
        keys.STOP_REASON: np.array(["", "nan"][: len(n_atoms)], dtype=object),
        keys.SAMPLER: np.array(["biased_md"] * len(n_atoms), dtype=object),
        keys.ATOMIC_UNCERTAINTY: rng.random(A),
    }
    if k is not None:
        out[keys.FEATURES] = rng.normal(size=(len(n_atoms), k))
    return out


def test_round_trip_and_atoms(tmp_path):
    path = tmp_path / "c.h5"
    a, b = _frames([3, 5], 0, k=4), _frames([2], 10)  # second batch without features
    with CandidateWriter(path) as w:
        w.append(a)
        w.append(b)
    with CandidateWriter(path) as w:  # reopen and append
        w.append(_frames([4], 20, k=4))
        assert w.n_frames == 4
    data = read_candidates(path)
    assert list(data[keys.N_ATOMS]) == [3, 5, 2, 4]
    np.testing.assert_array_equal(data[keys.POSITIONS][:8], a[keys.POSITIONS])
    np.testing.assert_array_equal(data[keys.POSITIONS][8:10], b[keys.POSITIONS])
    assert list(data[keys.STOP_REASON]) == ["", "nan", "", ""]
    assert np.isnan(data[keys.FEATURES][2]).all() and np.isfinite(data[keys.FEATURES][3]).all()
    assert np.isnan(data[keys.UNCERTAINTY]).all()  # never given: NaN
    atoms = candidates_to_atoms(data, [1, 2])
    assert len(atoms[0]) == 5 and atoms[1].info[keys.MD_STEP] == 10
    np.testing.assert_array_equal(atoms[0].positions, a[keys.POSITIONS][3:])
    np.testing.assert_array_equal(
        atoms[0].arrays[keys.ATOMIC_UNCERTAINTY], a[keys.ATOMIC_UNCERTAINTY][3:]
    )
    assert atoms[0].info[keys.STOP_REASON] == "nan"
    with pytest.raises(ValueError, match="rows"), CandidateWriter(path) as w:
        bad = _frames([3])
        bad[keys.ENERGY] = np.zeros(2)
        w.append(bad)


def test_killed_writer_leaves_readable_file(tmp_path):
    path = tmp_path / "killed.h5"
    script = textwrap.dedent(f"""
        import os, sys
        import numpy as np
        sys.path.insert(0, {str(tmp_path)!r})
        from ubmd import keys
        from ubmd.md.writer import CandidateWriter
        w = CandidateWriter({str(path)!r})
        for k in range(5):
            w.append({{keys.N_ATOMS: np.array([2]), keys.POSITIONS: np.full((2, 3), float(k)),
                      keys.NUMBERS: np.array([1, 1]), keys.MD_STEP: np.array([k])}})
        os._exit(0)  # killed: no close, no flush at exit
    """)
    subprocess.run([sys.executable, "-c", script], check=True)
    data = read_candidates(path)
    assert list(data[keys.MD_STEP]) == [0, 1, 2, 3, 4]
    assert data[keys.POSITIONS].shape == (10, 3)


def test_not_a_candidate_file(tmp_path):
    import h5py

    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f.attrs["kind"] = "something"
    with pytest.raises(ValueError, match="not a ubmd candidate file"):
        read_candidates(path)
