"""Potentials (built-in PaiNN, optional MACE), training, ensembles and model files.

See ``contract.md`` in this directory for the interface every potential follows.
Imports are lazy so ``import ubmd.models`` does not import torch.
"""

from __future__ import annotations

from ubmd._lazy import lazy_getattr

_EXPORTS = {
    "Graph": "ubmd.models.graph",
    "Potential": "ubmd.models.potential",
    "compute": "ubmd.models.potential",
    "save_model": "ubmd.models.files",
    "load_model": "ubmd.models.files",
    "load_extra": "ubmd.models.files",
    "PaiNN": "ubmd.models.builtin",
    "build_model": "ubmd.models.factory",
    "Ensemble": "ubmd.models.ensemble",
    "TrainConfig": "ubmd.models.train",
    "train_model": "ubmd.models.train",
    "train_member": "ubmd.models.train",
    "train_ensemble": "ubmd.models.train",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS)
