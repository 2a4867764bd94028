"""Creating and opening the HDF5 file behind a store (format checks, crash repair)."""

from __future__ import annotations

import contextlib
import json
import os
import time
from datetime import UTC, datetime
from typing import Any

import h5py
import numpy as np

from ubmd.store import superblock
from ubmd.store.lock import no_live_writer
from ubmd.store.schema import (
    ATOM_CHUNK,
    ATOM_DATASETS,
    FORMAT_MARKER,
    SCHEMA_VERSION,
    STRING_CHUNK,
    STRING_DTYPE,
    STRUCT_CHUNK,
    STRUCT_DATASETS,
    StoreError,
    StoreFormatError,
)

CACHE = {"rdcc_nbytes": 8 * 2**20, "rdcc_nslots": 10007}


def open_writer_file(path: str) -> h5py.File:
    """Open for SWMR writing; the caller must hold the writer lock (repair relies on it)."""
    check_not_truncated(path, writer_locked=True)
    check_metadata(path)
    try:
        h5 = h5py.File(path, "r+", libver="latest", **CACHE)
    except OSError as exc:
        if "already open for read-only" in str(exc):
            raise StoreError(
                f"this process has {path!r} open read-only; close those readers before "
                "opening the writer (the writer can read too)"
            ) from None
        if "already open" not in str(exc) and "consistency" not in str(exc):
            raise StoreFormatError(f"cannot open {path!r} as HDF5: {exc}") from None
        # We hold the writer lock, so the writer that left these flags is dead.
        superblock.clear_consistency_flags(path)
        h5 = h5py.File(path, "r+", libver="latest", **CACHE)
    try:
        check_attrs(h5, path)
        # SWMR first: from here on HDF5 orders its metadata writes so that the file
        # stays readable whenever this process is killed, also during the cleanup.
        h5.swmr_mode = True
        counts = h5["committed"][:]
        # Drop rows a killed writer wrote beyond the commit point.
        for name in ATOM_DATASETS:
            _truncate(h5[name], counts[1])
        for name in STRUCT_DATASETS:
            _truncate(h5[name], counts[0])
        _truncate(h5["strings"], counts[2])
        h5.flush()
        return h5
    except BaseException:
        h5.close()
        raise


def config_json(config: dict[str, Any] | None) -> str:
    try:
        return json.dumps(config or {}, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"campaign_config must be JSON-serialisable: {exc}") from None


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"hdf5": h5py.version.hdf5_version}
    for pkg in ("ubmd", "numpy", "h5py", "ase", "torch"):
        # metadata only: importing torch here would cost seconds
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def build(path: str, config_text: str) -> None:
    """Write an empty store next to ``path`` and rename it into place (atomic creation)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with h5py.File(tmp, "w", libver="latest") as h5:
            h5.attrs["ubmd_store"] = FORMAT_MARKER
            h5.attrs["schema_version"] = SCHEMA_VERSION
            h5.attrs["campaign_config"] = config_text
            h5.attrs["package_versions"] = json.dumps(package_versions(), sort_keys=True)
            h5.attrs["created_at"] = datetime.now(UTC).isoformat(timespec="seconds")
            for specs, chunk in ((ATOM_DATASETS, ATOM_CHUNK), (STRUCT_DATASETS, STRUCT_CHUNK)):
                for name, (dtype, trail) in specs.items():
                    h5.create_dataset(
                        name,
                        shape=(0, *trail),
                        maxshape=(None, *trail),
                        chunks=(chunk, *trail),
                        dtype=dtype,
                    )
            h5.create_dataset(
                "strings",
                data=np.array([b""], STRING_DTYPE),
                maxshape=(None,),
                chunks=(STRING_CHUNK,),
            )
            h5.create_dataset("committed", data=np.array([0, 0, 1], dtype=np.int64))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def check_signature(path: str) -> None:
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head != superblock.HDF5_SIGNATURE:
        raise StoreFormatError(f"{path!r} is not an HDF5 file, so not a ubmd store")


def check_not_truncated(path: str, *, writer_locked: bool = False) -> None:
    """Refuse a file shorter than its superblock says it is (a copy or download cut short).

    A SWMR reader skips HDF5's own check and retries each unreadable piece of metadata for
    a long time, so a truncated store would hang a reader instead of failing. A live writer
    may have reserved space it has not written yet; only without one is a short file damaged.
    """
    try:
        expected = superblock.end_of_file_address(path)
    except superblock.TruncatedSuperblockError as exc:
        raise StoreFormatError(f"store {path!r} is truncated: {exc}") from None
    except ValueError:
        return  # not a superblock ubmd writes: opening it gives the reason
    size = os.path.getsize(path)
    if size >= expected:
        return
    if not writer_locked:
        with no_live_writer(path) as free:
            if not free:
                return  # a live writer may have reserved space it has not written yet
    raise StoreFormatError(
        f"store {path!r} is truncated: {size} bytes on disk but its HDF5 superblock says "
        f"{expected}; the file was cut short (an interrupted copy?); restore it from a copy"
    )


def check_metadata(path: str) -> None:
    """Read every dataset's metadata without SWMR, where damage fails at once.

    A SWMR reader retries metadata that fails its checksum (it may be half-written by the
    writer), so a damaged file would hang it; call this only while no writer is alive.
    """
    try:
        with h5py.File(path, "r", libver="latest") as h5:
            check_attrs(h5, path)
            for name in (*ATOM_DATASETS, *STRUCT_DATASETS, "strings", "committed"):
                ds = h5[name]
                if ds.shape[0]:
                    ds[-1]  # the chunk index down to the last row
    except StoreError:
        raise
    except OSError as exc:
        if "already open" in str(exc):
            return  # a killed writer's flags: the reader's open repairs them
        raise StoreFormatError(f"store {path!r} is damaged: {exc}") from None
    except (RuntimeError, KeyError, ValueError) as exc:
        raise StoreFormatError(f"store {path!r} is damaged: {exc}") from None


def open_reader_file(path: str) -> h5py.File:
    """Open for SWMR reading.

    A writer holds the file without SWMR for a moment while opening; if it was killed in
    that moment, the file stays marked "open for write" and no SWMR reader may open it.
    When the writer lock shows that no writer is alive, the reader clears that mark.
    """
    check_not_truncated(path)
    with no_live_writer(path) as free:
        if free:
            check_metadata(path)
    for attempt in range(20):
        try:
            h5 = h5py.File(path, "r", libver="latest", swmr=True, **CACHE)
            break
        except OSError as exc:
            if "already open" not in str(exc) or attempt == 19:
                raise StoreFormatError(f"cannot open {path!r} for reading: {exc}") from None
            if attempt >= 2:
                with no_live_writer(path) as free:
                    if free:
                        superblock.clear_consistency_flags(path)
                        continue
            time.sleep(0.05)
    try:
        check_attrs(h5, path)
    except BaseException:
        h5.close()
        raise
    return h5


def check_attrs(h5: h5py.File, path: str) -> None:
    marker = h5.attrs.get("ubmd_store")
    if isinstance(marker, bytes):
        marker = marker.decode()
    if marker != FORMAT_MARKER or "schema_version" not in h5.attrs:
        raise StoreFormatError(f"{path!r} is an HDF5 file but not a ubmd structure store")
    version = int(h5.attrs["schema_version"])
    if version > SCHEMA_VERSION:
        from ubmd import __version__

        raise StoreFormatError(
            f"store {path!r} has schema version {version}, newer than schema version "
            f"{SCHEMA_VERSION} that this ubmd ({__version__}) knows; upgrade ubmd to open it"
        )
    if version < 1:
        raise StoreFormatError(f"store {path!r} has invalid schema version {version}")


def _truncate(ds: h5py.Dataset, n: int) -> None:
    if ds.shape[0] < n:
        raise StoreFormatError(
            f"dataset {ds.name!r} has {ds.shape[0]} rows but {n} are marked committed; "
            "the store is damaged"
        )
    if ds.shape[0] != n:
        ds.resize(int(n), axis=0)
