"""The superblock repair used after a killed writer: checksum and flag clearing."""

from __future__ import annotations

import struct
from pathlib import Path

import h5py
import numpy as np
import pytest

from ubmd.store.superblock import (
    clear_consistency_flags,
    consistency_flags,
    lookup3,
    read_superblock,
)


def test_lookup3_reference_vectors() -> None:
    # Values printed by the driver in Bob Jenkins' lookup3.c (hashlittle).
    assert lookup3(b"") == 0xDEADBEEF
    assert lookup3(b"Four score and seven years ago") == 0x17770551
    assert lookup3(b"Four score and seven years ago", 1) == 0xCD628161


@pytest.mark.parametrize("libver", ["latest", "v110"])
def test_lookup3_matches_checksum_hdf5_wrote(tmp_path: Path, libver: str) -> None:
    path = tmp_path / "fresh.h5"
    with h5py.File(path, "w", libver=libver) as f:
        f["x"] = np.arange(3)
    _, version, block = read_superblock(path)
    assert version in (2, 3)
    assert lookup3(block[:-4]) == struct.unpack("<I", block[-4:])[0]


def test_clear_flags_of_open_swmr_file_makes_it_openable(tmp_path: Path) -> None:
    path = tmp_path / "swmr.h5"
    f = h5py.File(path, "w", libver="latest")
    d = f.create_dataset("x", (0,), maxshape=(None,), chunks=(8,), dtype="f8")
    f.swmr_mode = True
    d.resize((5,))
    d[:] = np.arange(5.0)
    f.flush()
    # Copy the file while the writer holds it open: the copy looks like a killed writer's.
    crashed = tmp_path / "crashed.h5"
    crashed.write_bytes(path.read_bytes())
    f.close()
    assert consistency_flags(crashed) != 0
    with pytest.raises(OSError, match="already open"):
        h5py.File(crashed, "r+")
    assert clear_consistency_flags(crashed) is True
    assert consistency_flags(crashed) == 0
    with h5py.File(crashed, "r+") as g:
        np.testing.assert_array_equal(g["x"][:], np.arange(5.0))
    assert clear_consistency_flags(crashed) is False  # nothing to do on a clean file


def test_unknown_superblock_version_and_non_hdf5_are_refused(tmp_path: Path) -> None:
    old = tmp_path / "old.h5"
    with h5py.File(old, "w", libver="earliest") as f:
        f["x"] = 1
    with pytest.raises(ValueError, match="superblock version 0"):
        clear_consistency_flags(old)
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all" * 10)
    with pytest.raises(ValueError, match="no HDF5 superblock"):
        read_superblock(junk)
