"""Estimator fitting, serialisation, batching, ensemble formulas and bad input."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from ase.build import molecule
from unc_toy import ToyPotential, jiggle

from ubmd import keys
from ubmd.models.graph import Graph
from ubmd.uncertainty import UncertaintyConfig, UncertaintyEstimator, fit_uncertainty, predict
from ubmd.uncertainty.inference import run_model

CONFIGS = [
    UncertaintyConfig(method="posterior", features="sketched_gradient", sketch_dim=24),
    UncertaintyConfig(method="distance"),
    UncertaintyConfig(method="gmm", gmm_components=[1, 2]),
    UncertaintyConfig(method="ensemble"),
]


def _test_graphs():
    frames = jiggle(molecule("CH3CH2OH"), 2, 0.1, 9) + jiggle(molecule("H2O"), 1, 0.1, 8)
    return frames, Graph.from_atoms(frames, cutoff=4.0)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.method)
def test_roundtrip_and_batch_equals_one_by_one(cfg, train_frames):
    models = [ToyPotential(seed=0), ToyPotential(seed=1)]
    model = models if cfg.method == "ensemble" else models[0]
    est = fit_uncertainty(model, train_frames, cfg)
    buf = io.BytesIO()
    torch.save(est.to_dict(), buf)
    buf.seek(0)
    again = UncertaintyEstimator.from_dict(torch.load(buf, weights_only=True))
    assert again.config == cfg
    frames, batch = _test_graphs()
    res = predict(model, batch, est)
    res2 = predict(model, batch, again)
    for k in (keys.UNCERTAINTY, keys.ATOMIC_UNCERTAINTY):
        torch.testing.assert_close(res[k], res2[k], rtol=0, atol=0)
    start = 0
    for s, atoms in enumerate(frames):
        one = predict(model, Graph.from_atoms(atoms, cutoff=4.0), est)
        torch.testing.assert_close(one[keys.UNCERTAINTY][0], res[keys.UNCERTAINTY][s])
        sl = slice(start, start + len(atoms))
        torch.testing.assert_close(one[keys.ATOMIC_UNCERTAINTY], res[keys.ATOMIC_UNCERTAINTY][sl])
        start += len(atoms)
    assert res[keys.FEATURES].shape[0] == 3 and (res[keys.UNCERTAINTY] > 0).all()


def test_ensemble_matches_member_statistics():
    models = [ToyPotential(seed=s) for s in range(3)]
    est = fit_uncertainty(models, [], UncertaintyConfig(method="ensemble"))
    _, batch = _test_graphs()
    res = predict(models, batch, est)
    e = torch.stack([run_model(m, batch)[keys.ENERGY] for m in models]).detach()
    f = torch.stack([predict(m, batch)[keys.FORCES] for m in models])
    n = batch.n_atoms.double()
    torch.testing.assert_close(res[keys.UNCERTAINTY], (e / n).std(dim=0, unbiased=True))
    torch.testing.assert_close(res[keys.ATOMIC_UNCERTAINTY], f.var(dim=0).mean(dim=-1).sqrt())
    torch.testing.assert_close(res[keys.FORCES], f.mean(dim=0))
    torch.testing.assert_close(res[keys.ENSEMBLE_FORCES], f)


def test_posterior_grows_away_from_training_data(train_frames):
    model = ToyPotential()
    est = fit_uncertainty(model, train_frames, UncertaintyConfig(method="posterior"))
    near = Graph.from_atoms(jiggle(molecule("CH3CH2OH"), 1, 0.05, 42), cutoff=4.0)
    far = molecule("CH3CH2OH")
    far.positions *= 0.85  # compressed: unlike any training frame
    u_near = predict(model, near, est)
    u_far = predict(model, Graph.from_atoms(far, cutoff=4.0), est)
    assert float(u_far[keys.UNCERTAINTY][0]) > 2 * float(u_near[keys.UNCERTAINTY][0])
    assert float(u_far[keys.ATOMIC_UNCERTAINTY].max()) > float(
        u_near[keys.ATOMIC_UNCERTAINTY].max()
    )


def test_bad_input_is_rejected_clearly(train_frames):
    model = ToyPotential()
    with pytest.raises(ValueError, match="method must be one of"):
        UncertaintyConfig(method="bayes")
    with pytest.raises(ValueError, match="features must be one of"):
        UncertaintyConfig(features="full")
    with pytest.raises(ValueError, match="at least 2 models"):
        fit_uncertainty(model, train_frames, UncertaintyConfig(method="ensemble"))
    with pytest.raises(ValueError, match="empty"):
        fit_uncertainty(model, [], UncertaintyConfig())
    with pytest.raises(ValueError, match="not a ubmd uncertainty estimator"):
        UncertaintyEstimator.from_dict({"format": "something else"})
    with pytest.raises(ValueError, match="unknown key 'tau' in uncertainty settings"):
        UncertaintyConfig.from_dict({"method": "gmm", "tau": 1.0})
    est = fit_uncertainty(
        model, train_frames, UncertaintyConfig(features="sketched_gradient", sketch_dim=8)
    )
    graph = Graph.from_atoms(train_frames[0], cutoff=4.0)
    with pytest.raises(ValueError, match="capture"):
        est(graph, run_model(model, graph))
    with pytest.raises(ValueError, match="needs an estimator"):
        predict(model, graph, uncertainty_gradients=True)
    assert np.isfinite(predict(model, graph, est)[keys.UNCERTAINTY].numpy()).all()


def test_fit_from_extxyz_file_equals_fit_from_frames(train_frames, tmp_path):
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    labelled = []
    for k, atoms in enumerate(train_frames):
        a = atoms.copy()
        a.calc = SinglePointCalculator(a, energy=-float(k), forces=np.zeros((len(a), 3)))
        labelled.append(a)
    write(tmp_path / "train.extxyz", labelled)
    model = ToyPotential()
    cfg = UncertaintyConfig(batch_size=5)
    a = fit_uncertainty(model, train_frames, cfg)
    b = fit_uncertainty(model, str(tmp_path / "train.extxyz"), cfg)
    for k, v in a.state_dict().items():
        # extxyz stores positions to ~1e-8 Å
        torch.testing.assert_close(v, b.state_dict()[k], rtol=1e-5, atol=1e-7)


def test_sketched_features_with_frozen_parameters(train_frames):
    """MD engines freeze the weights (requires_grad=False); gradient features must still work."""
    cfg = UncertaintyConfig(features="sketched_gradient", sketch_dim=16)
    live, frozen = ToyPotential(seed=2), ToyPotential(seed=2).requires_grad_(False)
    graph = Graph.from_atoms(train_frames[3], cutoff=4.0)
    a = predict(live, graph, fit_uncertainty(live, train_frames, cfg), forces=False)
    b = predict(frozen, graph, fit_uncertainty(frozen, train_frames, cfg), forces=False)
    torch.testing.assert_close(a[keys.ATOMIC_FEATURES], b[keys.ATOMIC_FEATURES])
    torch.testing.assert_close(a[keys.UNCERTAINTY], b[keys.UNCERTAINTY])


def test_float32_model_on_float64_graph(train_frames):
    model = ToyPotential(dtype=torch.float32)
    est = fit_uncertainty(model, train_frames, UncertaintyConfig())
    graph = Graph.from_atoms(train_frames[0], cutoff=4.0, dtype="float64")
    res = predict(model, graph, est, uncertainty_gradients=True)
    assert res[keys.FORCES].dtype == torch.float32
    assert res[keys.UNCERTAINTY].dtype == torch.float32 and float(res[keys.UNCERTAINTY][0]) > 0


@pytest.mark.parametrize("features", ["last_layer", "sketched_gradient"])
def test_estimator_from_another_model_is_rejected(train_frames, features):
    cfg = UncertaintyConfig(features=features, sketch_dim=8)
    est = fit_uncertainty(ToyPotential(hidden=(12, 8)), train_frames, cfg)
    other = ToyPotential(hidden=(12, 5))
    graph = Graph.from_atoms(train_frames[0], cutoff=4.0)
    with pytest.raises(ValueError, match="another model|different model"):
        predict(other, graph, est)
