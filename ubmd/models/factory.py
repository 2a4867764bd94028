"""Build a fresh potential by kind name ("painn" built-in, "mace" optional backend)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ubmd.models.graph import as_dtype
from ubmd.models.potential import Potential

MODEL_KINDS = ("painn", "mace")


def build_model(
    kind: str,
    species: Sequence[int],
    *,
    options: Mapping[str, Any] | None = None,
    dtype: str | torch.dtype = "float64",
    device: str | torch.device | None = None,
) -> Potential:
    """A new, untrained potential of ``kind`` for ``species`` (atomic numbers)."""
    options = dict(options or {})
    if kind == "painn":
        from ubmd.models.builtin import PaiNN as cls
    elif kind == "mace":
        from ubmd.models.mace_backend import MacePotential as cls
    else:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {MODEL_KINDS}")
    try:
        model = cls(species, **options)
    except TypeError as exc:
        raise ValueError(f"bad options for model kind {kind!r}: {exc}") from None
    model = model.to(dtype=as_dtype(dtype))
    return model.to(device) if device is not None else model
