"""Make ``ala2_xtb_300K.extxyz``: GFN2-xTB-labelled alanine dipeptide frames from 300 K MD.

Langevin MD (0.5 fs, 300 K, friction 0.01/fs) in vacuum with GFN2-xTB (tblite) starting
from the 22-atom structure in ``alanine-dipeptide.pdb``. After equilibration, a frame
is saved every ``--stride`` steps with its GFN2-xTB energy and forces. Elements come
from the PDB atom names (first letter after stripping leading digits), because the
PDB has no element column.

Run: ``OMP_NUM_THREADS=1 python data/ala2/make_xtb_dataset.py`` (about 2 minutes).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

DEFAULT_PDB = Path("/work/shared/data/ala2/alanine-dipeptide.pdb")


def read_pdb(path: Path):
    """Read the 22 atoms of the PDB into ase.Atoms, deriving elements from atom names."""
    from ase import Atoms

    symbols, positions = [], []
    for line in path.read_text().splitlines():
        if line.startswith(("ATOM", "HETATM")):
            name = line[12:16].strip().lstrip("0123456789")
            symbols.append(name[0])
            positions.append([float(line[30:38]), float(line[38:46]), float(line[46:54])])
    if not symbols:
        raise ValueError(f"{path}: no ATOM records found")
    return Atoms(symbols=symbols, positions=positions)


def main() -> None:
    from ase import units
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
    from tblite.ase import TBLite

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pdb", type=Path, default=DEFAULT_PDB)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).with_name("ala2_xtb_300K.extxyz")
    )
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--stride", type=int, default=20)
    parser.add_argument("--equil-steps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    atoms = read_pdb(args.pdb)
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    rng = np.random.default_rng(args.seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=rng)
    Stationary(atoms)
    dyn = Langevin(
        atoms, timestep=0.5 * units.fs, temperature_K=300, friction=0.01 / units.fs, rng=rng
    )
    dyn.run(args.equil_steps)
    frames = []
    for k in range(args.frames):
        dyn.run(args.stride)
        frame = atoms.copy()
        frame.calc = SinglePointCalculator(
            frame, energy=atoms.get_potential_energy(), forces=atoms.get_forces()
        )
        frame.info["md_step"] = args.equil_steps + (k + 1) * args.stride
        frames.append(frame)
    write(args.out, frames, format="extxyz")
    print(f"wrote {len(frames)} frames to {args.out}")


if __name__ == "__main__":
    main()
