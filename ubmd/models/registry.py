"""Potential classes by name: a model file names its class and never pickles code."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

    from ubmd.models.potential import Potential

# Model class name -> import path; lazy so the MACE backend is only imported when used.
_REGISTRY: dict[str, str] = {
    "PaiNN": "ubmd.models.builtin:PaiNN",
    "MacePotential": "ubmd.models.mace_backend:MacePotential",
}


def register_model(name: str, import_path: str) -> None:
    """Make a Potential subclass loadable by name (``"package.module:Class"``)."""
    _REGISTRY[name] = import_path


def model_class(name: str) -> type[Potential]:
    """The Potential subclass registered under ``name``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model class {name!r}; known: {sorted(_REGISTRY)}")
    module, attr = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), attr)


def registered_name(model: nn.Module) -> str:
    """The name ``model``'s class is registered under; ValueError if it is not registered."""
    name = type(model).__name__
    if name not in _REGISTRY:
        raise ValueError(f"model class {name} is not registered (see register_model)")
    return name
