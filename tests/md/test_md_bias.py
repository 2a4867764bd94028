"""Bias forces/stress vs finite differences, adaptive strength, stress bias widens volume."""

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from md_helpers import EMTVolumeModel, LJModel

from ubmd import keys
from ubmd.md.bias import BiasConfig
from ubmd.md.evaluation import evaluate
from ubmd.md.integrators import BarostatConfig, initialize, npt_step
from ubmd.md.state import make_state


def _mixed_cluster():
    """Ar and Ne atoms, slightly disordered (non-symmetric gradients)."""
    rng = np.random.default_rng(0)
    pos = np.array([[0, 0, 0], [3.7, 0, 0], [1.8, 3.2, 0], [1.9, 1.0, 3.1], [-1.5, 2.4, 2.0]])
    return Atoms("Ar3Ne2", positions=pos + rng.normal(scale=0.1, size=pos.shape))


def _periodic():
    atoms = bulk("Ar", "fcc", a=5.3, cubic=True).repeat(2)
    atoms.rattle(0.1, seed=4)
    atoms.set_cell(
        atoms.cell.array @ np.array([[1, 0.03, 0], [0, 1, 0.02], [0, 0, 0.98]]), scale_atoms=True
    )
    return atoms


def _u(model, state, positions, strain, key):
    out = model.outputs(positions, strain, state)
    u = out[key]
    return float(u.sum())


@pytest.mark.parametrize("key", [keys.UNCERTAINTY, keys.ATOMIC_UNCERTAINTY])
def test_bias_forces_equal_finite_differences(key):
    atoms = _mixed_cluster()
    state = make_state([atoms], temperature_K=None)
    model = LJModel()
    tau = 0.7
    weights = {10: 0.0}  # Ne atoms unbiased (as w_H = 0 in the paper)
    bias = BiasConfig(tau_eV=tau, species_weights=weights, uncertainty_key=key)
    ev = evaluate(state, model, stress=False, bias=bias)
    bias_force = (ev.forces - ev.model_forces).numpy()
    h = 1e-5
    zero = torch.zeros(1, 3, 3, dtype=torch.float64)
    fd = np.zeros_like(bias_force)
    for i in range(len(atoms)):
        for a in range(3):
            p, m = state.positions.clone(), state.positions.clone()
            p[i, a] += h
            m[i, a] -= h
            # F_bias = -d(-tau u)/dr, times the species weight
            fd[i, a] = (
                tau * (_u(model, state, p, zero, key) - _u(model, state, m, zero, key)) / (2 * h)
            )
    w = np.array([weights.get(z, 1.0) for z in atoms.numbers])[:, None]
    np.testing.assert_allclose(bias_force, w * fd, atol=1e-7, rtol=1e-6)
    assert np.abs(bias_force[:3]).max() > 1e-3 and np.abs(bias_force[3:]).max() == 0.0
    # model forces are -dE/dr too
    assert ev.biased_energy[0] == pytest.approx(
        float(ev.energy[0]) - tau * _u(model, state, state.positions, zero, key)
    )


def test_bias_stress_equals_finite_differences():
    atoms = _periodic()
    state = make_state([atoms], temperature_K=None)
    model = LJModel(cutoff=5.0)
    tau_s = 0.3
    bias = BiasConfig(tau_eV=0.0, tau_stress_eV=tau_s)
    ev = evaluate(state, model, stress=True, bias=bias)
    bias_stress = (ev.stress - ev.model_stress)[0].numpy()
    vol = atoms.get_volume()
    h = 1e-6
    fd = np.zeros((3, 3))
    fd_e = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            # symmetric strain: eps_ab = eps_ba = h/2 (off-diagonal), or eps_aa = h
            e = torch.zeros(1, 3, 3, dtype=torch.float64)
            e[0, a, b] += h / 2
            e[0, b, a] += h / 2
            up = model.outputs(state.positions, e, state)
            dn = model.outputs(state.positions, -e, state)
            fd[a, b] = -tau_s * float(up[keys.UNCERTAINTY] - dn[keys.UNCERTAINTY]) / (2 * h) / vol
            fd_e[a, b] = float(up[keys.ENERGY] - dn[keys.ENERGY]) / (2 * h) / vol
    np.testing.assert_allclose(bias_stress, fd, atol=1e-9, rtol=1e-5)
    np.testing.assert_allclose(ev.model_stress[0].numpy(), fd_e, atol=1e-9, rtol=1e-5)
    assert np.abs(bias_stress).max() > 1e-5
    assert float((ev.forces - ev.model_forces).abs().max()) == 0.0  # tau = 0 for forces


def test_adaptive_strength_zero_until_window_full_then_ratio():
    atoms = _mixed_cluster()
    W = 4
    state = make_state([atoms, atoms], temperature_K=20, window=W, seed=1)
    model = LJModel()
    bias = BiasConfig(tau_rel=0.25, window=W, species_weights={10: 0.5}, norm_every=1)
    f2, g2 = [], []
    for step in range(6):
        state.positions = state.positions + 0.01 * torch.randn_like(state.positions)
        state.step = torch.full_like(state.step, step)
        ev = evaluate(state, model, stress=False, bias=bias)
        # recompute the two norms by hand for replica 0
        sl = state.atom_slice(0)
        grad_u = (ev.forces - ev.model_forces)[sl] / max(float(ev.tau[0]), 1e-300)
        f2.append(float((ev.model_forces[sl] ** 2).sum()))
        pos = state.positions.detach().clone().requires_grad_(True)
        u = model.outputs(pos, torch.zeros(2, 3, 3, dtype=torch.float64), state)[keys.UNCERTAINTY]
        (g,) = torch.autograd.grad(u[0], pos)
        w = torch.tensor([1.0 if z == 18 else 0.5 for z in atoms.numbers], dtype=torch.float64)
        g2.append(float(((w[:, None] * g[sl]) ** 2).sum()))
        if step + 1 < W:
            assert float(ev.tau[0]) == 0.0 and float(ev.tau[1]) == 0.0
        else:
            expect = 0.25 * np.sqrt(sum(f2[-W:])) / np.sqrt(sum(g2[-W:]))
            assert float(ev.tau[0]) == pytest.approx(expect, rel=1e-10)
            torch.testing.assert_close(grad_u, w[:, None] * g[sl])


def test_stress_bias_widens_volume_range_emt():
    atoms = bulk("Cu", cubic=True).repeat(2)
    v0 = atoms.get_volume() / len(atoms)

    def volumes(tau_stress_rel):
        model = EMTVolumeModel(v0)
        bias = BiasConfig(tau_rel=0.0, tau_stress_rel=tau_stress_rel, window=20)
        state = make_state([atoms], temperature_K=300, seed=7, window=20)
        initialize(state, model, stress=True, bias=bias)
        baro = BarostatConfig(mode="isotropic", time_fs=50.0, compressibility_per_GPa=0.01)
        vols = []
        for _ in range(300):
            npt_step(state, model, timestep_fs=4.0, temperature_K=300, pressure_eV_A3=0.0,
                     barostat=baro, bias=bias)  # fmt: skip
            vols.append(float(state.volume[0]) / len(atoms))
        return np.array(vols[50:])

    plain, biased = volumes(0.0), volumes(1.0)
    assert np.ptp(biased) > 1.3 * np.ptp(plain)
    assert biased.std() > 1.3 * plain.std()


def test_single_pass_biased_force_equals_two_pass_force():
    atoms = _mixed_cluster()
    state = make_state([atoms, atoms], temperature_K=None)
    state.step = torch.tensor([3, 7])  # not a sampling step for norm_every=10
    model = LJModel()
    fast = evaluate(state, model, stress=False, bias=BiasConfig(tau_eV=0.4))
    slow = evaluate(state, model, stress=False, bias=BiasConfig(tau_eV=0.4, norm_every=1))
    assert not fast.model_forces_exact and slow.model_forces_exact
    torch.testing.assert_close(fast.forces, slow.forces, rtol=0, atol=1e-12)
    assert float((slow.forces - slow.model_forces).abs().max()) > 1e-3


def test_species_weight_keys():
    assert BiasConfig(species_weights={"H": 0, "6": 0.5, 8: 1}).species_weights == {
        1: 0.0,
        6: 0.5,
        8: 1.0,
    }
    with pytest.raises(ValueError, match="not an element symbol"):
        BiasConfig(species_weights={"Hx": 0})
    with pytest.raises(ValueError, match="weight >= 0"):
        BiasConfig(species_weights={1: -1.0})
