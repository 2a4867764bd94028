"""The MACE backend follows the same contract: FD forces/stress, symmetries, training, files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_helpers import emt_dataset, rattled_crystal, rattled_molecule
from scipy.spatial.transform import Rotation
from test_model_physics import fd_forces, fd_stress

from ubmd import keys
from ubmd.models import compute, load_model, save_model, train_model
from ubmd.models.train import TrainConfig

pytest.importorskip("mace")  # optional extra; installed in CI

# max_ell=1 keeps e3nn's set-up of the tensor products to seconds (max_ell=2 takes ~20 s)
SMALL = {
    "cutoff": 3.5, "n_channels": 4, "max_L": 1, "max_ell": 1, "n_interactions": 2,
    "readout_hidden": 4,
}  # fmt: skip


@pytest.fixture(scope="module")
def model():
    """One float64 model for the molecule (H, C, O) and crystal (Na, Cl) checks."""
    from ubmd.models.mace_backend import MacePotential

    torch.manual_seed(0)
    model = MacePotential([1, 6, 8, 11, 17], **SMALL).double()
    model.set_energy_stats(shift=-np.arange(1, len(model.species) + 1, dtype=float), scale=0.5)
    return model


def test_mace_forces_and_stress_match_finite_differences(model):
    crystal = rattled_crystal()
    out = compute(model, model.graph(crystal), stress=True)
    assert np.abs(out[keys.FORCES].numpy()).max() > 1e-4
    np.testing.assert_allclose(out[keys.FORCES], fd_forces(model, crystal), atol=1e-7, rtol=1e-6)
    np.testing.assert_allclose(out[keys.STRESS][0], fd_stress(model, crystal), atol=1e-8, rtol=1e-5)

    mol = rattled_molecule()
    out = compute(model, model.graph(mol))
    sub = [0, 4, 8]  # a few atoms keep the test quick; every component of them is checked
    fd = fd_forces(model, mol, subset=sub)
    np.testing.assert_allclose(out[keys.FORCES][sub], fd[sub], atol=1e-7, rtol=1e-6)


def test_mace_invariances_and_batching(model):
    mol = rattled_molecule(1)
    ref = compute(model, model.graph(mol))
    rot = Rotation.random(random_state=5).as_matrix()
    moved = mol.copy()
    moved.positions = mol.positions @ rot.T + [1.0, 2.0, -3.0]
    out = compute(model, model.graph(moved))
    np.testing.assert_allclose(out[keys.ENERGY], ref[keys.ENERGY], rtol=1e-10)
    np.testing.assert_allclose(out[keys.FORCES], ref[keys.FORCES].numpy() @ rot.T, atol=1e-9)
    perm = np.random.default_rng(1).permutation(len(mol))
    out = compute(model, model.graph(mol[perm]))
    np.testing.assert_allclose(out[keys.ENERGY], ref[keys.ENERGY], rtol=1e-10)
    np.testing.assert_allclose(out[keys.FORCES], ref[keys.FORCES][perm], atol=1e-9)
    # a batch of two copies equals the single structure twice
    both = compute(model, model.graph([mol, moved]))
    np.testing.assert_allclose(both[keys.ENERGY], [ref[keys.ENERGY][0]] * 2, rtol=1e-10)
    # contract: readout's last Linear takes last_layer_input
    assert both["last_layer_input"].shape[1] == model.readout[-1].in_features
    assert both[keys.LATENT].shape == (2 * len(mol), model.readout[0].in_features)


def test_mace_trains_and_round_trips(tmp_path):
    config = TrainConfig(
        model="mace", model_options=SMALL, max_epochs=2, batch_size=3, dtype="float64",
        device="cpu", seed=3,
    )  # fmt: skip
    data = emt_dataset(4)
    model, history = train_model(config, data)
    assert len(history) == 2 and np.isfinite(history[-1]["valid_loss"])
    # message normalisation fitted from the data (Cu/Al fcc at 3.5 Å: 12 neighbours)
    assert model.hyperparameters()["avg_num_neighbors"] == pytest.approx(12.0, abs=0.5)
    save_model(tmp_path / "mace.pt", model)
    loaded = load_model(tmp_path / "mace.pt")
    a = compute(model, model.graph(data), stress=True)
    b = compute(loaded, loaded.graph(data), stress=True)
    assert torch.equal(a[keys.FORCES], b[keys.FORCES])
    assert torch.equal(a[keys.STRESS], b[keys.STRESS])
