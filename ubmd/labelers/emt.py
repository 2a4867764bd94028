"""EMT (ASE's effective-medium theory): a cheap, real, periodic reference with stress.

Meant for metals (Al, Cu, Ag, Au, Ni, Pd, Pt); ASE also ships parameters for H, C, N, O that
are "just for fun" and are refused unless ``allow_fun_elements=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ase import Atoms

from ubmd.labelers.base import Labeler, LabelerSettings
from ubmd.labelers.errors import LabelerSetupError
from ubmd.labelers.inprocess import call_limited

METALS = ("Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt")
FUN_ELEMENTS = ("H", "C", "N", "O")


class EMTSettings(LabelerSettings):
    allow_fun_elements: bool = False


class EMTLabeler(Labeler):
    """ASE EMT single points (energy, forces, stress for periodic cells)."""

    name = "emt"
    Settings = EMTSettings
    settings: EMTSettings

    def code_version(self) -> str:
        import ase

        return f"ase {ase.__version__}"

    def supported_elements(self) -> tuple[str, ...]:
        return METALS + (FUN_ELEMENTS if self.settings.allow_fun_elements else ())

    def check(self, atoms: Atoms) -> None:
        if len(atoms) == 0:
            raise LabelerSetupError("empty structure: nothing to label")
        bad = sorted(set(atoms.get_chemical_symbols()) - set(self.supported_elements()))
        if bad:
            raise LabelerSetupError(
                f"EMT has no parameters for {bad}; supported: {list(self.supported_elements())}"
            )
        pbc = atoms.get_pbc()
        if pbc.any() and atoms.cell.volume <= 1e-6:
            raise LabelerSetupError("periodic structure with a zero-volume cell")

    def execute(self, atoms: Atoms, workdir: Path) -> Any:
        from ase.calculators.emt import EMT

        def run() -> dict[str, Any]:
            work = atoms.copy()
            work.calc = EMT()
            out = {"energy": work.get_potential_energy(), "forces": work.get_forces()}
            if work.get_pbc().all():
                out["stress"] = work.get_stress(voigt=True)
            return out

        return call_limited(run, self.settings.timeout_s, workdir)

    def read_results(self, atoms: Atoms, workdir: Path, raw: Any) -> dict[str, Any]:
        return raw
