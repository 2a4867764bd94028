"""CP2K input: a nested-dict template, user overrides merged into it, and a renderer.

Representation: a dict value is a section, a key with a space carries the section parameter
(``"KIND H"`` -> ``&KIND H``; ``"_"`` inside a section is its parameter as well), a list of dicts
is a repeated section, ``"_lines"`` is a list of raw lines (COORD), ``True/False`` become
``.TRUE./.FALSE.``.  Overrides merge recursively; an override value ``None`` deletes the key.
"""

from __future__ import annotations

import copy
import functools
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``overrides`` into a copy of ``base`` (keys compared case-insensitively)."""
    out = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        match = next((k for k in out if k.upper() == key.upper()), key)
        if value is None:
            out.pop(match, None)
        elif isinstance(value, Mapping) and isinstance(out.get(match), Mapping):
            out[match] = merge(out[match], value)
        else:
            out[match] = copy.deepcopy(value)
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return ".TRUE." if value else ".FALSE."
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list | tuple):
        return " ".join(_fmt(v) for v in value)
    return str(value)


def render(tree: Mapping[str, Any], indent: int = 0) -> str:
    """CP2K input text of a nested dict."""
    pad = "  " * indent
    lines: list[str] = []
    for key, value in tree.items():
        if key == "_":
            continue
        if key == "_lines":
            lines.extend(pad + str(line) for line in value)
            continue
        items = (
            value if isinstance(value, list) and value and isinstance(value[0], Mapping) else None
        )
        if isinstance(value, Mapping):
            items = [value]
        if items is None:
            if value is not None:
                lines.append(f"{pad}{key} {_fmt(value)}".rstrip())
            continue
        name, _, param = key.partition(" ")
        for section in items:
            section_param = param or _fmt(section.get("_", ""))
            lines.append(f"{pad}&{name} {section_param}".rstrip())
            body = render(section, indent + 1)
            if body:
                lines.append(body)
            lines.append(f"{pad}&END {name}")
    return "\n".join(lines)


@functools.lru_cache(maxsize=32)
def _entries(path: str, mtime: float) -> dict[str, list[list[str]]]:
    """Names per element in a CP2K basis/potential file: {"H": [["DZVP-...", alias...], ...]}."""
    table: dict[str, list[list[str]]] = {}
    for line in Path(path).read_text(errors="replace").splitlines():
        tokens = line.split()
        if len(tokens) >= 2 and re.fullmatch(r"[A-Z][a-z]?", tokens[0]) and "#" not in tokens[0]:
            if re.fullmatch(r"[-+0-9.eEdD]+", tokens[1]):
                continue  # a data line that starts with something element-like
            table.setdefault(tokens[0], []).append(tokens[1:])
    return table


def names_for(path: Path, element: str) -> list[list[str]]:
    """All (name, aliases...) entries for ``element`` in a basis or potential file."""
    return _entries(str(path), path.stat().st_mtime).get(element, [])


def find_entry(path: Path, element: str, name: str) -> list[str] | None:
    """The (name, aliases...) entry that lists ``name`` for ``element``, or None."""
    for entry in names_for(path, element):
        if name in entry:
            return entry
    return None


def valence_of(entry: list[str]) -> int | None:
    """Valence charge from a ``-qN`` alias (``DZVP-MOLOPT-SR-GTH-q6`` -> 6)."""
    for name in entry:
        m = re.search(r"-q(\d+)$", name)
        if m:
            return int(m.group(1))
    return None


def box_for_molecule(atoms: Atoms, vacuum_A: float) -> tuple[np.ndarray, np.ndarray]:
    """Cubic box lengths and centred positions for a non-periodic structure.

    Cubic because CP2K's wavelet Poisson solver needs it; rounded up to whole Å so that small
    displacements keep the same box (clean finite differences).
    """
    pos = atoms.get_positions()
    lo, hi = pos.min(axis=0), pos.max(axis=0)
    lengths = np.full(3, np.ceil((hi - lo).max() + 2.0 * vacuum_A))
    return lengths, pos - (lo + hi) / 2.0 + lengths / 2.0


def scf_section(
    *,
    solver: str,
    max_scf: int,
    outer_max_scf: int,
    eps_scf: float,
    mixing_alpha: float,
    smearing_K: float,
    added_mos: int,
) -> dict[str, Any]:
    scf: dict[str, Any] = {
        "SCF_GUESS": "ATOMIC",
        "EPS_SCF": eps_scf,
        "MAX_SCF": max_scf,
        "PRINT": {"RESTART": {"_": "OFF"}},
    }
    if solver == "ot":
        scf["OT"] = {"MINIMIZER": "DIIS", "PRECONDITIONER": "FULL_SINGLE_INVERSE"}
        scf["OUTER_SCF"] = {"MAX_SCF": outer_max_scf, "EPS_SCF": eps_scf}
    else:
        scf["DIAGONALIZATION"] = {"ALGORITHM": "STANDARD"}
        scf["MIXING"] = {"METHOD": "BROYDEN_MIXING", "ALPHA": mixing_alpha, "NBUFFER": 8}
        if smearing_K > 0:
            scf["ADDED_MOS"] = added_mos
            scf["SMEAR"] = {
                "_": "ON",
                "METHOD": "FERMI_DIRAC",
                "ELECTRONIC_TEMPERATURE": smearing_K,
            }
    return scf


def added_mos_for(n_electrons: int) -> int:
    """Empty orbitals for smearing: 20 % of the occupied ones, at least 4."""
    return max(4, math.ceil(0.2 * math.ceil(n_electrons / 2)))
