"""On-disk layout of a ubmd structure store (schema version 1).

One HDF5 file per campaign. Every dataset is 1-D or 2-D, chunked and extendible along
axis 0, so appends only grow datasets; nothing is rewritten in place.

Per atom (``A`` rows, atoms of structure ``s`` at ``atom_offset[s]:atom_offset[s]+n_atoms[s]``):

==============  ========  ==============================================
``numbers``     uint8     atomic number
``positions``   f8 (A,3)  Å
``forces``      f8 (A,3)  eV/Å (NaN for failed records without forces)
==============  ========  ==============================================

Per structure (``S`` rows): ``n_atoms`` (int32), ``atom_offset`` (int64), ``cell`` (f8 S×3×3,
rows are lattice vectors), ``pbc`` (uint8 S×3), ``energy``, ``free_energy`` (f8, NaN if
absent), ``stress`` (f8 S×6 ASE Voigt, NaN rows where ``has_stress`` is 0), ``has_stress``
(uint8), ``hash`` (uint8 S×16, blake2b-128 of numbers/positions/cell, for duplicates), the
integer provenance columns ``iteration``, ``explorer``, ``replica`` (int32), ``md_step``
(int64), the float columns ``temperature_K``, ``bias_strength``, ``bias_stress_strength``,
``selection_uncertainty``, ``wall_time_s``, ``created_at`` (f8, NaN if unknown) and the
string columns ``campaign_id``, ``sampler``, ``selection_method``, ``labeler``,
``labeler_hash``, ``status``, ``reason`` stored as int32 codes into ``strings``.

``strings`` (S256, extendible) is the store's string table; code 0 is always "".
Why a table: SWMR forbids variable-length types; fixed-width S64/S256 columns would cost
~640 bytes per structure (half of a 22-atom structure's coordinates and forces), while the
same few campaign/labeler/sampler names repeat in every row. Codes keep rows at 4 bytes per
string, compare as integers when filtering, and decode once per distinct value.
Identifiers must fit 64 UTF-8 bytes (longer ones are rejected); failure reasons are cut to
256 bytes with an ellipsis.

``committed`` (int64, 3 entries: structures, atoms, strings) is the commit point. Readers
only look at rows below these counts. An append writes all data, flushes, then writes the
three counts in a single write (one ``pwrite`` of 24 bytes, so the counts can never
disagree with each other, which two separate 1-element datasets could) and flushes again.
Rows beyond the counts left by a killed writer are garbage and are cut off on reopen.

Single writer: the writer holds an exclusive ``flock`` on ``<store>.lock`` (containing its
pid) for its lifetime and opens the file with ``libver="latest"`` in SWMR mode; readers open
with ``swmr=True`` and only ever read rows below ``committed``. A killed writer leaves the
superblock marked "open for write"; the next writer (whose lock proves the old one dead)
clears that mark (``ubmd.store.superblock``) and cuts uncommitted rows before appending.
Stores are created under a temporary name and renamed into place, so a half-built file is
never visible.

Attributes of the root group, written at creation: ``ubmd_store`` (format marker),
``schema_version``, ``campaign_config`` (JSON), ``package_versions`` (JSON), ``created_at``
(ISO 8601, UTC).
"""

from __future__ import annotations

import numpy as np

SCHEMA_VERSION = 1
FORMAT_MARKER = "ubmd.structure_store"

MAX_ID_BYTES = 64  # identifiers (names, hashes) longer than this are rejected
MAX_TEXT_BYTES = 256  # failure reasons are truncated to this many bytes
STRING_DTYPE = np.dtype(f"S{MAX_TEXT_BYTES}")

# Chunk rows: ~400 kB per chunk for the big per-atom arrays, enough rows per structure
# chunk that a 1,000-structure append touches one or two chunks per dataset.
ATOM_CHUNK = 16384
STRUCT_CHUNK = 2048
STRING_CHUNK = 256

# name -> (numpy dtype, trailing shape)
ATOM_DATASETS: dict[str, tuple[np.dtype, tuple[int, ...]]] = {
    "numbers": (np.dtype(np.uint8), ()),
    "positions": (np.dtype(np.float64), (3,)),
    "forces": (np.dtype(np.float64), (3,)),
}

INT_COLUMNS: dict[str, np.dtype] = {
    "iteration": np.dtype(np.int32),
    "explorer": np.dtype(np.int32),
    "replica": np.dtype(np.int32),
    "md_step": np.dtype(np.int64),
}
FLOAT_COLUMNS = (
    "temperature_K",
    "bias_strength",
    "bias_stress_strength",
    "selection_uncertainty",
    "wall_time_s",
)
STRING_COLUMNS = (
    "campaign_id",
    "sampler",
    "selection_method",
    "labeler",
    "labeler_hash",
    "status",
    "reason",
)
# Identifier columns (length-checked); "reason" is free text (truncated) instead.
ID_COLUMNS = tuple(c for c in STRING_COLUMNS if c != "reason")

STRUCT_DATASETS: dict[str, tuple[np.dtype, tuple[int, ...]]] = {
    "n_atoms": (np.dtype(np.int32), ()),
    "atom_offset": (np.dtype(np.int64), ()),
    "cell": (np.dtype(np.float64), (3, 3)),
    "pbc": (np.dtype(np.uint8), (3,)),
    "energy": (np.dtype(np.float64), ()),
    "free_energy": (np.dtype(np.float64), ()),
    "stress": (np.dtype(np.float64), (6,)),
    "has_stress": (np.dtype(np.uint8), ()),
    "hash": (np.dtype(np.uint8), (16,)),
    **{name: (dt, ()) for name, dt in INT_COLUMNS.items()},
    **{name: (np.dtype(np.float64), ()) for name in (*FLOAT_COLUMNS, "created_at")},
    **{name: (np.dtype(np.int32), ()) for name in STRING_COLUMNS},
}

STATUS_VALUES = ("ok", "failed")


class StoreError(ValueError):
    """A store cannot be opened or written as asked (message says why and what to do)."""


class StoreFormatError(StoreError):
    """The file is not HDF5, not a ubmd store, or has an unknown schema/superblock."""


class StoreLockedError(StoreError):
    """Another process holds the single-writer lock of this store."""
