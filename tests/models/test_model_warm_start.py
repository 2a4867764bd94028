"""Warm-started training: fine-tuning on a growing data set, refitted reference energies, exact
resume from a start model, weight averaging."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from model_helpers import ALA2, Killed, emt_dataset, kill_at_epoch, tiny_config

from ubmd import keys
from ubmd.models import TrainConfig, compute, train_model
from ubmd.models.data import labelled_arrays, select
from ubmd.models.graph import Graph

config = tiny_config


def errors(model, arrays) -> tuple[float, float]:
    """(energy RMSE eV/atom, force RMSE eV/Å)."""
    graph = Graph.from_arrays(arrays, cutoff=model.cutoff, device="cpu", dtype=model.dtype)
    out = compute(model, graph, forces=True)
    de = (out["energy"].detach().double().numpy() - arrays[keys.ENERGY]) / arrays[keys.N_ATOMS]
    df = out["forces"].detach().double().numpy() - arrays[keys.FORCES]
    return float(np.sqrt(np.mean(de**2))), float(np.sqrt(np.mean(df**2)))


def _alloy_clusters(n: int, seed: int) -> dict[str, np.ndarray]:
    """EMT-labelled periodic Cu/Al/Ni cells of varying composition (a per-species shift is
    then identifiable, unlike for one composition)."""
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n):
        atoms = bulk("Cu", "fcc", a=3.62, cubic=True) * (2, 1, 1)
        atoms.numbers[rng.random(len(atoms)) < rng.uniform(0.1, 0.6)] = 13
        atoms.numbers[rng.random(len(atoms)) < 0.2] = 28
        atoms.rattle(0.05, seed=seed * 100 + k)
        atoms.calc = EMT()
        e, f = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=e, forces=f)
        frames.append(atoms)
    return labelled_arrays(frames)


def test_shifted_reference_energies_are_learned_to_1_meV_per_atom(monkeypatch):
    data = _alloy_clusters(24, seed=1)
    model, _ = train_model(config(max_epochs=6, valid_fraction=0.0), data)
    e_before, f_before = errors(model, data)
    # the same structures re-referenced: +3 eV per Al, -1.5 eV per Cu, +0.7 eV per Ni
    shift = {13: 3.0, 29: -1.5, 28: 0.7}
    owner = np.repeat(np.arange(len(data[keys.N_ATOMS])), data[keys.N_ATOMS])
    per_atom = np.array([shift[int(z)] for z in data[keys.NUMBERS]])
    shifted = dict(data)
    shifted[keys.ENERGY] = data[keys.ENERGY] + np.bincount(owner, per_atom)
    # one epoch at a negligible learning rate: the refit alone has to absorb the shift
    # (the refit also absorbs what the model got wrong per species before: compare with the
    # same fine-tuning on the original energies)
    tiny = config(max_epochs=1, lr=1e-9, valid_fraction=0.0)
    same, _ = train_model(tiny, data, init_model=model)
    tuned, _ = train_model(tiny, shifted, init_model=model)
    e_same = errors(same, data)[0]
    e_after, f_after = errors(tuned, shifted)
    assert abs(e_after - e_same) < 1e-3, (e_same, e_after)
    assert e_same <= e_before + 1e-9  # least squares: the refit never makes energies worse
    assert f_after == pytest.approx(f_before, rel=1e-4)  # lr 1e-9: the weights barely move
    # the start model is copied, never changed
    assert errors(model, data) == (e_before, f_before)
    # without the refit the shift is not learned (the check above can fail)
    from ubmd.models import train as train_mod

    monkeypatch.setattr(train_mod, "refit_reference_energies", lambda model, samples: None)
    unrefitted, _ = train_model(tiny, shifted, init_model=model)
    assert errors(unrefitted, shifted)[0] > e_same + 0.1
    # the start model is copied, never changed
    assert errors(model, data) == (e_before, f_before)


def test_warm_start_on_a_growing_data_set_does_not_get_worse():
    """Fine-tuning on 40, 80, 120 then 160 ala2 frames: held-out force and energy errors do not
    rise by more than 5 % (force) / 10 % (energy) from one stage to the next, on fixed seeds.
    (Frames in random order, so that every stage and the test set are drawn alike.)"""
    arrays = labelled_arrays(str(ALA2))
    order = np.random.default_rng(0).permutation(len(arrays[keys.N_ATOMS]))
    test = select(arrays, order[200:])
    base = TrainConfig(
        model_options={"cutoff": 4.0, "n_features": 16, "n_basis": 8, "readout_hidden": 16},
        max_epochs=40, patience=40, batch_size=8, device="cpu", dtype="float32", seed=3,
        energy_weight=1000.0,
    )  # fmt: skip
    fine = dataclasses.replace(base, max_epochs=30, lr=1e-3)
    model, curve = None, []
    for n in (40, 80, 120, 160):
        cfg = base if model is None else fine
        model, _ = train_model(cfg, select(arrays, order[:n]), init_model=model)
        curve.append(errors(model, test))
    e, f = np.array(curve).T
    assert np.all(f[1:] <= f[:-1] * 1.05), f
    assert np.all(e[1:] <= e[:-1] * 1.10), e
    assert f[-1] < 0.8 * f[0], f  # and it learns from the new data


def test_warm_started_run_resumes_exactly_and_refuses_another_start_model(tmp_path):
    data = emt_dataset()
    start, _ = train_model(config(max_epochs=2), data)
    other, _ = train_model(config(max_epochs=2, seed=8), data)
    full, _ = train_model(config(max_epochs=4), data, init_model=start)
    with pytest.raises(Killed):
        train_model(
            config(max_epochs=4), data, init_model=start, checkpoint_dir=tmp_path,
            log=kill_at_epoch(1),
        )  # fmt: skip
    resumed, hist = train_model(
        config(max_epochs=4), data, init_model=start, checkpoint_dir=tmp_path
    )
    assert [r["epoch"] for r in hist] == [0, 1, 2, 3]
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    with pytest.raises(ValueError, match="different start model"):
        train_model(config(max_epochs=4), data, init_model=other, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="different start model"):
        train_model(config(max_epochs=4), data, checkpoint_dir=tmp_path)


def test_warm_start_refuses_unknown_elements_and_another_architecture():
    data = emt_dataset()
    start, _ = train_model(config(max_epochs=1), data)
    with pytest.raises(ValueError, match=r"also has \[28\]"):
        train_model(config(max_epochs=1), _alloy_clusters(6, seed=2), init_model=start)
    with pytest.raises(ValueError, match="config asks for 'mace'"):
        train_model(config(max_epochs=1, model="mace"), data, init_model=start)


def test_ema_keeps_averaged_weights_and_resumes_exactly(tmp_path):
    data = emt_dataset()
    raw, _ = train_model(config(max_epochs=4, patience=10), data)
    ema, hist = train_model(config(max_epochs=4, patience=10, ema_decay=0.9), data)
    # same raw trajectory, but the kept weights are an average: they differ
    assert any(not torch.equal(v, ema.state_dict()[k]) for k, v in raw.state_dict().items())
    cfg = config(max_epochs=4, patience=10, ema_decay=0.9)
    with pytest.raises(Killed):
        train_model(cfg, data, checkpoint_dir=tmp_path, log=kill_at_epoch(2))
    resumed, hist2 = train_model(cfg, data, checkpoint_dir=tmp_path)
    assert hist2 == hist
    for k, v in ema.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    with pytest.raises(ValueError, match="ema_decay"):
        config(ema_decay=1.0)


def test_energy_weight_ramps_to_its_final_value_and_validation_uses_it():
    from ubmd.models.training_run import TrainingRun

    cfg = config(max_epochs=5, energy_weight=10.0, energy_weight_final=110.0)
    run = TrainingRun(
        cfg, train_model(config(max_epochs=1), emt_dataset())[0], init_fingerprint=None
    )
    weights = [run.loss_config(e).energy_weight for e in range(5)]
    assert weights == pytest.approx([10.0, 35.0, 60.0, 85.0, 110.0])
    assert run.loss_config(None).energy_weight == 110.0
    assert TrainingRun(config(), run.model, init_fingerprint=None).loss_config(3) == config()
    with pytest.raises(ValueError, match="energy_weight_final"):
        config(energy_weight_final=-1.0)
    # a ramped run is deterministic and reports validation under the final weight
    data = emt_dataset()
    _, h1 = train_model(cfg, data)
    _, h2 = train_model(cfg, data)
    _, flat = train_model(config(max_epochs=5, energy_weight=110.0), data)
    assert h1 == h2
    assert h1[0]["valid_loss"] != flat[0]["valid_loss"]  # different training, same metric


def test_max_steps_caps_the_epochs_of_a_growing_data_set():
    from ubmd.models.train import TrainConfig, epochs_for

    cfg = TrainConfig(max_epochs=100, patience=100, batch_size=8, max_steps=2000)
    assert epochs_for(cfg, 80).max_epochs == 100  # 10 steps/epoch: 1000 steps, under the cap
    assert epochs_for(cfg, 400).max_epochs == 40  # 50 steps/epoch
    assert epochs_for(cfg, 401).max_epochs == 40  # 51 steps/epoch: ceil(2000 / 51)
    assert epochs_for(cfg, 100_000).max_epochs == 1
    assert epochs_for(cfg, 400).patience == 40  # "whole budget" patience follows the budget
    assert epochs_for(TrainConfig(max_epochs=100, patience=7, max_steps=10), 400).patience == 7
    assert epochs_for(TrainConfig(max_epochs=100), 10**6).max_epochs == 100  # no cap
    with pytest.raises(ValueError, match="max_steps must be an integer >= 1"):
        TrainConfig(max_steps=0)


def test_a_capped_run_trains_that_many_epochs():
    history = train_model(tiny_config(max_epochs=50, max_steps=6, batch_size=2), emt_dataset(6))[1]
    # 4 training structures (valid_fraction 0.34 holds 2 out) -> 2 steps per epoch -> 3 epochs
    assert [r["epoch"] for r in history] == [0, 1, 2]
