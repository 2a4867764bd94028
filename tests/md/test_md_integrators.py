"""Integrators: NVE vs ASE, Langevin temperature distribution, NPT pressure, batching."""

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.cluster import Icosahedron
from ase.md.verlet import VelocityVerlet
from md_helpers import LJModel

from ubmd.md.bias import BiasConfig
from ubmd.md.forcefield import ASEForceField
from ubmd.md.integrators import BarostatConfig, initialize, langevin_step, npt_step, nve_step
from ubmd.md.schedule import Constant, LinearRamp, as_schedule
from ubmd.md.state import make_state, state_to_atoms


def _cu(seed=1):
    atoms = bulk("Cu", cubic=True).repeat(2)
    atoms.rattle(0.05, seed=seed)
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(len(atoms), 3)) * np.sqrt(units.kB * 300 / atoms.get_masses())[:, None]
    atoms.set_velocities(v)
    return atoms


def test_nve_follows_ase_velocity_verlet_and_conserves_energy():
    atoms = _cu()
    ref = atoms.copy()
    ref.calc = EMT()
    state = make_state([atoms], temperature_K=None)
    ff = ASEForceField(EMT())
    initialize(state, ff)
    dyn = VelocityVerlet(ref, timestep=2.0 * units.fs)
    for _ in range(30):
        nve_step(state, ff, timestep_fs=2.0)
        dyn.run(1)
    np.testing.assert_allclose(state.positions.numpy(), ref.positions, atol=1e-10)
    np.testing.assert_allclose(state.velocities.numpy(), ref.get_velocities(), atol=1e-10)
    e0 = float(state.energy[0] + state.kinetic_energy()[0])
    totals = []
    for _ in range(200):
        nve_step(state, ff, timestep_fs=2.0)
        totals.append(float(state.energy[0] + state.kinetic_energy()[0]))
    ke_scale = 1.5 * len(atoms) * units.kB * 300
    assert abs(totals[-1] - e0) < 0.01 * ke_scale  # no drift
    assert np.ptp(totals) < 0.05 * ke_scale  # bounded fluctuation


def test_langevin_reproduces_kinetic_energy_distribution():
    """KE of N atoms at T follows Gamma(3N/2, kT): mean 3N/2 kT, variance 3N/2 (kT)^2."""
    torch.manual_seed(0)
    cluster = Icosahedron("Ar", 2)
    n, T, R = len(cluster), 25.0, 12
    state = make_state([cluster] * R, temperature_K=T, seed=5)
    model = LJModel()
    initialize(state, model)
    kes = []
    for step in range(1500):
        langevin_step(state, model, timestep_fs=5.0, temperature_K=T, friction_per_fs=0.02)
        if step >= 200 and step % 5 == 0:
            kes.append(state.kinetic_energy().numpy())
    kes = np.array(kes)  # (samples, R): replicas are independent
    kT = units.kB * T
    mean_th, var_th = 1.5 * n * kT, 1.5 * n * kT**2
    rep_mean, rep_var = kes.mean(0), kes.var(0)
    se_mean = rep_mean.std(ddof=1) / np.sqrt(R)
    se_var = rep_var.std(ddof=1) / np.sqrt(R)
    assert abs(rep_mean.mean() - mean_th) < 4 * se_mean + 0.01 * mean_th
    assert abs(rep_var.mean() - var_th) < 4 * se_var + 0.02 * var_th
    assert se_mean < 0.05 * mean_th  # the check has teeth


@pytest.fixture
def one_thread():
    """One torch thread (other suites share the machine; many small ops run no faster on
    more), restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _standard_error(means: np.ndarray) -> float:
    """Standard error of the overall mean, from independent block means."""
    return float(means.std(ddof=1) / np.sqrt(means.size))


@pytest.mark.parametrize("mode", ["isotropic", "anisotropic"])
def test_npt_mean_pressure_is_the_target(mode, one_thread):
    """Stochastic cell rescaling samples the isothermal-isobaric ensemble, where the mean
    instantaneous pressure (virial and kinetic) is the target. Eight independent replicas of
    108 LJ argon atoms for 1000 steps give a standard error of ~0.002 GPa on a 0.5 GPa target
    (block averages), so the check resolves a 1 % error; leaving the kinetic term out of the
    barostat's pressure, for one, shifts the mean by ~0.03 GPa."""
    target_GPa, temperature_K, cutoff, n_steps, equilibration = 0.5, 60.0, 5.0, 1000, 200
    rng = np.random.default_rng(0)
    starts = []
    for r in range(8):  # each from its own lattice constant: no transient shared by all
        atoms = bulk("Ar", "fcc", a=float(rng.uniform(5.2, 5.5)), cubic=True).repeat(3)
        atoms.rattle(0.05, seed=r)
        starts.append(atoms)
    state = make_state(starts, temperature_K=temperature_K, seed=1)
    model = LJModel(cutoff=cutoff)
    initialize(state, model, stress=True)
    baro = BarostatConfig(mode=mode, time_fs=100.0, compressibility_per_GPa=0.5)
    p, vols, width = [], [], np.inf
    for step in range(n_steps):
        npt_step(state, model, timestep_fs=4.0, temperature_K=temperature_K,
                 pressure_eV_A3=target_GPa * units.GPa, friction_per_fs=0.02, barostat=baro)  # fmt: skip
        cell = state.cell
        faces = torch.linalg.cross(cell[:, [1, 2, 0]], cell[:, [2, 0, 1]]).norm(dim=-1)
        width = min(width, float((state.volume[:, None] / faces).min()))
        if step >= equilibration:
            p.append(state.pressure().numpy() / units.GPa)
            vols.append(state.volume.numpy())
    # LJModel takes the minimum image: right while every cell is wider than two cutoffs
    assert width > 2 * cutoff
    p = np.array(p)  # (steps, replicas)
    # standard error from block means (100 and 200 steps, far longer than the pressure's
    # correlation time) and from the replicas' means (independent runs): the largest
    errors = [_standard_error(p.reshape(-1, n, p.shape[1]).mean(1)) for n in (100, 200)]
    errors.append(_standard_error(p.mean(0)))
    se = max(errors)
    assert se < 0.01, errors  # the check has teeth
    assert errors[1] < 1.5 * errors[0], errors  # a plateau: 100-step blocks are long enough
    # the ensemble's volume measure moves the mean by at most kT/V (0.0003 GPa here)
    kt_over_v = units.kB * temperature_K / np.mean(vols) / units.GPa
    assert abs(p.mean() - target_GPa) < 4 * se + kt_over_v, (p.mean(), se)
    if mode == "anisotropic":
        assert float(state.cell[:, 0, 1].abs().max()) > 0.0  # the cell shape moves too


def test_npt_with_an_ase_calculator_compresses_emt_copper():
    """NPT on the stress of an ASE calculator (not autograd): EMT copper at 2 GPa shrinks
    below its zero-pressure volume and, anisotropic, shears. (The mean pressure itself is
    checked above: 32 atoms of copper would need minutes to pin it to a useful precision.)"""
    atoms = bulk("Cu", cubic=True).repeat(2)
    target_GPa = 2.0
    state = make_state([atoms], temperature_K=300, seed=3)
    ff = ASEForceField(EMT())
    initialize(state, ff, stress=True)
    baro = BarostatConfig(mode="anisotropic", time_fs=100.0, compressibility_per_GPa=0.01)
    vols = []
    for step in range(1000):
        npt_step(state, ff, timestep_fs=4.0, temperature_K=300,
                 pressure_eV_A3=target_GPa * units.GPa, friction_per_fs=0.02, barostat=baro)  # fmt: skip
        if step >= 150:
            vols.append(float(state.volume[0]))
    # compressed below the zero-pressure volume (EMT Cu, 32 atoms: ~377 Å^3 at 300 K; ~371 Å^3
    # at 2 GPa)
    assert np.mean(vols) < 374.0
    assert float(state.cell[0, 0, 1]) != 0.0  # anisotropic mode moves off-diagonals


def _mixed_structures():
    ico = Icosahedron("Ar", 2)
    small = Atoms("Ar4", positions=[[0, 0, 0], [3.8, 0, 0], [1.9, 3.3, 0], [1.9, 1.1, 3.1]])
    fcc = bulk("Ar", "fcc", a=5.3, cubic=True).repeat(2)
    fcc.rattle(0.02, seed=2)
    return [ico, small, fcc]


@pytest.mark.parametrize("kind", ["nvt_bias", "npt_bias"])
def test_batch_equals_replicas_run_alone(kind):
    structs = _mixed_structures()
    if kind == "npt_bias":
        structs = [structs[2], structs[2]]
    model = LJModel(cutoff=5.0)
    bias = BiasConfig(tau_rel=0.3, tau_stress_rel=0.1, window=5)

    def run(atoms_list, ids):
        st = make_state(atoms_list, replica_ids=ids, seed=11, temperature_K=60, window=5)
        initialize(st, model, stress=kind == "npt_bias", bias=bias)
        for _ in range(25):
            if kind == "npt_bias":
                npt_step(st, model, timestep_fs=4.0, temperature_K=60, pressure_eV_A3=0.0,
                         barostat=BarostatConfig(compressibility_per_GPa=0.5), bias=bias)  # fmt: skip
            else:
                langevin_step(st, model, timestep_fs=4.0, temperature_K=60, bias=bias)
        return st

    ids = list(range(len(structs)))
    batch = run(structs, ids)
    for r, atoms in enumerate(structs):
        alone = run([atoms], [ids[r]])
        sl = batch.atom_slice(r)
        torch.testing.assert_close(batch.positions[sl], alone.positions, rtol=0, atol=1e-10)
        torch.testing.assert_close(batch.velocities[sl], alone.velocities, rtol=0, atol=1e-10)
        torch.testing.assert_close(batch.cell[r], alone.cell[0], rtol=0, atol=1e-10)
        assert float(batch.win_g2[r, -1]) > 0  # the bias was active
    assert not torch.allclose(batch.positions[batch.atom_slice(0)], torch.as_tensor(
        structs[0].positions))  # fmt: skip


def test_schedules_and_bad_input():
    ramp = LinearRamp(300.0, 600.0, n_steps=100)
    np.testing.assert_allclose(ramp.at(torch.tensor([0, 50, 100, 200])), [300, 450, 600, 600])
    assert float(Constant(5.0).at(torch.tensor([7]))[0]) == 5.0
    with pytest.raises(ValueError, match="temperature_K must be > 0"):
        as_schedule(LinearRamp(300.0, 0.0, 10), name="temperature_K", positive=True)
    cluster = Icosahedron("Ar", 1)
    state = make_state([cluster], temperature_K=10)
    model = LJModel()
    initialize(state, model)
    with pytest.raises(ValueError, match="temperature_K must be > 0"):
        langevin_step(state, model, timestep_fs=1.0, temperature_K=0.0)
    with pytest.raises(ValueError, match="temperature_K must be > 0"):
        make_state([cluster], temperature_K=-5)
    with pytest.raises(ValueError, match="NPT needs periodic structures"):
        npt_step(state, model, timestep_fs=1.0, temperature_K=10, pressure_eV_A3=0.0)
    with pytest.raises(ValueError, match="barostat mode"):
        BarostatConfig(mode="semi")
    atoms = state_to_atoms(state, 0)
    assert len(atoms) == len(cluster)


def test_temperature_ramp_in_explorer(tmp_path):
    from ubmd import keys
    from ubmd.md.explore import ExploreConfig, run_explorer
    from ubmd.md.writer import read_candidates

    cluster = Icosahedron("Ar", 2)
    cfg = ExploreConfig(sampler="md", temperature_K=LinearRamp(5.0, 60.0, 400), timestep_fs=5.0,
                        friction_per_fs=0.05, n_steps=400, record_every=20, seed=4)  # fmt: skip
    run_explorer(cfg, LJModel(), [cluster], out_path=tmp_path / "ramp.h5", replicas=8)
    data = read_candidates(tmp_path / "ramp.h5")
    t, step = data[keys.TEMPERATURE_K], data[keys.MD_STEP]
    early, late = t[(step > 40) & (step <= 120)].mean(), t[step >= 320].mean()
    assert early < 25.0 < 40.0 < late
