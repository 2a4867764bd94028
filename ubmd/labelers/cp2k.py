"""CP2K labeler (Quickstep GPW, PBE, MOLOPT basis, GTH pseudopotentials).

The input comes from a template (``build_input``) plus ``overrides`` merged into it; the program
runs as ``launcher + command + -i ubmd.inp`` with stdout captured in ``cp2k.out``.
Retry variants (``retry_variant``): 1) more SCF steps, 2) the other solver (OT <-> diagonalization
with Broyden mixing), 3) diagonalization with half the mixing and Fermi-Dirac smearing.
"""

from __future__ import annotations

import functools
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any, Literal

from ase import Atoms
from pydantic import Field

from ubmd.labelers.base import Labeler, LabelerSettings
from ubmd.labelers.cp2k_input import (
    added_mos_for,
    box_for_molecule,
    find_entry,
    merge,
    names_for,
    render,
    scf_section,
    valence_of,
)
from ubmd.labelers.cp2k_output import read_cp2k_output
from ubmd.labelers.errors import (
    CalculationFailed,
    LabelerSetupError,
    MissingForces,
    OutputUnreadable,
    ProgramCrashed,
    SCFNotConverged,
)

INPUT_NAME = "ubmd.inp"
OUTPUT_NAME = "cp2k.out"


class CP2KSettings(LabelerSettings):
    """Settings of the CP2K labeler (energies in Ry for the grid cutoffs, as CP2K takes them)."""

    command: str = Field(
        "cp2k.psmp", pattern=r"\S", description='CP2K executable, e.g. "cp2k.psmp"'
    )
    launcher: str = Field("", description='prefix such as "mpirun -np 2" or "srun"')
    omp_num_threads: int = Field(1, ge=1)
    env: dict[str, str] = Field(default_factory=dict)
    data_dir: str = "/usr/share/cp2k"
    basis_file: str = "BASIS_MOLOPT"
    potential_file: str = "GTH_POTENTIALS"
    basis_set: str = "DZVP-MOLOPT-SR-GTH"
    basis_sets: dict[str, str] = Field(default_factory=dict, description="per-element basis")
    potential_family: str = "GTH-PBE"
    xc_functional: str = "PBE"
    cutoff_Ry: float = Field(400.0, gt=0)
    rel_cutoff_Ry: float = Field(50.0, gt=0)
    charge: int = 0
    multiplicity: int = Field(1, ge=1)
    scf_solver: Literal["ot", "diag"] = "ot"
    max_scf: int = Field(50, ge=1)
    outer_max_scf: int = Field(10, ge=1)
    eps_scf: float = Field(1e-6, gt=0)
    mixing_alpha: float = Field(0.4, gt=0, le=1)
    smearing_K: float = Field(0.0, ge=0)
    vacuum_A: float = Field(5.0, gt=0, description="padding around a non-periodic structure")
    require_stress: bool = True
    overrides: dict[str, Any] = Field(default_factory=dict)


def _cell_section(atoms: Atoms, *, periodic: bool, vacuum_A: float) -> tuple[dict[str, Any], Any]:
    """(CELL section, positions): the structure's own cell, or for a molecule a box with
    ``vacuum_A`` of padding and the positions moved into it."""
    if periodic:
        cell = atoms.cell.array
        return {
            "A": [float(x) for x in cell[0]],
            "B": [float(x) for x in cell[1]],
            "C": [float(x) for x in cell[2]],
            "PERIODIC": "XYZ",
        }, atoms.get_positions()
    lengths, positions = box_for_molecule(atoms, vacuum_A)
    return {"ABC": [float(x) for x in lengths], "PERIODIC": "NONE"}, positions


def _force_eval_section(
    dft: dict[str, Any], subsys: dict[str, Any], *, periodic: bool
) -> dict[str, Any]:
    """FORCE_EVAL around the DFT and SUBSYS sections: forces always, stress for a periodic
    cell (key order as CP2K users expect to read it)."""
    force_eval: dict[str, Any] = {"METHOD": "QS"}
    if periodic:
        force_eval["STRESS_TENSOR"] = "ANALYTICAL"
    force_eval["DFT"] = dft
    force_eval["SUBSYS"] = subsys
    force_eval["PRINT"] = {"FORCES": {"_": "ON"}}
    if periodic:
        force_eval["PRINT"]["STRESS_TENSOR"] = {"_": "ON"}
    return force_eval


@functools.lru_cache(maxsize=8)
def _cp2k_version(executable: str) -> str:
    try:
        out = subprocess.run(
            [executable, "--version"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
            stdin=subprocess.DEVNULL,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    for line in out.splitlines():
        if "CP2K version" in line:
            return line.strip()
    return ""


class CP2KLabeler(Labeler):
    """Real DFT single points with CP2K."""

    name = "cp2k"
    Settings = CP2KSettings
    settings: CP2KSettings

    # --- files and identity ------------------------------------------------------------
    def _data_file(self, name: str) -> Path:
        path = Path(name)
        return path if path.is_absolute() else Path(self.settings.data_dir) / path

    def argv(self) -> list[str]:
        s = self.settings
        return [*shlex.split(s.launcher), *shlex.split(s.command), "-i", INPUT_NAME]

    def _executable(self) -> str:
        return shlex.split(self.settings.command)[0]

    def code_version(self) -> str:
        # Only ask real CP2K binaries (cp2k.psmp, cp2k.ssmp, ...): a wrapper script given as
        # the command must not be run outside its work directory.
        exe = shutil.which(self._executable())
        if exe is None or not Path(exe).name.startswith("cp2k"):
            return ""
        return _cp2k_version(exe)

    def _kinds(self, atoms: Atoms) -> dict[str, tuple[str, str, int]]:
        """element -> (basis, potential, valence); raises LabelerSetupError if missing."""
        s = self.settings
        basis_path, pot_path = self._data_file(s.basis_file), self._data_file(s.potential_file)
        for label, path in (("basis", basis_path), ("potential", pot_path)):
            if not path.is_file():
                raise LabelerSetupError(
                    f"CP2K {label} file {path} does not exist; set data_dir / {label}_file"
                )
        kinds = {}
        for element in dict.fromkeys(atoms.get_chemical_symbols()):
            basis = s.basis_sets.get(element, s.basis_set)
            entry = find_entry(basis_path, element, basis)
            if entry is None:
                known = sorted({n[0] for n in names_for(basis_path, element)})
                raise LabelerSetupError(
                    f"no basis set {basis!r} for element {element} in {basis_path}; "
                    f"available for {element}: {known or 'none'}"
                )
            q = valence_of(entry)
            pots = [e[0] for e in names_for(pot_path, element)]
            prefix = f"{s.potential_family}-q"
            candidates = [p for p in pots if p.startswith(prefix)]
            potential = f"{prefix}{q}" if q is not None and f"{prefix}{q}" in pots else None
            if potential is None and q is None and candidates:
                potential = candidates[0]
            if potential is None:
                raise LabelerSetupError(
                    f"no {s.potential_family} potential"
                    f"{f' with {q} valence electrons' if q else ''} for element {element} "
                    f"in {pot_path}; available: {candidates or 'none'}"
                )
            kinds[element] = (basis, potential, int(potential.rsplit("-q", 1)[1]))
        return kinds

    def check(self, atoms: Atoms) -> None:
        s = self.settings
        if len(atoms) == 0:
            raise LabelerSetupError("empty structure: nothing to label")
        for token in (self._executable(), *shlex.split(s.launcher)[:1]):
            if shutil.which(token) is None:
                raise LabelerSetupError(
                    f"executable {token!r} not found on PATH; install it or set "
                    f"command/launcher (e.g. command='/path/to/cp2k.psmp')"
                )
        pbc = atoms.get_pbc()
        if pbc.any() and not pbc.all():
            raise LabelerSetupError(
                f"CP2K labeler supports fully periodic or non-periodic cells, got pbc={pbc.tolist()}"
            )
        if pbc.all() and atoms.cell.volume <= 1e-6:
            raise LabelerSetupError("periodic structure with a zero-volume cell")
        kinds = self._kinds(atoms)
        n_electrons = sum(kinds[sym][2] for sym in atoms.get_chemical_symbols()) - s.charge
        if (n_electrons + s.multiplicity - 1) % 2:
            raise LabelerSetupError(
                f"{n_electrons} valence electrons with multiplicity {s.multiplicity}: an odd "
                f"number of electrons needs an even multiplicity (set multiplicity=2) or a "
                f"charge"
            )

    # --- input -------------------------------------------------------------------------
    def build_input(self, atoms: Atoms) -> dict[str, Any]:
        """The full input tree (template + overrides) for ``atoms``."""
        s = self.settings
        kinds = self._kinds(atoms)
        periodic = bool(atoms.get_pbc().all())
        cell_section, positions = _cell_section(atoms, periodic=periodic, vacuum_A=s.vacuum_A)
        coords = [
            f"{sym} {x:.10f} {y:.10f} {z:.10f}"
            for sym, (x, y, z) in zip(atoms.get_chemical_symbols(), positions, strict=True)
        ]
        n_electrons = sum(kinds[sym][2] for sym in atoms.get_chemical_symbols()) - s.charge
        dft = self._dft_section(n_electrons, periodic=periodic)
        subsys: dict[str, Any] = {"CELL": cell_section, "COORD": {"_lines": coords}}
        for element, (basis, potential, _) in kinds.items():
            subsys[f"KIND {element}"] = {"BASIS_SET": basis, "POTENTIAL": potential}
        tree = {
            "GLOBAL": {"PROJECT": "ubmd", "RUN_TYPE": "ENERGY_FORCE", "PRINT_LEVEL": "LOW"},
            "FORCE_EVAL": _force_eval_section(dft, subsys, periodic=periodic),
        }
        return merge(tree, s.overrides)

    def _dft_section(self, n_electrons: int, *, periodic: bool) -> dict[str, Any]:
        """The DFT section: data files, charge and spin, grids, Poisson solver, SCF, XC."""
        s = self.settings
        return {
            "BASIS_SET_FILE_NAME": str(self._data_file(s.basis_file)),
            "POTENTIAL_FILE_NAME": str(self._data_file(s.potential_file)),
            "CHARGE": s.charge,
            "MULTIPLICITY": s.multiplicity,
            "UKS": s.multiplicity > 1,
            "MGRID": {"CUTOFF": s.cutoff_Ry, "REL_CUTOFF": s.rel_cutoff_Ry, "NGRIDS": 4},
            "QS": {"EPS_DEFAULT": 1e-12},
            "POISSON": (
                {"PERIODIC": "XYZ", "POISSON_SOLVER": "PERIODIC"}
                if periodic
                else {"PERIODIC": "NONE", "POISSON_SOLVER": "WAVELET"}
            ),
            "SCF": scf_section(
                solver=s.scf_solver,
                max_scf=s.max_scf,
                outer_max_scf=s.outer_max_scf,
                eps_scf=s.eps_scf,
                mixing_alpha=s.mixing_alpha,
                smearing_K=s.smearing_K,
                added_mos=added_mos_for(n_electrons),
            ),
            "XC": {f"XC_FUNCTIONAL {s.xc_functional}": {}},
        }

    def write_input(self, atoms: Atoms, workdir: Path) -> None:
        (workdir / INPUT_NAME).write_text(render(self.build_input(atoms)) + "\n")

    # --- run and read ------------------------------------------------------------------
    def execute(self, atoms: Atoms, workdir: Path) -> Any:
        env = {"OMP_NUM_THREADS": str(self.settings.omp_num_threads), **self.settings.env}
        return self.run_external(self.argv(), workdir, env=env, stdout_name=OUTPUT_NAME)

    def read_results(self, atoms: Atoms, workdir: Path, raw: Any) -> dict[str, Any]:
        outcome = raw
        path = workdir / OUTPUT_NAME
        out = read_cp2k_output(path)
        error = self._failure(out, atoms, path.name, outcome.returncode)
        if error is not None:
            raise error.with_run(outcome, workdir)
        stress = out.stress_ase if atoms.get_pbc().all() else None
        energy = out.energy_eV
        return {
            "energy": energy,
            "free_energy": energy,
            "forces": out.forces_eV_A,
            "stress": stress,
        }

    def _failure(
        self, out: Any, atoms: Atoms, name: str, returncode: int | None
    ) -> CalculationFailed | None:
        """Why the run in output file ``name`` gave no usable label (None if it did)."""
        if returncode != 0:
            why = f"cp2k exited with status {returncode}"
            if out.abort_message:
                why += f" ({out.abort_message})"
            return ProgramCrashed(why)
        if not out.ended_normally:
            return OutputUnreadable(f"{name} is truncated (no 'PROGRAM ENDED AT')")
        if not out.scf_converged:
            return SCFNotConverged("CP2K reports 'SCF run NOT converged'")
        if out.energy_Ha is None:
            return OutputUnreadable(f"no total energy in {name}")
        if out.forces_Ha_bohr is None:
            return MissingForces(f"no ATOMIC FORCES block in {name}")
        periodic = atoms.get_pbc().all()
        if periodic and out.stress_ase is None and self.settings.require_stress:
            return OutputUnreadable(f"periodic cell but no stress tensor in {name}")
        return None

    # --- retries -----------------------------------------------------------------------
    def retry_variant(self, attempt: int, error: CalculationFailed) -> Labeler | None:
        s = self.settings
        other = "diag" if s.scf_solver == "ot" else "ot"
        if attempt == 2:
            return self.with_settings(max_scf=2 * s.max_scf, mixing_alpha=s.mixing_alpha / 2)
        if attempt == 3:
            return self.with_settings(scf_solver=other)
        return self.with_settings(
            scf_solver="diag",
            mixing_alpha=min(s.mixing_alpha, 0.1),
            smearing_K=s.smearing_K or 300.0,
            max_scf=max(s.max_scf, 200),
        )
