"""Accuracy: PaiNN trained on 200 GFN2-xTB-labelled alanine dipeptide frames (300 K MD)
reaches a force RMSE <= 0.10 eV/Å on 100 held-out frames of the same trajectory.

Measured on the development machine: test force RMSE 0.073 eV/Å, energy RMSE 2.1 meV/atom
(about 45 s of CPU time on one core).
"""

from __future__ import annotations

import numpy as np
import torch
from ase.io import read
from model_helpers import ALA2

from ubmd import keys
from ubmd.models import TrainConfig, compute, train_model

# Tuned to train in about a minute on one CPU core (cosine schedule over 50 epochs).
CONFIG = TrainConfig(
    model="painn",
    model_options={"n_features": 32, "n_interactions": 2},  # the PaiNN defaults
    energy_weight=10.0,
    forces_weight=10.0,
    lr=1e-2,
    lr_schedule="cosine",
    min_lr=1e-4,
    batch_size=4,
    max_epochs=50,
    patience=50,
    valid_fraction=0.1,
    seed=0,
    device="cpu",
    dtype="float32",
)


def test_ala2_force_rmse_below_0p1(capsys):
    frames = read(ALA2, index=":")
    assert len(frames) == 300
    train, test = frames[:200], frames[200:]
    # one thread (conftest): on 2 shared cores a second OpenMP thread costs more than it gains
    model, history = train_model(CONFIG, train)
    out = compute(model, model.graph(test))
    ref_f = torch.as_tensor(np.concatenate([a.get_forces() for a in test]), dtype=torch.float32)
    ref_e = torch.as_tensor([a.get_potential_energy() for a in test], dtype=torch.float64)
    f_rmse = float(((out[keys.FORCES] - ref_f) ** 2).mean().sqrt())
    e_rmse = float((((out[keys.ENERGY].double() - ref_e) / 22) ** 2).mean().sqrt())
    with capsys.disabled():
        print(
            f"\nala2 held-out: force RMSE {f_rmse:.4f} eV/Å, energy RMSE {e_rmse * 1e3:.2f} meV/atom"
        )
    # reference scale: the RMS of the forces themselves is ~0.9 eV/Å
    assert f_rmse <= 0.10
    assert e_rmse <= 0.01
    assert history[-1]["valid_forces_rmse"] < history[0]["valid_forces_rmse"] / 3
