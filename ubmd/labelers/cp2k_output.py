"""Parse CP2K's main output (stdout) of an ENERGY_FORCE run.

Reads the last total energy (``ENERGY| Total FORCE_EVAL ( QS ) energy``, Ha), the last
``ATOMIC FORCES in [a.u.]`` block (Ha/bohr), the last stress tensor in either format
(CP2K <= 7: ``STRESS TENSOR [GPa]``; CP2K >= 8: ``STRESS| Analytical stress tensor [GPa]``),
SCF non-convergence (``SCF run NOT converged``) and normal termination (``PROGRAM ENDED AT``).

Conversion to ASE units uses ``ase.units`` (CODATA 2014).  CP2K prints its own factors (CODATA
2006: 1 Ha = 27.2113838565563 eV, 1 bohr = 0.52917720859 Å); the two differ by < 1e-7 relative,
far below SCF noise.  CP2K's stress is a pressure-like tensor (positive = compressive), so the
ASE stress is its negative.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import units

_FLOAT = r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eEdD][-+]?\d+)?"
_ENERGY_RE = re.compile(
    r"ENERGY\|\s+Total FORCE_EVAL \( \w+ \) energy [\(\[]a\.u\.[\)\]]:\s+(" + _FLOAT + ")"
)
_OLD_STRESS_RE = re.compile(
    r"STRESS TENSOR \[GPa\]\s*\n\s*\n\s*X\s+Y\s+Z\s*\n"
    r"\s*X\s+(" + _FLOAT + r")\s+(" + _FLOAT + r")\s+(" + _FLOAT + r")\s*\n"
    r"\s*Y\s+(" + _FLOAT + r")\s+(" + _FLOAT + r")\s+(" + _FLOAT + r")\s*\n"
    r"\s*Z\s+(" + _FLOAT + r")\s+(" + _FLOAT + r")\s+(" + _FLOAT + r")"
)
_NEW_STRESS_RE = re.compile(
    r"STRESS\|\s+(?:Analytical|Numerical) stress tensor \[GPa\]\s*\n"
    r"\s*STRESS\|\s+x\s+y\s+z\s*\n"
    r"\s*STRESS\|\s+x\s+(" + _FLOAT + r")\s+(" + _FLOAT + r")\s+(" + _FLOAT + r")\s*\n"
    r"\s*STRESS\|\s+y\s+(" + _FLOAT + r")\s+(" + _FLOAT + r")\s+(" + _FLOAT + r")\s*\n"
    r"\s*STRESS\|\s+z\s+(" + _FLOAT + r")\s+(" + _FLOAT + r")\s+(" + _FLOAT + r")"
)
_FORCE_LINE_RE = re.compile(
    r"^\s*\d+\s+\d+\s+[A-Za-z]+\w*\s+(" + _FLOAT + r")\s+(" + _FLOAT + r")\s+(" + _FLOAT + r")\s*$"
)
_VERSION_RE = re.compile(r"CP2K\|\s+version string:\s+(.*?)\s*$", re.MULTILINE)

HARTREE_EV = units.Hartree
BOHR_A = units.Bohr


@dataclass
class Cp2kOutput:
    """What a CP2K output holds, in CP2K's own units."""

    energy_Ha: float | None
    forces_Ha_bohr: np.ndarray | None  # (N, 3)
    stress_GPa: np.ndarray | None  # (3, 3), CP2K sign (positive = compressive)
    scf_converged: bool
    ended_normally: bool
    version: str
    abort_message: str = ""  # text of CP2K's [ABORT] box, if any

    @property
    def energy_eV(self) -> float | None:
        return None if self.energy_Ha is None else self.energy_Ha * HARTREE_EV

    @property
    def forces_eV_A(self) -> np.ndarray | None:
        if self.forces_Ha_bohr is None:
            return None
        return self.forces_Ha_bohr * (HARTREE_EV / BOHR_A)

    @property
    def stress_ase(self) -> np.ndarray | None:
        """ASE Voigt stress (xx, yy, zz, yz, xz, xy) in eV/Å^3, positive = tensile."""
        if self.stress_GPa is None:
            return None
        s = -self.stress_GPa * units.GPa
        return np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])


def _last_forces(text: str) -> np.ndarray | None:
    start = text.rfind("ATOMIC FORCES in [a.u.]")
    if start < 0:
        return None
    rows = []
    for line in text[start:].splitlines()[1:]:
        if "SUM OF ATOMIC FORCES" in line:
            break
        m = _FORCE_LINE_RE.match(line)
        if m:
            rows.append([float(x.replace("D", "E").replace("d", "e")) for x in m.groups()])
        elif line.strip() and not line.lstrip().startswith("#"):
            return None  # something else interrupted the block: truncated / unexpected
    else:
        return None  # block never closed: the output is truncated
    return np.array(rows, dtype=float).reshape(-1, 3) if rows else None


def _last_stress(text: str) -> np.ndarray | None:
    best: tuple[int, np.ndarray] | None = None
    for regex in (_OLD_STRESS_RE, _NEW_STRESS_RE):
        for m in regex.finditer(text):
            values = np.array([float(x) for x in m.groups()]).reshape(3, 3)
            if best is None or m.start() > best[0]:
                best = (m.start(), values)
    return None if best is None else best[1]


def _abort_message(text: str) -> str:
    start = text.find("[ABORT]")
    if start < 0:
        return ""
    words = []
    for line in text[start:].splitlines()[:8]:
        inner = line.strip().strip("*").replace("[ABORT]", "")
        inner = re.sub(r"^[\s/\\|_O]*", "", inner).strip()
        if inner and not re.fullmatch(r"[-_/\\|\s]*", inner):
            words.append(inner)
    return " ".join(words)


def parse_cp2k_output(text: str) -> Cp2kOutput:
    """Parse the text of a CP2K output (see the module docstring)."""
    energies = _ENERGY_RE.findall(text)
    version = _VERSION_RE.search(text)
    return Cp2kOutput(
        energy_Ha=float(energies[-1]) if energies else None,
        forces_Ha_bohr=_last_forces(text),
        stress_GPa=_last_stress(text),
        scf_converged="SCF run NOT converged" not in text,
        ended_normally="PROGRAM ENDED AT" in text,
        version=version.group(1) if version else "",
        abort_message=_abort_message(text),
    )


def read_cp2k_output(path: str | Path) -> Cp2kOutput:
    """Parse a CP2K output file."""
    return parse_cp2k_output(Path(path).read_text(errors="replace"))
