"""Model files: round trips, extra state, and clear errors for foreign files."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from model_helpers import make_painn, rattled_crystal, rattled_molecule

from ubmd import keys
from ubmd.models import Ensemble, compute, load_extra, load_model, save_model


def test_round_trip_gives_identical_predictions(tmp_path):
    atoms = [rattled_molecule(), rattled_crystal()]
    species = set(np.concatenate([a.numbers for a in atoms]))
    model = make_painn(species, n_interactions=3)
    path = tmp_path / "m.pt"
    extra = {"sigma": 0.01, "method": "posterior", "train_features": torch.randn(4, 3)}
    save_model(path, model, extra=extra)
    loaded = load_model(path)
    assert type(loaded) is type(model) and loaded.species == model.species
    assert loaded.dtype == torch.float64 and loaded.hyperparameters() == model.hyperparameters()
    a = compute(model, model.graph(atoms), stress=True)
    b = compute(loaded, loaded.graph(atoms), stress=True)
    for k in (keys.ENERGY, keys.FORCES, keys.LATENT):
        assert torch.equal(a[k], b[k]), k
    got = load_extra(path)
    assert got["method"] == "posterior" and got["sigma"] == 0.01
    assert torch.equal(got["train_features"], extra["train_features"])


def test_ensemble_round_trip(tmp_path):
    atoms = rattled_molecule()
    members = [make_painn(set(atoms.numbers)) for _ in range(3)]
    for k, m in enumerate(members):
        torch.manual_seed(k)
        for p in m.parameters():
            p.data.add_(0.1 * torch.randn_like(p))
    ens = Ensemble(members).float()
    save_model(tmp_path / "e.pt", ens)
    loaded = load_model(tmp_path / "e.pt")
    assert isinstance(loaded, Ensemble) and len(loaded) == 3 and loaded.dtype == torch.float32
    a = compute(ens, ens.graph(atoms))
    b = compute(loaded, loaded.graph(atoms))
    assert torch.equal(a[keys.ENSEMBLE_FORCES], b[keys.ENSEMBLE_FORCES])


def test_foreign_files_give_clear_errors(tmp_path):
    model = make_painn([1, 6, 8])
    cases = {
        "garbage.pt": lambda p: p.write_bytes(b"\x00\x01 not a model at all" * 10),
        "pickle.pt": lambda p: p.write_bytes(pickle.dumps({"a": ValueError("x"), "b": {1, 2}})),
        "module.model": lambda p: torch.save(model, p),  # a whole pickled module (like MACE)
        "dict.pt": lambda p: torch.save({"state_dict": model.state_dict()}, p),
        "text.xyz": lambda p: p.write_text("3\n\nH 0 0 0\nH 0 0 1\nO 0 1 0\n"),
    }
    for name, write in cases.items():
        path = tmp_path / name
        write(path)
        with pytest.raises(ValueError, match=rf"{name} is not a ubmd model file"):
            load_model(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "missing.pt")
