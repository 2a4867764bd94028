"""Reading candidate / training feature files for the command line.

``.npz``: arrays ``features`` (N, K) and optional ``uncertainty`` (N,).
``.h5`` / ``.hdf5``: datasets ``features`` and optional ``uncertainty`` at the file root.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ubmd import keys

SUFFIXES = (".npz", ".h5", ".hdf5")


def load_features(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(features, uncertainty or None) from a candidate or training file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(
            f"{path}: unsupported file type {suffix!r}; use one of {', '.join(SUFFIXES)}"
        )
    try:
        names, feats, unc = _read(path, suffix)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        if "allow_pickle" in str(exc):
            raise ValueError(
                f"{path} holds Python objects (pickled arrays), which ubmd never loads; "
                "save plain numeric arrays"
            ) from None
        raise ValueError(f"cannot read {path}: {exc}") from None
    if feats is None:
        raise ValueError(
            f"{path} has no {keys.FEATURES!r} array (found: {', '.join(names) or 'nothing'}); "
            f"store the (N, K) structure features under {keys.FEATURES!r}"
        )
    feats = np.asarray(feats)
    if feats.ndim != 2:
        raise ValueError(f"{path}: {keys.FEATURES!r} must be 2-D (N, K); got shape {feats.shape}")
    if not np.issubdtype(feats.dtype, np.number) or not np.isfinite(feats).all():
        raise ValueError(
            f"{path}: {keys.FEATURES!r} must be finite numbers (found NaN, inf or text)"
        )
    if unc is not None:
        unc = np.asarray(unc, dtype=np.float64)
        if unc.shape != (feats.shape[0],):
            raise ValueError(
                f"{path}: {keys.UNCERTAINTY!r} must have shape ({feats.shape[0]},); got {unc.shape}"
            )
        if np.isnan(unc).all():
            unc = None  # explored without an uncertainty (plain MD): there is none
        elif not np.isfinite(unc).all():
            raise ValueError(f"{path}: {keys.UNCERTAINTY!r} must be finite (found NaN or inf)")
    return feats, unc


def _read(path: Path, suffix: str) -> tuple[list[str], Any, Any]:
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            names = list(data.keys())
            feats = data[keys.FEATURES] if keys.FEATURES in names else None
            unc = data[keys.UNCERTAINTY] if keys.UNCERTAINTY in names else None
        return names, feats, unc
    import h5py

    with h5py.File(path, "r") as h5:
        names = list(h5.keys())
        feats = h5[keys.FEATURES][()] if keys.FEATURES in h5 else None
        unc = h5[keys.UNCERTAINTY][()] if keys.UNCERTAINTY in h5 else None
    return names, feats, unc
