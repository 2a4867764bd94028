"""Training: determinism, resumable checkpoints, ensembles, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from model_helpers import Killed, emt_dataset, kill_at_epoch, tiny_config

from ubmd import keys
from ubmd.models import Ensemble, compute, load_model, train_ensemble, train_model
from ubmd.models.train import train_member

config = tiny_config


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_training_is_deterministic_and_learns():
    data = emt_dataset()
    m1, h1 = train_model(config(max_epochs=6), data)
    m2, h2 = train_model(config(max_epochs=6), data)
    assert_same(weights(m1), weights(m2))
    assert h1 == h2
    assert h1[-1]["train_loss"] < h1[0]["train_loss"]
    assert {"epoch", "valid_loss", "valid_forces_rmse", "valid_stress_rmse"} <= h1[0].keys()
    assert h1[-1]["valid_stress_rmse"] < h1[0]["valid_stress_rmse"]  # stress is fitted too
    assert m1.species == [13, 29]
    # per-species shift fitted by least squares, scale = force RMS of the training data
    assert torch.all(m1.energy_shift != 0) and torch.all(m1.energy_scale > 0)


def test_killed_training_resumes_to_the_same_weights(tmp_path):
    data = emt_dataset()
    full, _ = train_model(config(max_epochs=4), data, checkpoint_dir=tmp_path / "a")
    with pytest.raises(Killed):
        train_model(config(max_epochs=4), data, checkpoint_dir=tmp_path / "b", log=kill_at_epoch(1))
    assert (tmp_path / "b" / "last.pt").exists()
    resumed, hist = train_model(config(max_epochs=4), data, checkpoint_dir=tmp_path / "b")
    assert [r["epoch"] for r in hist] == [0, 1, 2, 3]
    assert_same(weights(full), weights(resumed))
    # best.pt is an ordinary model file with the returned (best) weights
    best = load_model(tmp_path / "b" / "best.pt")
    assert_same(weights(best), weights(resumed))
    # a different config must not silently resume
    with pytest.raises(ValueError, match="different training config"):
        train_model(config(max_epochs=5), data, checkpoint_dir=tmp_path / "b")


def test_ensemble_members_differ_and_train_alone():
    data = emt_dataset()
    cfg = config(max_epochs=2)
    ens, histories = train_ensemble(cfg, data, 2)
    assert isinstance(ens, Ensemble) and len(histories) == 2
    w0, w1 = weights(ens.members[0]), weights(ens.members[1])
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)
    alone, _ = train_member(cfg, data, 1)
    assert_same(weights(alone), w1)

    graph = ens.graph(data[:2])
    out = compute(ens, graph, stress=True)
    assert out[keys.ENSEMBLE_ENERGY].shape == (2, 2)
    assert out[keys.ENSEMBLE_FORCES].shape == (2, 8, 3)
    np.testing.assert_allclose(out[keys.FORCES], out[keys.ENSEMBLE_FORCES].mean(0), atol=1e-12)
    one = compute(ens.members[1], graph)
    np.testing.assert_allclose(out[keys.ENSEMBLE_FORCES][1], one[keys.FORCES], atol=1e-12)
    assert out[keys.ENSEMBLE_ENERGY][0, 0] != out[keys.ENSEMBLE_ENERGY][1, 0]


def test_bad_training_input_is_rejected():
    with pytest.raises(ValueError, match="empty"):
        train_model(config(), [])
    data = emt_dataset(3)
    data[1].calc.results["energy"] = math.nan
    with pytest.raises(ValueError, match=r"NaN/inf energy labels in structures \[1\]"):
        train_model(config(), data)
    data = emt_dataset(3)
    data[2].calc.results["forces"][1, 0] = np.nan
    with pytest.raises(ValueError, match=r"NaN/inf force labels in structures \[2\]"):
        train_model(config(), data)
    unlabelled = [a.copy() for a in emt_dataset(2)]
    with pytest.raises(ValueError, match="no energy/forces labels"):
        train_model(config(), unlabelled)
    with pytest.raises(ValueError, match="lr_schedule"):
        config(lr_schedule="exponential")
    with pytest.raises(ValueError, match="unknown model kind|model must be"):
        config(model="schnet")


def test_unknown_element_at_prediction_is_a_clear_error():
    model, _ = train_model(config(max_epochs=1), emt_dataset(3))
    from ase.build import bulk

    gold = bulk("Au", "fcc", a=4.08, cubic=True)
    with pytest.raises(ValueError, match=r"Au \(79\) unknown.*Al \(13\), Cu \(29\)"):
        compute(model, model.graph(gold))


def test_train_from_store_and_extxyz(tmp_path):
    from ase.io import write

    from ubmd.models.data import labelled_arrays
    from ubmd.store import Provenance, StructureStore

    data = emt_dataset(4)
    with StructureStore.create(tmp_path / "s.h5") as store:
        store.append(data, Provenance(labeler="emt"))
    write(tmp_path / "d.extxyz", data)
    from_store = labelled_arrays(str(tmp_path / "s.h5"))
    from_atoms = labelled_arrays(data)
    from_xyz = labelled_arrays(tmp_path / "d.extxyz")  # extxyz keeps ~8 decimals
    for key in ("numbers", "positions", "energy", "forces", "stress", "has_stress"):
        np.testing.assert_allclose(from_store[key], from_atoms[key], atol=1e-12, err_msg=key)
        np.testing.assert_allclose(from_xyz[key], from_atoms[key], atol=1e-6, err_msg=key)
    assert from_store["has_stress"].all()
    m1, _ = train_model(config(max_epochs=1), str(tmp_path / "s.h5"))
    m2, _ = train_model(config(max_epochs=1), data)
    assert_same(weights(m1), weights(m2))


def test_huber_loss_is_the_squared_error_below_its_deltas_and_linear_above():
    from ubmd.models import data as mdata
    from ubmd.models.training_run import _huber, batch_loss

    x = torch.tensor([-3.0, -0.1, 0.0, 0.2, 2.0])
    assert torch.allclose(_huber(x, 0.5), torch.tensor([2.75, 0.01, 0.0, 0.04, 1.75]))
    data = emt_dataset()
    model, _ = train_model(config(max_epochs=1), data)
    arrays = mdata.labelled_arrays(data)
    samples = mdata.make_samples(arrays, cutoff=model.cutoff, device="cpu", dtype=model.dtype)
    batch = mdata.Sample.collate(samples)
    mse, parts = batch_loss(model, batch, config(stress_weight=0.0), train=False)
    wide, _ = batch_loss(
        model, batch, config(stress_weight=0.0, loss="huber", huber_delta_energy=1e3,
                             huber_delta_forces=1e3), train=False,
    )  # fmt: skip
    narrow, parts_h = batch_loss(
        model, batch, config(stress_weight=0.0, loss="huber", huber_delta_energy=1e-4,
                             huber_delta_forces=1e-4), train=False,
    )  # fmt: skip
    assert float(wide) == pytest.approx(float(mse), rel=1e-12)
    assert float(narrow) < float(mse)
    assert parts_h == parts  # reported errors stay mean squared errors
    with pytest.raises(ValueError, match="loss must be"):
        config(loss="l1")
    with pytest.raises(ValueError, match="huber_delta_forces"):
        config(huber_delta_forces=0.0)


def test_a_training_step_leaves_the_loss_parts_on_the_device():
    """parts=False (what a training step asks for) gives the same loss and no parts: reading
    the parts as floats would wait for a GPU once per batch; validation still reads them."""
    from ubmd.models import data as mdata
    from ubmd.models.training_run import batch_loss

    data = emt_dataset()
    model, history = train_model(config(max_epochs=1), data)
    arrays = mdata.labelled_arrays(data)
    samples = mdata.make_samples(arrays, cutoff=model.cutoff, device="cpu", dtype=model.dtype)
    batch = mdata.Sample.collate(samples)
    loss, parts = batch_loss(model, batch, config(), train=True)
    loss_np, none = batch_loss(model, batch, config(), train=True, parts=False)
    assert none == {} and set(parts) == {"energy_mse", "forces_mse", "stress_mse"}
    assert torch.equal(loss.detach(), loss_np.detach()) and loss_np.requires_grad
    assert isinstance(history[0]["train_loss"], float) and history[0]["train_loss"] > 0
