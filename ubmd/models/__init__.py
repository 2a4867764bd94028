"""Potentials (built-in PaiNN, optional MACE), training, ensembles and model files.

See ``contract.md`` in this directory for the interface every potential follows.
Imports are lazy so ``import ubmd.models`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Graph": "ubmd.models.graph",
    "Potential": "ubmd.models.base",
    "compute": "ubmd.models.base",
    "save_model": "ubmd.models.base",
    "load_model": "ubmd.models.base",
    "load_extra": "ubmd.models.base",
    "PaiNN": "ubmd.models.builtin",
    "build_model": "ubmd.models.factory",
    "Ensemble": "ubmd.models.ensemble",
    "TrainConfig": "ubmd.models.train",
    "train_model": "ubmd.models.train",
    "train_member": "ubmd.models.train",
    "train_ensemble": "ubmd.models.train",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ubmd.models' has no attribute {name!r}")
