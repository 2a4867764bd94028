"""Per-structure provenance: where a labeled structure came from and how it was labeled."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ubmd.store.schema import FLOAT_COLUMNS, INT_COLUMNS, STRING_COLUMNS

NAN = float("nan")


@dataclass(frozen=True)
class Provenance:
    """Provenance of one structure (names are the ``ubmd.keys`` constants).

    Integers default to -1 and floats to NaN meaning "unknown / not applicable".
    ``status`` is "ok" (labels present) or "failed" (then ``reason`` must say why).
    """

    campaign_id: str = ""
    iteration: int = -1
    explorer: int = -1
    replica: int = -1
    md_step: int = -1
    temperature_K: float = NAN
    bias_strength: float = NAN
    bias_stress_strength: float = NAN
    sampler: str = ""
    selection_uncertainty: float = NAN
    selection_method: str = ""
    labeler: str = ""
    labeler_hash: str = ""
    status: str = "ok"
    reason: str = ""
    wall_time_s: float = NAN

    def to_info(self, *, skip_defaults: bool = False) -> dict[str, Any]:
        """Plain ``dict`` (for ``atoms.info``); ``skip_defaults`` drops unset fields."""
        out = dataclasses.asdict(self)
        if skip_defaults:
            out = {k: v for k, v in out.items() if not _is_default(k, v)}
        return out

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> Provenance:
        """Build from a mapping (``atoms.info``, database key-value pairs); other keys ignored."""
        kwargs: dict[str, Any] = {}
        for name in PROVENANCE_FIELDS:
            if name not in info:
                continue
            value = info[name]
            try:
                if name in INT_COLUMNS:
                    kwargs[name] = int(value)
                elif name in FLOAT_COLUMNS:
                    kwargs[name] = float(value)
                else:
                    kwargs[name] = str(value)
            except (TypeError, ValueError):
                raise ValueError(
                    f"provenance field {name!r} has value {value!r} of type "
                    f"{type(value).__name__}; expected {_kind(name)}"
                ) from None
        return cls(**kwargs)


PROVENANCE_FIELDS = tuple(f.name for f in dataclasses.fields(Provenance))
_DEFAULTS = Provenance()


def _kind(name: str) -> str:
    if name in INT_COLUMNS:
        return "an integer"
    if name in FLOAT_COLUMNS:
        return "a number"
    return "a string"


def _is_default(name: str, value: Any) -> bool:
    default = getattr(_DEFAULTS, name)
    if isinstance(default, float) and math.isnan(default):
        return isinstance(value, float) and math.isnan(value)
    return value == default


def provenance_columns(
    provenance: Provenance | Sequence[Provenance] | None, n: int
) -> dict[str, np.ndarray]:
    """Columns (one array per field, length ``n``) from one or ``n`` provenance records."""
    if provenance is None:
        provenance = _DEFAULTS
    if isinstance(provenance, Provenance):
        return {name: _full(name, getattr(provenance, name), n) for name in PROVENANCE_FIELDS}
    records = list(provenance)
    if len(records) != n:
        raise ValueError(
            f"got {len(records)} provenance records for {n} structures; pass one record "
            "per structure or a single record for all"
        )
    for i, rec in enumerate(records):
        if not isinstance(rec, Provenance):
            raise TypeError(f"provenance[{i}] is a {type(rec).__name__}, expected Provenance")
    return {
        name: _column(name, [getattr(rec, name) for rec in records]) for name in PROVENANCE_FIELDS
    }


def _full(name: str, value: Any, n: int) -> np.ndarray:
    return _column(name, [value] * n) if name in STRING_COLUMNS else np.full(n, value)


def _column(name: str, values: list[Any]) -> np.ndarray:
    if name in INT_COLUMNS:
        return np.asarray(values, dtype=np.int64)
    if name in FLOAT_COLUMNS:
        return np.asarray(values, dtype=np.float64)
    return np.asarray(values, dtype=object)
