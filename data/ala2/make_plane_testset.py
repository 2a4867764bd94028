"""Held-out alanine dipeptide frames spanning the whole Ramachandran plane, labelled twice.

Plain 300 K MD stays in one or two basins; a biased campaign is meant to be good where it never
goes, so its test set must reach there too. For each point of a 12 x 12 grid over (phi, psi)
(30 degree spacing, offset by 15 degrees) Langevin MD at 600 K with the Amber ff96 topology
(vacuum, OpenMM) is run with harmonic restraints holding the two backbone dihedrals near the
grid point (k = 200 kJ/mol/rad^2, so frames scatter by about +-10 degrees around it). After
2 ps at each grid point, ``FRAMES_PER_POINT`` frames are taken 0.5 ps apart. The restraint is
only for sampling: each frame is then labelled, unrestrained, with

- GFN2-xTB (tblite), written to ``ala2_xtb_plane.extxyz``, and
- Amber ff96 (ubmd's Amber labeler), written to ``ala2_amber_plane.extxyz``.

Both files hold the same geometries in the same order. Frames whose GFN2-xTB SCF fails are
dropped from both. Reproducible with the seed below (about 2 minutes):

    OMP_NUM_THREADS=1 python data/ala2/make_plane_testset.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
GRID = 12
FRAMES_PER_POINT = 2
TEMPERATURE_K = 600.0
K_RESTRAINT = 200.0  # kJ/mol/rad^2
SEED = 600


def _restraint(dihedrals, phi0_deg, psi0_deg):
    import openmm

    force = openmm.CustomTorsionForce("0.5*k*min(dtheta, 2*pi-dtheta)^2; dtheta=abs(theta-theta0)")
    force.addGlobalParameter("pi", np.pi)
    force.addPerTorsionParameter("k")
    force.addPerTorsionParameter("theta0")
    for quad, target in zip(dihedrals, (phi0_deg, psi0_deg), strict=True):
        force.addTorsion(*[int(i) for i in quad], [K_RESTRAINT, np.radians(target)])
    return force


def sample_geometries() -> tuple[list[np.ndarray], list[tuple[float, float]]]:
    """(positions in Å, (phi0, psi0) grid point) of every frame."""
    import openmm
    from openmm import app, unit

    from ubmd.campaign.ramachandran import backbone_indices
    from ubmd.labelers.amber import topology_atoms

    prmtop_path = HERE / "alanine-dipeptide.prmtop"
    prmtop = app.AmberPrmtopFile(str(prmtop_path))
    inpcrd = app.AmberInpcrdFile(str(HERE / "alanine-dipeptide.crd"))
    quads = backbone_indices(topology_atoms(prmtop_path).numbers)
    centres = -180.0 + (np.arange(GRID) + 0.5) * 360.0 / GRID
    out, where = [], []
    for a, phi0 in enumerate(centres):
        for b, psi0 in enumerate(centres):
            system = prmtop.createSystem(nonbondedMethod=app.NoCutoff, constraints=None)
            system.addForce(_restraint(quads, phi0, psi0))
            integrator = openmm.LangevinMiddleIntegrator(
                TEMPERATURE_K * unit.kelvin, 1 / unit.picosecond, 0.5 * unit.femtoseconds
            )
            integrator.setRandomNumberSeed(SEED + a * GRID + b)
            sim = app.Simulation(
                prmtop.topology, system, integrator, openmm.Platform.getPlatformByName("Reference")
            )
            sim.context.setPositions(inpcrd.positions)
            sim.minimizeEnergy(maxIterations=500)  # pulls the backbone to the grid point
            sim.context.setVelocitiesToTemperature(TEMPERATURE_K * unit.kelvin, SEED + a)
            sim.step(4000)
            for _ in range(FRAMES_PER_POINT):
                sim.step(1000)
                pos = sim.context.getState(getPositions=True).getPositions(asNumpy=True)
                out.append(np.asarray(pos.value_in_unit(unit.angstrom), dtype=float))
                where.append((float(phi0), float(psi0)))
    return out, where


def main() -> None:
    from tblite.ase import TBLite

    from ubmd.labelers import make_labeler
    from ubmd.labelers.amber import topology_atoms
    from ubmd.store.convert import write_extxyz

    prmtop = HERE / "alanine-dipeptide.prmtop"
    geometries, where = sample_geometries()
    amber = make_labeler("amber", prmtop=str(prmtop))
    xtb_frames, amber_frames = [], []
    for k, (pos, (phi0, psi0)) in enumerate(zip(geometries, where, strict=True)):
        atoms = topology_atoms(prmtop, pos)
        info = {"grid_phi_deg": phi0, "grid_psi_deg": psi0, "temperature_K": TEMPERATURE_K}
        calc_atoms = atoms.copy()
        calc_atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
        try:
            energy = calc_atoms.get_potential_energy()
            forces = calc_atoms.get_forces()
        except Exception as exc:  # an SCF that does not converge: drop the frame from both
            print(f"frame {k}: GFN2-xTB failed ({exc}); dropped")
            continue
        from ase.calculators.singlepoint import SinglePointCalculator

        labelled = atoms.copy()
        labelled.calc = SinglePointCalculator(labelled, energy=energy, forces=forces)
        labelled.info = dict(info)
        xtb_frames.append(labelled)
        amber_atoms = amber.label(atoms, workdir=HERE / ".amber_work").to_atoms()
        amber_atoms.info = dict(info)
        amber_frames.append(amber_atoms)
    write_extxyz(HERE / "ala2_xtb_plane.extxyz", xtb_frames)
    write_extxyz(HERE / "ala2_amber_plane.extxyz", amber_frames)
    print(f"wrote {len(xtb_frames)} frames to ala2_xtb_plane.extxyz and ala2_amber_plane.extxyz")


if __name__ == "__main__":
    main()
