"""Crash-safe HDF5 store of labeled structures with provenance (one file per campaign).

>>> from ubmd.store import StructureStore, Provenance
>>> with StructureStore.open("campaign.h5", mode="a") as store:   # doctest: +SKIP
...     store.append(atoms_list, Provenance(iteration=3, labeler="xtb"))
>>> StructureStore.open("campaign.h5").read_arrays(status="ok")   # doctest: +SKIP

Layout and crash-safety protocol: :mod:`ubmd.store.schema`.
"""

from ubmd.store.provenance import Provenance
from ubmd.store.reading import STORE_INDEX
from ubmd.store.schema import (
    SCHEMA_VERSION,
    StoreError,
    StoreFormatError,
    StoreLockedError,
)
from ubmd.store.store import AppendResult, StructureStore

__all__ = [
    "SCHEMA_VERSION",
    "STORE_INDEX",
    "AppendResult",
    "Provenance",
    "StoreError",
    "StoreFormatError",
    "StoreLockedError",
    "StructureStore",
]
