"""Model files: save and load a Potential or Ensemble.

Model files are plain dicts (tensors, str, int, float, lists) written with ``torch.save``
and read back with ``torch.load(..., weights_only=True)``, never unpickling code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ubmd.models.ensemble import Ensemble
from ubmd.models.potential import Potential
from ubmd.models.registry import model_class, registered_name

FORMAT_MARKER = "ubmd-model"
FORMAT_VERSION = 1


def _member_payload(model: Potential) -> dict[str, Any]:
    return {
        "class": registered_name(model),
        "hyperparameters": model.hyperparameters(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "species": list(model.species),
        "dtype": str(model.dtype).removeprefix("torch."),
    }


def model_payload(model: nn.Module, *, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The plain dict a model file holds (also used inside training checkpoints)."""
    from ubmd import __version__

    members = list(model.members) if hasattr(model, "members") else [model]
    for m in members:
        if not isinstance(m, Potential):
            raise TypeError(f"expected a Potential or Ensemble, got {type(m).__name__}")
    return {
        "format": FORMAT_MARKER,
        "format_version": FORMAT_VERSION,
        "ubmd_version": __version__,
        "kind": "ensemble" if hasattr(model, "members") else "potential",
        "members": [_member_payload(m) for m in members],
        "extra": dict(extra or {}),
    }


def model_from_payload(
    payload: Any, *, device: str | torch.device | None = None, source: str = "payload"
) -> nn.Module:
    """Rebuild a Potential or Ensemble from :func:`model_payload` output."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_MARKER:
        raise ValueError(
            f"{source} is not a ubmd model file (expected a dict with format={FORMAT_MARKER!r} "
            "written by ubmd.models.save_model)"
        )
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{source} has model format version {payload['format_version']}; this ubmd "
            f"reads up to {FORMAT_VERSION} — upgrade ubmd"
        )
    members = []
    for entry in payload["members"]:
        cls = model_class(entry["class"])
        model = cls(**entry["hyperparameters"])
        model.to(dtype=getattr(torch, entry["dtype"]))
        model.load_state_dict(entry["state_dict"])
        members.append(model.to(device) if device is not None else model)
    if payload["kind"] == "ensemble":
        return Ensemble(members)
    return members[0]


def save_model(
    path: str | os.PathLike, model: nn.Module, *, extra: Mapping[str, Any] | None = None
) -> None:
    """Write a Potential or Ensemble (plus ``extra``: tensors/str/int/float) to ``path``.

    Written to a temporary file first and renamed, so a crash never leaves half a file.
    """
    payload = model_payload(model, extra=extra)
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(payload, tmp)
    os.replace(tmp, path)


def read_model_file(path: str | os.PathLike) -> dict[str, Any]:
    """Load the raw dict of a model file (weights_only), with clear errors."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign/garbled files
        raise ValueError(
            f"{path} is not a ubmd model file (expected a file written by "
            f"ubmd.models.save_model / `ubmd train`; reading it with "
            f"torch.load(weights_only=True) failed with {type(exc).__name__})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_MARKER:
        raise ValueError(
            f"{path} is not a ubmd model file (expected a dict with format={FORMAT_MARKER!r} "
            "written by ubmd.models.save_model / `ubmd train`)"
        )
    return payload


def load_model(path: str | os.PathLike, device: str | torch.device | None = None) -> nn.Module:
    """Load a Potential or Ensemble saved by :func:`save_model` (its ``extra`` via :func:`load_extra`)."""
    payload = read_model_file(path)
    return model_from_payload(payload, device=device, source=os.fspath(path))


def load_extra(path: str | os.PathLike) -> dict[str, Any]:
    """The ``extra`` dict stored with a model (uncertainty/calibration state)."""
    return dict(read_model_file(path).get("extra", {}))
