"""VASP input writing (INCAR, KPOINTS, POSCAR through ASE, POTCAR from VASP_PP_PATH) and parsing.

Parsing prefers ``vasprun.xml`` (ASE's ``vasp-xml`` reader, which also handles VASP 5's garbage
``e_0_energy``) and falls back to ``OUTCAR``.  Electronic non-convergence is not flagged by VASP
itself (OUTCAR may even say "EDIFF is reached"): we compare the number of SCF steps of the last
ionic step with NELM; reaching NELM means not converged (pymatgen uses the same rule).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from ubmd.labelers.errors import LabelerSetupError, OutputUnreadable


def species_order(atoms: Atoms) -> tuple[list[str], np.ndarray]:
    """Species in first-appearance order and the permutation grouping atoms by species.

    POSCAR lists atoms species by species and POTCAR follows the same order; ``perm`` sorts the
    structure that way (stable), ``np.argsort(perm)`` undoes it for forces.
    """
    symbols = atoms.get_chemical_symbols()
    species = list(dict.fromkeys(symbols))
    rank = {s: i for i, s in enumerate(species)}
    perm = np.array(sorted(range(len(symbols)), key=lambda i: (rank[symbols[i]], i)), dtype=int)
    return species, perm


def potcar_paths(
    species: list[str], *, pp_path: Path, pp_set: str, setups: dict[str, str]
) -> list[Path]:
    """POTCAR file of each species; raises LabelerSetupError naming what is missing."""
    base = pp_path / pp_set
    if not base.is_dir():
        raise LabelerSetupError(
            f"pseudopotential set {base} does not exist; set VASP_PP_PATH (or pp_path) to the "
            f"directory holding {pp_set}/"
        )
    paths = []
    for sp in species:
        candidate = base / setups.get(sp, sp) / "POTCAR"
        if not candidate.is_file():
            raise LabelerSetupError(
                f"no POTCAR for {sp} at {candidate}; choose a setup with setups={{'{sp}': ...}}"
            )
        paths.append(candidate)
    return paths


def format_incar(params: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return ".TRUE." if v else ".FALSE."
        if isinstance(v, list | tuple):
            return " ".join(fmt(x) for x in v)
        return str(v)

    return "".join(f"{k.upper()} = {fmt(v)}\n" for k, v in params.items() if v is not None)


def kpoint_mesh(atoms: Atoms, kspacing_invA: float) -> tuple[int, int, int]:
    """VASP's KSPACING rule: N_i = max(1, ceil(|b_i| 2π / kspacing))."""
    recip = atoms.cell.reciprocal()  # rows b_i without the 2π
    n = [max(1, math.ceil(np.linalg.norm(b) * 2 * math.pi / kspacing_invA)) for b in recip]
    return (n[0], n[1], n[2])


def format_kpoints(mesh: tuple[int, int, int], *, gamma: bool = True) -> str:
    centring = "Gamma" if gamma else "Monkhorst-Pack"
    return f"ubmd k-point mesh\n0\n{centring}\n{mesh[0]} {mesh[1]} {mesh[2]}\n0 0 0\n"


def write_inputs(
    atoms: Atoms,
    workdir: Path,
    *,
    incar: dict[str, Any],
    mesh: tuple[int, int, int],
    potcars: list[Path],
    perm: np.ndarray,
) -> None:
    """Write INCAR, KPOINTS, POSCAR (atoms permuted by ``perm``) and the concatenated POTCAR."""
    import ase.io

    (workdir / "INCAR").write_text(format_incar(incar))
    (workdir / "KPOINTS").write_text(format_kpoints(mesh))
    ase.io.write(workdir / "POSCAR", atoms[perm], format="vasp", direct=True)
    with open(workdir / "POTCAR", "wb") as out:
        for path in potcars:
            out.write(path.read_bytes())


@dataclass
class VaspOutput:
    energy: float  # eV, σ -> 0 extrapolated (what ASE calls the potential energy)
    free_energy: float  # eV, Mermin free energy (force-consistent)
    forces: np.ndarray  # (N, 3) eV/Å, in the file's (POSCAR) order
    stress: np.ndarray | None  # ASE Voigt eV/Å^3, positive = tensile
    n_scf: int  # SCF steps of the last ionic step
    nelm: int | None
    source: str  # "vasprun.xml" or "OUTCAR"

    @property
    def scf_converged(self) -> bool:
        return self.nelm is None or self.n_scf < self.nelm


_NELM_SEP_RE = re.compile(
    r'<separator name="electronic convergence"\s*>.*?<i type="int" name="NELM">\s*(\d+)', re.S
)
_NELM_RE = re.compile(r'name="NELM">\s*(\d+)')


def _from_atoms(atoms: Atoms, path: Path, n_scf: int, nelm: int | None) -> VaspOutput:
    calc = atoms.calc
    if calc is None or "energy" not in calc.results or "forces" not in calc.results:
        raise OutputUnreadable(f"{path.name} holds no finished single point", workdir=path.parent)
    stress = calc.results.get("stress")
    return VaspOutput(
        energy=float(atoms.get_potential_energy()),
        free_energy=float(atoms.get_potential_energy(force_consistent=True)),
        forces=np.asarray(atoms.get_forces(), dtype=float),
        stress=None if stress is None else np.asarray(stress, dtype=float).reshape(-1)[:6],
        n_scf=n_scf,
        nelm=nelm,
        source=path.name,
    )


def read_vasprun(path: Path) -> VaspOutput:
    import ase.io

    text = path.read_text(errors="replace")
    if "</modeling>" not in text:
        raise OutputUnreadable(f"{path} is truncated (no </modeling>)", workdir=path.parent)
    m = _NELM_SEP_RE.search(text) or _NELM_RE.search(text)
    nelm = int(m.group(1)) if m else None
    last = text.rfind("<calculation>")
    n_scf = text[last:].count("<scstep>") if last >= 0 else 0
    try:
        atoms = ase.io.read(path, format="vasp-xml", index=-1)
    except Exception as exc:  # ElementTree/ValueError/IndexError from a damaged file
        raise OutputUnreadable(f"cannot parse {path}: {exc}", workdir=path.parent) from exc
    return _from_atoms(atoms, path, n_scf, nelm)


def read_outcar(path: Path) -> VaspOutput:
    import ase.io

    text = path.read_text(errors="replace")
    if "General timing and accounting" not in text:
        raise OutputUnreadable(f"{path} is truncated (run did not finish)", workdir=path.parent)
    m = re.search(r"NELM\s*=\s*(\d+)", text)
    nelm = int(m.group(1)) if m else None
    steps = re.findall(r"Iteration\s+(\d+)\(\s*(\d+)\)", text)
    last_ionic = steps[-1][0] if steps else None
    n_scf = max((int(e) for i, e in steps if i == last_ionic), default=0)
    try:
        atoms = ase.io.read(path, format="vasp-out", index=-1)
    except Exception as exc:
        raise OutputUnreadable(f"cannot parse {path}: {exc}", workdir=path.parent) from exc
    return _from_atoms(atoms, path, n_scf, nelm)


def read_vasp_output(workdir: Path) -> VaspOutput:
    """Results of a VASP run in ``workdir``: vasprun.xml if present, else OUTCAR."""
    workdir = Path(workdir)
    if (workdir / "vasprun.xml").is_file():
        return read_vasprun(workdir / "vasprun.xml")
    if (workdir / "OUTCAR").is_file():
        return read_outcar(workdir / "OUTCAR")
    raise OutputUnreadable(f"neither vasprun.xml nor OUTCAR in {workdir}", workdir=workdir)
