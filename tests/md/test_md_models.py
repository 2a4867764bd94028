"""The engine on ubmd potentials + uncertainty estimators (posterior, distance, GMM,
ensemble), through the adapter and the `ubmd explore` command."""

from pathlib import Path

import numpy as np
import pytest
import torch
from ase.io import read
from typer.testing import CliRunner

from ubmd import keys
from ubmd.md.adapter import UBMDModel
from ubmd.md.bias import BiasConfig
from ubmd.md.evaluation import evaluate
from ubmd.md.explore import ExploreConfig, run_explorer
from ubmd.md.state import make_state
from ubmd.md.stop import StopRules
from ubmd.md.writer import read_candidates

ALA2 = Path(__file__).resolve().parents[2] / "data" / "ala2" / "ala2_xtb_300K.extxyz"
SMALL = {"n_features": 16, "n_interactions": 1, "n_basis": 8, "readout_hidden": 8}


@pytest.fixture(scope="module")
def ala2():
    return read(ALA2, ":40")


@pytest.fixture(scope="module")
def potential():
    from ubmd.models import build_model

    torch.manual_seed(0)
    return build_model("painn", [1, 6, 7, 8], options=SMALL)


def _estimator(method, potential, frames):
    from ubmd.models.ensemble import Ensemble
    from ubmd.uncertainty import UncertaintyConfig, fit_uncertainty

    model = potential
    if method == "ensemble":
        from ubmd.models import build_model

        torch.manual_seed(1)
        model = Ensemble([potential, build_model("painn", [1, 6, 7, 8], options=SMALL)])
    cfg = UncertaintyConfig(method=method, gmm_components=2)
    return model, fit_uncertainty(model, frames[:20], cfg)


@pytest.mark.parametrize("method", ["posterior", "distance", "gmm", "ensemble"])
def test_bias_force_is_gradient_of_real_uncertainty(method, potential, ala2):
    model, est = _estimator(method, potential, ala2)
    md_model = UBMDModel(model, est)
    state = make_state([ala2[30]], temperature_K=None)
    tau = 0.5
    ev = evaluate(
        state, md_model, stress=False, bias=BiasConfig(tau_eV=tau, species_weights={1: 0.0})
    )
    bias_force = (ev.forces - ev.model_forces).numpy()
    zero = torch.zeros(1, 3, 3, dtype=torch.float64)
    h = 1e-4
    for i, a in [(1, 0), (4, 2), (8, 1)]:  # heavy atoms (H weights are 0)
        p, m = state.positions.clone(), state.positions.clone()
        p[i, a] += h
        m[i, a] -= h
        up = float(md_model.outputs(p, zero, state)[keys.UNCERTAINTY][0].detach())
        dn = float(md_model.outputs(m, zero, state)[keys.UNCERTAINTY][0].detach())
        assert bias_force[i, a] == pytest.approx(tau * (up - dn) / (2 * h), rel=1e-4, abs=1e-9)
    h_atoms = ala2[30].numbers == 1
    assert np.abs(bias_force[h_atoms]).max() == 0.0
    assert np.abs(bias_force[~h_atoms]).max() > 0.0


def test_biased_explorer_with_calibrated_posterior_and_cli(potential, ala2, tmp_path):
    from ubmd.cli import app, get_app
    from ubmd.uncertainty import calibrate_model, save_bundle

    model, est = _estimator("posterior", potential, ala2)
    cal = calibrate_model(model, est, ala2[20:40])
    md_model = UBMDModel(model, est, cal)
    u0 = float(evaluate(make_state([ala2[0]], temperature_K=None), md_model, stress=False)
               .outputs[keys.CALIBRATED_ATOMIC_UNCERTAINTY].max())  # fmt: skip
    config = ExploreConfig(n_steps=30, record_every=10, window=5, tau_rel=0.5,
                           stop=StopRules(max_atomic_uncertainty=2 * u0))  # fmt: skip
    out = tmp_path / "c.h5"
    summary = run_explorer(config, md_model, [ala2[0], ala2[5]], out_path=out, replicas=2)
    data = read_candidates(out)
    assert set(data[keys.REPLICA].tolist()) == {0, 1}
    assert np.isfinite(data[keys.CALIBRATED_ATOMIC_UNCERTAINTY]).all()
    assert data[keys.FEATURES].shape[0] == summary["n_frames"]
    for rid, rec in summary["replicas"].items():
        last = np.flatnonzero(data[keys.REPLICA] == rid)[-1]
        assert data[keys.STOP_REASON][last] == rec["stop_reason"] != ""
    assert (data[keys.BIAS_STRENGTH][data[keys.MD_STEP] >= 10] > 0).all()

    # the command line: same model from a file
    get_app()
    path = tmp_path / "model.pt"
    save_bundle(path, model, est, cal)
    # the library takes the file path or a (model, estimator, calibration) tuple as well
    small = ExploreConfig(n_steps=4, record_every=2, window=2)
    for bundle in (str(path), (model, est, cal)):
        res = run_explorer(small, bundle, [ala2[0]], out_path=tmp_path / "b.h5", replicas=1)
        assert res["replicas"][0]["stop_reason"] == "max_steps"
    with pytest.raises(TypeError, match="cannot use a int"):
        run_explorer(small, 3, [ala2[0]], out_path=tmp_path / "b.h5")
    xyz = tmp_path / "start.xyz"
    ala2[0].write(xyz)
    runner = CliRunner()
    res = runner.invoke(app, ["explore", str(path), str(xyz), "--steps", "12", "--replicas", "2",
                              "--record-every", "6", "--window", "4", "--species-weight", "H=0",
                              "--max-atomic-uncertainty", "1e6", "-o", str(tmp_path / "cli.h5")])  # fmt: skip
    assert res.exit_code == 0, res.output
    cli = read_candidates(tmp_path / "cli.h5")
    assert list(cli[keys.MD_STEP]) == [6, 6, 12, 12]
    assert set(cli[keys.STOP_REASON]) == {"", "max_steps"}
    res = runner.invoke(app, ["explore", str(path), str(xyz), "--steps", "6", "--replicas", "1",
                              "--sampler", "uncertainty_cv", "--hill-pace", "2", "--record-every",
                              "3", "-o", str(tmp_path / "cv.h5")])  # fmt: skip
    assert res.exit_code == 0, res.output
    cv = read_candidates(tmp_path / "cv.h5")
    assert set(cv[keys.SAMPLER]) == {"uncertainty_cv"} and list(cv[keys.MD_STEP]) == [3, 6]
    # bad input -> "error: ..." and exit 2
    save_bundle(tmp_path / "nocal.pt", model, est)
    bad = [
        (["explore", str(tmp_path / "nocal.pt"), str(xyz), "--max-atomic-uncertainty", "1.5"], "calibrat"),
        (["explore", str(path), str(xyz), "--temperature", "0"], "temperature_K must be > 0"),
        (["explore", str(path), str(xyz), "--npt"], "NPT needs periodic"),
        (["explore", str(path), str(tmp_path / "missing.xyz")], "does not exist"),
        (["explore", "emt", str(xyz)], "sampler 'md'"),
        (["explore", str(path), str(xyz), "--species-weight", "Hx=0"], "SYMBOL=WEIGHT"),
        (["explore", str(path), str(xyz), "--dtype", "float32"], "computes in float64"),
    ]  # fmt: skip
    for args, msg in bad:
        res = runner.invoke(app, [*args, "-o", str(tmp_path / "bad.h5"), "--steps", "2"])
        assert res.exit_code == 2, (args, res.output)
        assert "error:" in res.output and msg in res.output, (args, res.output)


def test_atom_based_ensemble_bias_needs_force_graph(potential, ala2):
    model, est = _estimator("ensemble", potential, ala2)
    state = make_state([ala2[30]], temperature_K=None)
    bias = BiasConfig(tau_eV=0.5, uncertainty_key=keys.ATOMIC_UNCERTAINTY)
    with pytest.raises(ValueError, match="create_graph=True"):
        evaluate(state, UBMDModel(model, est), stress=False, bias=bias)
    ev = evaluate(state, UBMDModel(model, est, create_graph=True), stress=False, bias=bias)
    assert float((ev.forces - ev.model_forces).abs().max()) > 0
