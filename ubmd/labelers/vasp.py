"""VASP labeler: inputs through ASE (POSCAR) plus our INCAR/KPOINTS/POTCAR writers, a
configurable launch command, results from vasprun.xml (OUTCAR as fallback).

Atoms are grouped by species for POSCAR/POTCAR and forces are put back in the caller's order.
Retry variants (``retry_variant``): ALGO Normal -> All -> Damped (with TIME 0.5), NELM doubled
and smaller mixing (AMIX 0.1, BMIX 0.01) on the last one.
"""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from pydantic import Field

from ubmd.labelers.base import Labeler, LabelerSettings
from ubmd.labelers.errors import (
    CalculationFailed,
    LabelerSetupError,
    ProgramCrashed,
    SCFNotConverged,
)
from ubmd.labelers.vasp_io import (
    kpoint_mesh,
    potcar_paths,
    read_vasp_output,
    species_order,
    write_inputs,
)

DEFAULT_INCAR: dict[str, Any] = {
    "PREC": "Accurate",
    "ENCUT": 520,
    "EDIFF": 1e-6,
    "NELM": 100,
    "ALGO": "Normal",
    "ISMEAR": 0,
    "SIGMA": 0.05,
    "IBRION": -1,
    "NSW": 0,
    "ISIF": 2,  # ISIF=2 still computes the stress tensor
    "LREAL": False,
    "LWAVE": False,
    "LCHARG": False,
}


class VaspSettings(LabelerSettings):
    command: str = Field("vasp_std", pattern=r"\S", description='VASP executable, e.g. "vasp_std"')
    launcher: str = Field("", description='prefix such as "mpirun -np 16" or "srun"')
    omp_num_threads: int = Field(1, ge=1)
    env: dict[str, str] = Field(default_factory=dict)
    pp_path: str | None = Field(None, description="defaults to $VASP_PP_PATH")
    pp_set: str = "potpaw_PBE"
    setups: dict[str, str] = Field(
        default_factory=dict, description="element -> POTCAR directory, e.g. {'Zn': 'Zn_pv'}"
    )
    incar: dict[str, Any] = Field(default_factory=dict, description="INCAR overrides")
    kspacing_invA: float = Field(0.25, gt=0, description="k-point spacing, 2π/Å like KSPACING")
    kpoints: tuple[int, int, int] | None = Field(None, description="explicit Γ-centred mesh")


class VaspLabeler(Labeler):
    """DFT single points with VASP (periodic cells only)."""

    name = "vasp"
    Settings = VaspSettings
    settings: VaspSettings

    def argv(self) -> list[str]:
        return [*shlex.split(self.settings.launcher), *shlex.split(self.settings.command)]

    def incar(self) -> dict[str, Any]:
        """Default INCAR with the user's overrides (keys case-insensitive; None removes)."""
        params = dict(DEFAULT_INCAR)
        for key, value in self.settings.incar.items():
            params.pop(key.upper(), None)
            if value is not None:
                params[key.upper()] = value
        return params

    def _pp_path(self) -> Path:
        path = self.settings.pp_path or os.environ.get("VASP_PP_PATH")
        if not path:
            raise LabelerSetupError("no pseudopotentials: set VASP_PP_PATH or pp_path")
        return Path(path)

    def check(self, atoms: Atoms) -> None:
        if len(atoms) == 0:
            raise LabelerSetupError("empty structure: nothing to label")
        for token in (
            *shlex.split(self.settings.launcher)[:1],
            shlex.split(self.settings.command)[0],
        ):
            if shutil.which(token) is None:
                raise LabelerSetupError(
                    f"executable {token!r} not found on PATH; set command/launcher "
                    f"(e.g. command='/opt/vasp/bin/vasp_std')"
                )
        if not atoms.get_pbc().all() or atoms.cell.volume <= 1e-6:
            raise LabelerSetupError(
                "VASP needs a periodic cell with a volume; put the molecule in a box first"
            )
        species, _ = species_order(atoms)
        potcar_paths(
            species,
            pp_path=self._pp_path(),
            pp_set=self.settings.pp_set,
            setups=self.settings.setups,
        )

    def write_input(self, atoms: Atoms, workdir: Path) -> None:
        species, perm = species_order(atoms)
        potcars = potcar_paths(
            species,
            pp_path=self._pp_path(),
            pp_set=self.settings.pp_set,
            setups=self.settings.setups,
        )
        mesh = self.settings.kpoints or kpoint_mesh(atoms, self.settings.kspacing_invA)
        write_inputs(atoms, workdir, incar=self.incar(), mesh=mesh, potcars=potcars, perm=perm)

    def execute(self, atoms: Atoms, workdir: Path) -> Any:
        env = {"OMP_NUM_THREADS": str(self.settings.omp_num_threads), **self.settings.env}
        return self.run_external(self.argv(), workdir, env=env, stdout_name="vasp.out")

    def read_results(self, atoms: Atoms, workdir: Path, raw: Any) -> dict[str, Any]:
        outcome = raw
        if outcome.returncode != 0:
            why = f"vasp exited with status {outcome.returncode}"
            raise ProgramCrashed(why).with_run(outcome, workdir)
        try:
            out = read_vasp_output(workdir)
        except CalculationFailed as exc:
            exc.with_run(outcome, workdir)
            raise
        if not out.scf_converged:
            raise SCFNotConverged(
                f"electronic SCF not converged: {out.n_scf} steps = NELM ({out.nelm})"
            ).with_run(outcome, workdir)
        _, perm = species_order(atoms)
        forces = np.empty_like(out.forces)
        forces[perm] = out.forces  # file row k is atom perm[k]
        return {
            "energy": out.energy,
            "free_energy": out.free_energy,
            "forces": forces,
            "stress": out.stress,
        }

    def retry_variant(self, attempt: int, error: CalculationFailed) -> Labeler | None:
        incar = self.incar()
        nelm = int(incar.get("NELM", 60))
        if attempt == 2:
            changes = {"ALGO": "All", "NELM": 2 * nelm}
        else:
            changes = {"ALGO": "Damped", "TIME": 0.5, "AMIX": 0.1, "BMIX": 0.01, "NELM": 2 * nelm}
        return self.with_settings(incar={**self.settings.incar, **changes})
