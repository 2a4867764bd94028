"""Keep freed tensor memory in the process (glibc malloc), for steady per-step allocations.

An MD step on CPU allocates and frees the same large buffers (edge features, gradients)
every step. By default glibc serves blocks above an adaptive threshold with ``mmap`` and
returns them to the kernel on free, so every step pays fresh page faults: measured here,
a compiled 32-replica step took 10-30 ms instead of a steady 10 ms. Raising the mmap and
trim thresholds lets malloc recycle those blocks. The cost is that up to the trim
threshold of freed memory stays with the process.

A process-wide setting, so no library object makes it: applications that run long MD on CPU
opt in (``ubmd explore``, the campaign's explorer tasks, the benchmarks).
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's largest allowed value on 64-bit
TRIM_THRESHOLD_BYTES = 128 << 20

_done: bool | None = None


def retain_freed_memory() -> bool:
    """Set glibc's malloc thresholds once per process; False where that is not possible
    (not Linux/glibc). Safe to call repeatedly."""
    global _done
    if _done is None:
        _done = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL("libc.so.6")
                mallopt = libc.mallopt
            except (OSError, AttributeError):  # musl and others: leave the allocator alone
                return False
            _done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
                mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
            )
    return _done
