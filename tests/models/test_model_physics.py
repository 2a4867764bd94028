"""Forces/stress against finite differences, symmetries and batching of the built-in model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_helpers import make_painn, rattled_crystal, rattled_molecule
from scipy.spatial.transform import Rotation

from ubmd import keys
from ubmd.models import Graph, compute


def energy(model, atoms) -> float:
    return float(compute(model, model.graph(atoms), forces=False)[keys.ENERGY][0])


def fd_forces(model, atoms, h=1e-5, subset=None):
    """Central differences of -E for the atoms in ``subset`` (all by default); rows else NaN."""
    f = np.full((len(atoms), 3), np.nan)
    for a in range(len(atoms)) if subset is None else subset:
        for x in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[a, x] += h
            minus.positions[a, x] -= h
            f[a, x] = -(energy(model, plus) - energy(model, minus)) / (2 * h)
    return f


def fd_stress(model, atoms, h=1e-5):
    """(1/V) dE/dε by symmetric strains of positions and cell (ASE sign)."""
    voigt = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]
    out = np.zeros(6)
    for k, (i, j) in enumerate(voigt):
        eps = np.zeros((3, 3))
        eps[i, j] = eps[j, i] = h
        vals = []
        for sign in (1, -1):
            a = atoms.copy()
            a.set_cell(atoms.cell.array @ (np.eye(3) + sign * eps), scale_atoms=True)
            vals.append(energy(model, a))
        de = (vals[0] - vals[1]) / (2 * h)
        out[k] = de / (2 if i != j else 1) / atoms.get_volume()
    return out


@pytest.mark.parametrize("kind", ["molecule", "crystal"])
def test_forces_match_finite_differences(kind):
    atoms = rattled_molecule() if kind == "molecule" else rattled_crystal()
    model = make_painn(set(atoms.numbers))
    out = compute(model, model.graph(atoms), stress=kind == "crystal")
    forces = out[keys.FORCES].numpy()
    assert np.abs(forces).max() > 1e-3  # a non-trivial check
    np.testing.assert_allclose(forces, fd_forces(model, atoms), atol=1e-7, rtol=1e-6)


def test_stress_matches_finite_differences():
    atoms = rattled_crystal()
    model = make_painn(set(atoms.numbers))
    stress = compute(model, model.graph(atoms), stress=True)[keys.STRESS][0].numpy()
    assert np.abs(stress).max() > 1e-5
    np.testing.assert_allclose(stress, fd_stress(model, atoms), atol=1e-8, rtol=1e-5)


def test_stress_nan_for_molecule_and_independent_of_forces():
    atoms = rattled_molecule()
    model = make_painn(set(atoms.numbers))
    out = compute(model, model.graph(atoms), stress=True)
    assert torch.isnan(out[keys.STRESS]).all()
    assert torch.isfinite(out[keys.FORCES]).all()


@pytest.mark.parametrize("kind", ["molecule", "crystal"])
def test_invariance_rotation_translation_permutation(kind):
    atoms = rattled_molecule(1) if kind == "molecule" else rattled_crystal(1)
    model = make_painn(set(atoms.numbers))
    ref = compute(model, model.graph(atoms), stress=kind == "crystal")
    rot = Rotation.random(random_state=3).as_matrix()

    moved = atoms.copy()
    moved.positions = atoms.positions @ rot.T + np.array([0.3, -1.2, 2.5])
    if kind == "crystal":
        moved.set_cell(atoms.cell.array @ rot.T, scale_atoms=False)
    out = compute(model, model.graph(moved), stress=kind == "crystal")
    np.testing.assert_allclose(out[keys.ENERGY], ref[keys.ENERGY], rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(out[keys.FORCES], ref[keys.FORCES].numpy() @ rot.T, atol=1e-10)
    if kind == "crystal":

        def full(v):
            xx, yy, zz, yz, xz, xy = v
            return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])

        np.testing.assert_allclose(
            full(out[keys.STRESS][0].numpy()),
            rot @ full(ref[keys.STRESS][0].numpy()) @ rot.T,
            atol=1e-10,
        )
        # wrapping atoms into the cell (a lattice translation) changes nothing
        wrapped = atoms.copy()
        wrapped.positions += 2.0
        wrapped.wrap()
        np.testing.assert_allclose(
            compute(model, model.graph(wrapped))[keys.ENERGY], ref[keys.ENERGY], rtol=1e-12
        )

    # permute atoms: energies unchanged, per-atom outputs permuted
    perm = np.random.default_rng(0).permutation(len(atoms))
    permuted = atoms[perm]
    out = compute(model, model.graph(permuted))
    np.testing.assert_allclose(out[keys.ENERGY], ref[keys.ENERGY], rtol=1e-12)
    np.testing.assert_allclose(out[keys.FORCES], ref[keys.FORCES][perm], atol=1e-10)
    np.testing.assert_allclose(
        out[keys.ATOMIC_ENERGIES], ref[keys.ATOMIC_ENERGIES][perm], atol=1e-10
    )


def test_batch_equals_one_by_one():
    structures = [rattled_molecule(0), rattled_crystal(0), rattled_molecule(2), rattled_crystal(3)]
    species = set(np.concatenate([a.numbers for a in structures]))
    model = make_painn(species)
    batch = compute(model, model.graph(structures), stress=True)
    start = 0
    for s, atoms in enumerate(structures):
        one = compute(model, model.graph(atoms), stress=True)
        sl = slice(start, start + len(atoms))
        start += len(atoms)
        np.testing.assert_allclose(batch[keys.ENERGY][s], one[keys.ENERGY][0], rtol=1e-12)
        np.testing.assert_allclose(batch[keys.FORCES][sl], one[keys.FORCES], atol=1e-11)
        np.testing.assert_allclose(batch[keys.LATENT][sl], one[keys.LATENT], atol=1e-11)
        np.testing.assert_allclose(batch[keys.STRESS][s], one[keys.STRESS][0], atol=1e-12)
    # collate of per-structure graphs is the same batch
    collated = Graph.collate([model.graph(a) for a in structures])
    out = compute(model, collated)
    np.testing.assert_allclose(out[keys.ENERGY], batch[keys.ENERGY], rtol=1e-12)


def test_float32_close_to_float64():
    atoms = rattled_molecule()
    model = make_painn(set(atoms.numbers))
    ref = compute(model, model.graph(atoms))
    model32 = model.float()
    out = compute(model32, model32.graph(atoms))
    assert out[keys.FORCES].dtype == torch.float32
    np.testing.assert_allclose(out[keys.FORCES], ref[keys.FORCES], atol=1e-4)


def test_outputs_follow_contract():
    atoms = rattled_molecule()
    model = make_painn(set(atoms.numbers))
    out = compute(model, model.graph(atoms))
    n = len(atoms)
    assert out[keys.ATOMIC_ENERGIES].shape == (n,)
    assert out[keys.LATENT].shape[0] == n
    last = model.readout[-1]
    assert isinstance(last, torch.nn.Linear) and last.out_features == 1
    assert out["last_layer_input"].shape == (n, last.in_features)
    # atomic energy = scale * last layer(last_layer_input) + shift
    z = model.species_index(torch.as_tensor(atoms.numbers))
    raw = last(out["last_layer_input"]).squeeze(-1)
    np.testing.assert_allclose(
        out[keys.ATOMIC_ENERGIES],
        (raw * model.energy_scale[z] + model.energy_shift[z]).detach(),
        atol=1e-12,
    )


@pytest.mark.parametrize("kind", ["molecule", "crystal", "slab"])
def test_neighbour_list_matches_ase(kind):
    from ase.build import fcc111
    from ase.neighborlist import neighbor_list

    if kind == "slab":  # periodic in x, y only
        atoms = fcc111("Cu", size=(3, 3, 3), vacuum=5.0)
        atoms.rattle(0.05, seed=1)
    else:
        atoms = rattled_molecule() if kind == "molecule" else rattled_crystal()
    graph = Graph.from_atoms(atoms, cutoff=3.0)
    i, j, shifts = neighbor_list("ijS", atoms, 3.0)
    assert graph.edge_index.shape[1] == len(i)
    ours = np.sort(graph.edge_vectors().norm(dim=1).numpy())
    ref = np.linalg.norm(
        atoms.positions[j] - atoms.positions[i] + shifts @ atoms.cell.array, axis=1
    )
    np.testing.assert_allclose(ours, np.sort(ref), atol=1e-12)
    pairs = {(a, b) for a, b in graph.edge_index.T.tolist()}
    assert pairs == set(zip(i.tolist(), j.tolist(), strict=True))


def test_graph_input_errors():
    from ase import Atoms

    good = {keys.NUMBERS: [1, 1], keys.POSITIONS: [[0, 0, 0], [0, 0, 0.7]], keys.N_ATOMS: [2]}
    assert Graph.from_arrays(good, cutoff=2.0).edge_index.shape == (2, 2)
    with pytest.raises(ValueError, match="inconsistent sizes"):
        Graph.from_arrays({**good, keys.N_ATOMS: [3]}, cutoff=2.0)
    with pytest.raises(ValueError, match="NaN"):
        Graph.from_arrays({**good, keys.POSITIONS: [[0, 0, 0], [0, 0, np.nan]]}, cutoff=2.0)
    with pytest.raises(ValueError, match="need the key 'positions'"):
        Graph.from_arrays({keys.NUMBERS: [1], keys.N_ATOMS: [1]}, cutoff=2.0)
    with pytest.raises(ValueError, match="cutoff must be > 0"):
        Graph.from_arrays(good, cutoff=0.0)
    with pytest.raises(ValueError, match="non-singular cell"):
        Graph.from_atoms(Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.7]], pbc=True), cutoff=2.0)
    with pytest.raises(ValueError, match="dtype must be"):
        Graph.from_arrays(good, cutoff=2.0, dtype="float16")
    with pytest.raises(ValueError, match="empty list"):
        Graph.from_atoms([], cutoff=2.0)
