"""GFN2-xTB (or GFN1-xTB) single points through tblite's Python interface.

tblite works in atomic units; energies (Ha) and gradients (Ha/bohr) are converted with
``ase.units``.  For periodic cells the stress is virial / volume (tblite's virial is dE/dε).
An SCF that does not converge raises ``RuntimeError`` in tblite, mapped to ``SCFNotConverged``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from ase import Atoms, units
from pydantic import Field

from ubmd.labelers.base import Labeler, LabelerSettings
from ubmd.labelers.errors import (
    CalculationFailed,
    LabelerSetupError,
    ProgramCrashed,
    SCFNotConverged,
)
from ubmd.labelers.inprocess import call_limited

MAX_Z = 86  # GFN1/GFN2-xTB parametrise H..Rn


class XTBSettings(LabelerSettings):
    method: Literal["GFN2-xTB", "GFN1-xTB"] = "GFN2-xTB"
    charge: int = 0
    uhf: int = Field(0, ge=0, description="number of unpaired electrons")
    accuracy: float = Field(1.0, gt=0)
    max_iterations: int = Field(250, ge=1)
    electronic_temperature_K: float = Field(300.0, ge=0)
    mixer_damping: float = Field(0.4, gt=0, le=1)


class XTBLabeler(Labeler):
    """Tight-binding reference (tblite), runs in-process in ~10 ms for alanine dipeptide."""

    name = "xtb"
    Settings = XTBSettings
    settings: XTBSettings

    def code_version(self) -> str:
        try:
            import tblite

            return f"tblite {getattr(tblite, '__version__', '?')}"
        except ImportError:
            return ""

    def retry_variant(self, attempt: int, error: CalculationFailed) -> Labeler | None:
        """More SCC iterations and stronger damping, then a higher electronic temperature."""
        s = self.settings
        changes: dict[str, Any] = {
            "max_iterations": 2 * s.max_iterations,
            "mixer_damping": s.mixer_damping / 2,
        }
        if attempt >= 3:
            changes["electronic_temperature_K"] = max(s.electronic_temperature_K, 1000.0)
        return self.with_settings(**changes)

    def check(self, atoms: Atoms) -> None:
        try:
            import tblite.interface  # noqa: F401
        except ImportError as exc:
            raise LabelerSetupError(
                "the xtb labeler needs tblite: pip install 'ubmd[xtb]' (or tblite)"
            ) from exc
        if len(atoms) == 0:
            raise LabelerSetupError("empty structure: nothing to label")
        bad = sorted(
            {
                s
                for s, z in zip(atoms.get_chemical_symbols(), atoms.numbers, strict=True)
                if not 1 <= z <= MAX_Z
            }
        )
        if bad:
            raise LabelerSetupError(f"{self.settings.method} has no parameters for {bad} (H..Rn)")
        if atoms.get_pbc().any() and atoms.cell.volume <= 1e-6:
            raise LabelerSetupError("periodic structure with a zero-volume cell")

    def _calculator(self, atoms: Atoms) -> Any:
        from tblite.interface import Calculator

        s = self.settings
        periodic = atoms.get_pbc()
        calc = Calculator(
            s.method,
            atoms.numbers,
            atoms.positions / units.Bohr,
            float(s.charge),
            int(s.uhf),
            atoms.cell.array / units.Bohr if periodic.any() else None,
            periodic if periodic.any() else None,
        )
        calc.set("verbosity", 0)
        calc.set("accuracy", s.accuracy)
        calc.set("max-iter", s.max_iterations)
        calc.set("mixer-damping", s.mixer_damping)
        calc.set("temperature", s.electronic_temperature_K * units.kB / units.Hartree)
        return calc

    def execute(self, atoms: Atoms, workdir: Path) -> Any:
        def run() -> Any:
            try:
                calc = self._calculator(atoms)
            except RuntimeError as exc:  # e.g. atoms on top of each other
                raise ProgramCrashed(f"tblite rejected the input: {exc}", workdir=workdir) from exc
            try:
                return calc.singlepoint()
            except RuntimeError as exc:
                msg = str(exc)
                cls: type[CalculationFailed] = (
                    SCFNotConverged if "converge" in msg.lower() else ProgramCrashed
                )
                raise cls(f"tblite: {msg}", workdir=workdir) from exc

        return call_limited(run, self.settings.timeout_s, workdir)

    def read_results(self, atoms: Atoms, workdir: Path, raw: Any) -> dict[str, Any]:
        energy = float(raw.get("energy")) * units.Hartree
        forces = -np.asarray(raw.get("gradient")) * (units.Hartree / units.Bohr)
        out: dict[str, Any] = {"energy": energy, "free_energy": energy, "forces": forces}
        if atoms.get_pbc().all():
            virial = np.asarray(raw.get("virial")) * units.Hartree / atoms.get_volume()
            out["stress"] = virial.flat[[0, 4, 8, 5, 2, 1]]
        return out
