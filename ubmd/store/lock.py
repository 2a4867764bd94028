"""Single-writer lock: an exclusive ``flock`` on a sidecar ``<store>.lock`` file."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator

from ubmd.store.schema import StoreLockedError

# Readers hold the lock shared for a moment (checking a file a killed writer may have left);
# a writer that finds it taken waits this long before it calls the store another writer's.
READER_GRACE_S = 2.0


def lock_path(store_path: str | os.PathLike[str]) -> str:
    """The sidecar lock file of a store."""
    return os.fspath(store_path) + ".lock"


class WriterLock:
    """Held for a writer's lifetime; the kernel drops it when the process dies.

    Because the lock dies with its process, holding it proves that no live writer has the
    store open, which is what makes repairing a killed writer's file safe.
    """

    def __init__(self, store_path: str | os.PathLike[str]) -> None:
        self.path = lock_path(store_path)
        fd, self._created = _open_or_create(self.path)
        if not _take_exclusive(fd, grace_s=READER_GRACE_S):
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreLockedError(
                f"store {os.fspath(store_path)!r} is already open for writing by pid {holder} "
                f"(lock file {self.path}); a store has one writer at a time; readers can use "
                "mode='r'"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd: int | None = fd

    def release(self) -> None:
        """Drop the lock (idempotent). The lock file stays; its content is only a hint."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def discard(self) -> None:
        """Release after a failed open, removing the lock file if this lock created it, so
        that refusing a bad file leaves no debris behind."""
        if self._fd is not None and self._created:
            with contextlib.suppress(OSError):
                os.unlink(self.path)  # while still holding it: nobody can take it meanwhile
        self.release()

    @property
    def held(self) -> bool:
        return self._fd is not None


def _take_exclusive(fd: int, *, grace_s: float) -> bool:
    """Take the exclusive lock, retrying for ``grace_s`` while someone holds it."""
    deadline = time.monotonic() + grace_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                os.close(fd)
                raise
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def _open_or_create(path: str) -> tuple[int, bool]:
    """Open the lock file, creating it if missing; return ``(fd, created)``."""
    try:
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
        except FileExistsError:
            return os.open(path, os.O_RDWR), False
    except OSError as exc:
        raise PermissionError(
            f"cannot create the writer lock {path!r} ({exc.strerror}); writing a store needs "
            "a writable directory (open it with mode='r' to only read)"
        ) from None


@contextlib.contextmanager
def no_live_writer(store_path: str | os.PathLike[str]) -> Iterator[bool]:
    """Yield True (holding a shared lock that keeps writers out) if no writer is alive."""
    try:
        fd = os.open(lock_path(store_path), os.O_RDONLY)
    except FileNotFoundError:
        yield True  # no writer ever ran here (or the lock file was removed)
        return
    except OSError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
