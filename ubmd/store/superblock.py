"""Clearing the file-consistency flags HDF5 leaves set when a SWMR writer is killed.

A writer that opens a file for (SWMR) writing sets flags in the superblock and clears them
on a clean close. After SIGKILL they stay set and HDF5 refuses to open the file for writing
("file is already open for write ... h5clear"). The data below the store's commit counter
is intact, so once the single-writer lock proves nobody is writing, the store clears the
flags itself, exactly as the ``h5clear -s`` tool does.

Superblock versions 2 and 3 (the ones ``libver="latest"`` writes) are:
signature (8 bytes), version, size of offsets, size of lengths, consistency flags (byte 11),
four addresses, then a Jenkins lookup3 checksum (initval 0) of all preceding bytes.
Other versions are refused rather than guessed at.
"""

from __future__ import annotations

import os
import struct

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_MASK = 0xFFFFFFFF
_KNOWN_VERSIONS = (2, 3)


class TruncatedSuperblockError(ValueError):
    """The file ends inside its own superblock."""


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _MASK


def lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 ``hashlittle`` of ``data`` (the HDF5 metadata checksum)."""
    n = len(data)
    a = b = c = (0xDEADBEEF + n + initval) & _MASK
    i = 0
    while n > 12:
        a = (a + int.from_bytes(data[i : i + 4], "little")) & _MASK
        b = (b + int.from_bytes(data[i + 4 : i + 8], "little")) & _MASK
        c = (c + int.from_bytes(data[i + 8 : i + 12], "little")) & _MASK
        # mix(a, b, c)
        a = ((a - c) & _MASK) ^ _rot(c, 4)
        c = (c + b) & _MASK
        b = ((b - a) & _MASK) ^ _rot(a, 6)
        a = (a + c) & _MASK
        c = ((c - b) & _MASK) ^ _rot(b, 8)
        b = (b + a) & _MASK
        a = ((a - c) & _MASK) ^ _rot(c, 16)
        c = (c + b) & _MASK
        b = ((b - a) & _MASK) ^ _rot(a, 19)
        a = (a + c) & _MASK
        c = ((c - b) & _MASK) ^ _rot(b, 4)
        b = (b + a) & _MASK
        n -= 12
        i += 12
    if n == 0:
        return c
    tail = data[i : i + n] + bytes(12 - n)
    a = (a + int.from_bytes(tail[0:4], "little")) & _MASK
    b = (b + int.from_bytes(tail[4:8], "little")) & _MASK
    c = (c + int.from_bytes(tail[8:12], "little")) & _MASK
    # final(a, b, c)
    c = ((c ^ b) - _rot(b, 14)) & _MASK
    a = ((a ^ c) - _rot(c, 11)) & _MASK
    b = ((b ^ a) - _rot(a, 25)) & _MASK
    c = ((c ^ b) - _rot(b, 16)) & _MASK
    a = ((a ^ c) - _rot(c, 4)) & _MASK
    b = ((b ^ a) - _rot(a, 14)) & _MASK
    c = ((c ^ b) - _rot(b, 24)) & _MASK
    return c


def read_superblock(path: str | os.PathLike[str]) -> tuple[int, int, bytes]:
    """Return ``(offset, version, bytes up to and including the checksum)``.

    Raises ``ValueError`` if there is no HDF5 signature at 0 or a power-of-two offset
    (user block) or the version is not 2 or 3.
    """
    with open(path, "rb") as fh:
        offset = 0
        size = os.fstat(fh.fileno()).st_size
        while offset < size:
            fh.seek(offset)
            head = fh.read(12)
            if head[:8] == HDF5_SIGNATURE:
                break
            offset = 512 if offset == 0 else offset * 2
        else:
            raise ValueError(f"{os.fspath(path)!r} has no HDF5 superblock")
        version, size_of_offsets = head[8], head[9]
        if version not in _KNOWN_VERSIONS:
            raise ValueError(
                f"{os.fspath(path)!r} has HDF5 superblock version {version}; only versions "
                f"{_KNOWN_VERSIONS} can be repaired after a crash (run `h5clear -s` on it)"
            )
        end = 12 + 4 * size_of_offsets + 4
        fh.seek(offset)
        block = fh.read(end)
    if len(block) != end:
        raise TruncatedSuperblockError(f"{os.fspath(path)!r}: truncated HDF5 superblock")
    return offset, version, block


def end_of_file_address(path: str | os.PathLike[str]) -> int:
    """Where the superblock says the file ends (base offset + end-of-file address), in bytes."""
    offset, _, block = read_superblock(path)
    size_of_offsets = block[9]
    start = 12 + 2 * size_of_offsets  # base address, extension address, then end of file
    return offset + int.from_bytes(block[start : start + size_of_offsets], "little")


def consistency_flags(path: str | os.PathLike[str]) -> int:
    """The superblock's file-consistency flags (0 after a clean close)."""
    return read_superblock(path)[2][11]


def clear_consistency_flags(path: str | os.PathLike[str]) -> bool:
    """Zero the consistency flags and rewrite the checksum; return whether anything changed.

    Only call this when no process has the file open for writing.
    """
    offset, _, block = read_superblock(path)
    stored = struct.unpack("<I", block[-4:])[0]
    if lookup3(block[:-4]) != stored:
        raise ValueError(f"{os.fspath(path)!r}: superblock checksum mismatch; the file is damaged")
    if block[11] == 0:
        return False
    body = block[:11] + b"\x00" + block[12:-4]
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(body + struct.pack("<I", lookup3(body)))
        fh.flush()
        os.fsync(fh.fileno())
    return True
