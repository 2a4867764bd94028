"""Long NPT run of EMT copper: the mean instantaneous pressure against the barostat target.

Block averages give the standard error; the last line prints mean, error and target.
Run: OMP_NUM_THREADS=1 python tests/benchmarks/npt_pressure.py [--timestep-fs 4] [--steps 6000]
"""

from __future__ import annotations

import argparse

import numpy as np
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT

from ubmd.md.forcefield import ASEForceField
from ubmd.md.integrators import BarostatConfig, initialize, npt_step
from ubmd.md.state import make_state


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--timestep-fs", type=float, default=4.0)
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--mode", default="anisotropic", choices=["anisotropic", "isotropic"])
    ap.add_argument("--target-GPa", type=float, default=2.0)
    args = ap.parse_args()
    state = make_state([bulk("Cu", cubic=True).repeat(2)], temperature_K=300, seed=3)
    ff = ASEForceField(EMT())
    initialize(state, ff, stress=True)
    baro = BarostatConfig(mode=args.mode, time_fs=100.0, compressibility_per_GPa=0.01)
    p, temps = [], []
    for step in range(args.steps):
        npt_step(state, ff, timestep_fs=args.timestep_fs, temperature_K=300,
                 pressure_eV_A3=args.target_GPa * units.GPa, friction_per_fs=0.02,
                 barostat=baro)  # fmt: skip
        if step >= 300:  # equilibration
            p.append(float(state.pressure()[0]) / units.GPa)
            temps.append(float(state.temperature()[0]))
    p = np.array(p)
    blocks = p[: len(p) // 20 * 20].reshape(20, -1).mean(1)
    se = blocks.std(ddof=1) / np.sqrt(len(blocks))
    print(f"EMT Cu, 32 atoms, {args.mode}, {args.timestep_fs} fs, {args.steps} steps, "
          f"mean T {np.mean(temps):.1f} K")  # fmt: skip
    print(f"mean pressure {p.mean():.3f} +- {se:.3f} GPa (target {args.target_GPa} GPa)")


if __name__ == "__main__":
    main()
