"""Reference single points ("labelers"): CP2K, VASP, GFN2-xTB (tblite), EMT, Amber (OpenMM).

``make_labeler("cp2k", cutoff_Ry=300)`` builds one by name; ``available_labelers()`` lists the
names.  Every labeler turns an ``ase.Atoms`` into a ``LabelResult`` in ASE units
(``labeler.label(atoms, workdir=...)``); ``label_with_retries`` adds the retry policy and records
failures instead of raising.  Modules are imported lazily so that importing this package is cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ubmd.labelers.base import Labeler

# name -> (module, class)
_REGISTRY: dict[str, tuple[str, str]] = {
    "cp2k": ("ubmd.labelers.cp2k", "CP2KLabeler"),
    "vasp": ("ubmd.labelers.vasp", "VaspLabeler"),
    "xtb": ("ubmd.labelers.xtb", "XTBLabeler"),
    "emt": ("ubmd.labelers.emt", "EMTLabeler"),
    "amber": ("ubmd.labelers.amber", "AmberLabeler"),
}


def available_labelers() -> list[str]:
    """Names accepted by ``make_labeler``."""
    return sorted(_REGISTRY)


def labeler_class(name: str) -> type[Labeler]:
    key = name.strip().lower()
    if key not in _REGISTRY:
        raise ValueError(
            f"unknown labeler {name!r}; known labelers: {', '.join(available_labelers())}"
        )
    module, cls = _REGISTRY[key]
    return getattr(importlib.import_module(module), cls)


def make_labeler(name: str, **settings: Any) -> Labeler:
    """Build the labeler ``name`` with keyword settings (unknown keys are rejected)."""
    return labeler_class(name)(**settings)


def __getattr__(attr: str) -> Any:
    # Lazy access to the main public names without importing every backend.
    lazy = {
        "Labeler": "ubmd.labelers.base",
        "LabelResult": "ubmd.labelers.base",
        "LabelerSettings": "ubmd.labelers.base",
        "RetryPolicy": "ubmd.labelers.retry",
        "label_with_retries": "ubmd.labelers.retry",
    }
    if attr in lazy:
        return getattr(importlib.import_module(lazy[attr]), attr)
    errors = importlib.import_module("ubmd.labelers.errors")
    if hasattr(errors, attr):
        return getattr(errors, attr)
    raise AttributeError(f"module 'ubmd.labelers' has no attribute {attr!r}")


__all__ = [
    "LabelResult",
    "Labeler",
    "LabelerSettings",
    "RetryPolicy",
    "available_labelers",
    "label_with_retries",
    "labeler_class",
    "make_labeler",
]
