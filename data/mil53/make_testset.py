"""Held-out MIL-53(Al) frames spanning both pores, labelled with GFN1-xTB (energy, forces, stress).

Independent of any campaign: for each start structure (closed pore, V = 802 Å^3, and large pore,
V = 1427 Å^3) ``FRAMES_PER_PORE`` frames with a random symmetric strain (each component drawn
from N(0, 0.015^2), so volumes scatter by about ±2.5 %) and random atomic displacements
(N(0, 0.02^2) Å per coordinate). Each is labelled with GFN1-xTB (tblite), the reference of
``workflows/mil53_npt``. Frames whose SCF fails are dropped. (The two files' cells are set up
along different axes, so no interpolated path between the pores is drawn.)

    OMP_NUM_THREADS=1 python data/mil53/make_testset.py    # writes data/mil53/mil53_gfn1_test.extxyz
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
FRAMES_PER_PORE = 24
STRAIN = 0.015
RATTLE_A = 0.02
SEED = 53


def _strained(atoms, rng):
    eps = rng.normal(0.0, STRAIN, (3, 3))
    eps = 0.5 * (eps + eps.T)
    out = atoms.copy()
    out.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
    out.positions += rng.normal(0.0, RATTLE_A, out.positions.shape)
    return out


def main() -> None:
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import read
    from tblite.ase import TBLite

    from ubmd.store.convert import write_extxyz

    rng = np.random.default_rng(SEED)
    cp = read(HERE / "mil53al_cp_76atoms.extxyz")
    lp = read(HERE / "mil53al_lp_76atoms.extxyz")
    frames = [_strained(cp, rng) for _ in range(FRAMES_PER_PORE)]
    frames += [_strained(lp, rng) for _ in range(FRAMES_PER_PORE)]
    out = []
    for k, atoms in enumerate(frames):
        atoms.info = {}
        calc_atoms = atoms.copy()
        calc_atoms.calc = TBLite(method="GFN1-xTB", verbosity=0)
        try:
            e, f, s = (
                calc_atoms.get_potential_energy(),
                calc_atoms.get_forces(),
                calc_atoms.get_stress(),
            )
        except Exception as exc:  # an SCF that does not converge: drop the frame
            print(f"frame {k}: GFN1-xTB failed ({exc}); dropped")
            continue
        atoms.calc = SinglePointCalculator(atoms, energy=e, forces=f, stress=s)
        out.append(atoms)
        print(f"frame {k}: V = {atoms.get_volume():.0f} Å^3, E = {e:.3f} eV", flush=True)
    write_extxyz(HERE / "mil53_gfn1_test.extxyz", out)
    print(f"wrote {len(out)} frames to mil53_gfn1_test.extxyz")


if __name__ == "__main__":
    main()
