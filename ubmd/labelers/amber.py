"""Amber force field through OpenMM (alanine dipeptide, as in the paper), in vacuum.

The topology (``prmtop``) fixes the atoms: a structure must have the same number of atoms with
the same elements in the same order (checked before anything runs).  The prmtop in ``data/ala2``
has no element column in its PDB, so element symbols come from the prmtop (``topology_atoms``).
Energies kJ/mol -> eV and forces kJ/mol/nm -> eV/Å with ``ase.units``.  Non-periodic, no cutoff,
no constraints (forces on every atom, hydrogens included).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

import numpy as np
from ase import Atoms, units
from pydantic import Field

from ubmd.labelers.base import Labeler, LabelerSettings
from ubmd.labelers.errors import LabelerSetupError, ProgramCrashed
from ubmd.labelers.inprocess import call_limited

KJ_PER_MOL_EV = units.kJ / units.mol  # 1 kJ/mol in eV
NM_A = 10.0  # 1 nm in Å


class AmberSettings(LabelerSettings):
    prmtop: str = Field(..., description="Amber topology file (.prmtop / .parm7)")
    platform: Literal["Reference", "CPU", "CUDA", "OpenCL"] = "CPU"
    device: str | None = Field(None, description="GPU index for CUDA/OpenCL, e.g. '0'")
    threads: int = Field(1, ge=1, description="CPU platform threads")


@functools.lru_cache(maxsize=4)
def _load_prmtop(path: str, mtime: float) -> Any:
    from openmm import app

    return app.AmberPrmtopFile(path)


def topology_atoms(prmtop: str | Path, positions_A: np.ndarray | None = None) -> Atoms:
    """An ``ase.Atoms`` with the prmtop's elements in its order (positions zero unless given)."""
    path = Path(prmtop)
    prm = _load_prmtop(str(path.resolve()), path.stat().st_mtime)
    symbols = [a.element.symbol for a in prm.topology.atoms()]
    return Atoms(symbols, positions=positions_A if positions_A is not None else None)


def load_amber_structure(prmtop: str | Path, coordinates: str | Path) -> Atoms:
    """Read Amber coordinates (.crd/.inpcrd/.rst7) with elements from the prmtop."""
    from openmm import app, unit

    crd = app.AmberInpcrdFile(str(coordinates))
    pos = np.asarray(crd.getPositions(asNumpy=True).value_in_unit(unit.angstrom), dtype=float)
    return topology_atoms(prmtop, pos)


class AmberLabeler(Labeler):
    """Classical Amber reference (OpenMM), a few ms per label for alanine dipeptide."""

    name = "amber"
    Settings = AmberSettings
    settings: AmberSettings

    def __init__(self, settings: AmberSettings | None = None, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self._context: Any = None

    def __getstate__(self) -> dict[str, Any]:
        # The OpenMM context is not picklable (Parsl ships labelers to workers): rebuild it there.
        return {**self.__dict__, "_context": None}

    def code_version(self) -> str:
        try:
            import openmm

            return f"openmm {openmm.__version__}"
        except ImportError:
            return ""

    def settings_dict(self) -> dict[str, Any]:
        d = super().settings_dict()
        path = Path(self.settings.prmtop)
        if path.is_file():  # hash the topology content, not only its path
            import hashlib

            d["prmtop_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        return d

    def check(self, atoms: Atoms) -> None:
        try:
            import openmm  # noqa: F401
        except ImportError as exc:
            raise LabelerSetupError("the amber labeler needs OpenMM: pip install openmm") from exc
        path = Path(self.settings.prmtop)
        if not path.is_file():
            raise LabelerSetupError(f"Amber topology {path} does not exist")
        expected = topology_atoms(path).get_chemical_symbols()
        got = atoms.get_chemical_symbols()
        if len(got) != len(expected):
            raise LabelerSetupError(
                f"structure has {len(got)} atoms but the topology {path.name} has {len(expected)}"
            )
        mismatch = [i for i, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b]
        if mismatch:
            i = mismatch[0]
            raise LabelerSetupError(
                f"atom order does not match the topology {path.name}: atom {i} is {got[i]}, "
                f"the topology expects {expected[i]} ({len(mismatch)} mismatches)"
            )
        if atoms.get_pbc().any():
            raise LabelerSetupError(
                "the amber labeler runs in vacuum: give a non-periodic structure"
            )

    def _get_context(self) -> Any:
        # Built once per labeler: creating an OpenMM context costs far more than one evaluation.
        if self._context is None:
            import openmm
            from openmm import app

            path = Path(self.settings.prmtop)
            prm = _load_prmtop(str(path.resolve()), path.stat().st_mtime)
            system = prm.createSystem(nonbondedMethod=app.NoCutoff, constraints=None)
            platform = openmm.Platform.getPlatformByName(self.settings.platform)
            props: dict[str, str] = {}
            if self.settings.platform == "CPU":
                props["Threads"] = str(self.settings.threads)
            elif self.settings.device is not None:
                props["DeviceIndex"] = self.settings.device
            integrator = openmm.VerletIntegrator(0.001)
            self._context = openmm.Context(system, integrator, platform, props)
        return self._context

    def execute(self, atoms: Atoms, workdir: Path) -> Any:
        from openmm import unit

        def run() -> tuple[float, np.ndarray]:
            try:
                context = self._get_context()
                context.setPositions(atoms.get_positions() / NM_A)
                state = context.getState(getEnergy=True, getForces=True)
            except Exception as exc:  # OpenMMException has no stable import path
                raise ProgramCrashed(f"OpenMM failed: {exc}", workdir=workdir) from exc
            e = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
            f = state.getForces(asNumpy=True).value_in_unit(
                unit.kilojoule_per_mole / unit.nanometer
            )
            return float(e), np.asarray(f, dtype=float)

        return call_limited(run, self.settings.timeout_s, workdir)

    def read_results(self, atoms: Atoms, workdir: Path, raw: Any) -> dict[str, Any]:
        e_kj, f_kj_nm = raw
        energy = e_kj * KJ_PER_MOL_EV
        return {"energy": energy, "forces": f_kj_nm * (KJ_PER_MOL_EV / NM_A)}
