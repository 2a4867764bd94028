"""Held-out 300 K alanine dipeptide frames labelled with Amber ff96 (vacuum) through OpenMM.

Langevin MD with OpenMM on the shipped topology (0.5 fs, 300 K, friction 1/ps), 20 ps of
equilibration, then a frame every 200 steps; each frame is labelled with ubmd's Amber labeler
(energy in eV, forces in eV/Å). Reproducible with the seed below:

    python data/ala2/make_amber_testset.py  # writes data/ala2/ala2_amber_300K.extxyz
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
N_FRAMES = 300
STRIDE = 200
SEED = 2024


def main() -> None:
    import openmm
    from openmm import app, unit

    from ubmd.labelers import make_labeler
    from ubmd.labelers.amber import topology_atoms
    from ubmd.store.convert import write_extxyz

    prmtop = app.AmberPrmtopFile(str(HERE / "alanine-dipeptide.prmtop"))
    inpcrd = app.AmberInpcrdFile(str(HERE / "alanine-dipeptide.crd"))
    system = prmtop.createSystem(nonbondedMethod=app.NoCutoff, constraints=None)
    integrator = openmm.LangevinMiddleIntegrator(
        300 * unit.kelvin, 1 / unit.picosecond, 0.5 * unit.femtoseconds
    )
    integrator.setRandomNumberSeed(SEED)
    sim = app.Simulation(
        prmtop.topology, system, integrator, openmm.Platform.getPlatformByName("Reference")
    )
    sim.context.setPositions(inpcrd.positions)
    sim.minimizeEnergy()
    sim.context.setVelocitiesToTemperature(300 * unit.kelvin, SEED)
    sim.step(40_000)
    labeler = make_labeler("amber", prmtop=str(HERE / "alanine-dipeptide.prmtop"))
    frames = []
    for k in range(N_FRAMES):
        sim.step(STRIDE)
        pos = (
            sim.context.getState(getPositions=True)
            .getPositions(asNumpy=True)
            .value_in_unit(unit.angstrom)
        )
        atoms = topology_atoms(HERE / "alanine-dipeptide.prmtop", np.asarray(pos))
        result = labeler.label(atoms, workdir=HERE / ".amber_work")
        labelled = result.to_atoms()
        labelled.info = {"md_step": 40_000 + (k + 1) * STRIDE, "temperature_K": 300.0}
        frames.append(labelled)
    write_extxyz(HERE / "ala2_amber_300K.extxyz", frames)
    print(f"wrote {len(frames)} frames")


if __name__ == "__main__":
    main()
