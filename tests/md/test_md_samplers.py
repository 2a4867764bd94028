"""Uncertainty-as-CV metadynamics and adversarial attacks."""

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.cluster import Icosahedron
from md_helpers import LJModel

from ubmd import keys
from ubmd.md.evaluation import evaluate
from ubmd.md.explore import ExploreConfig, run_explorer
from ubmd.md.samplers import AdversarialConfig, HillsBias, UncertaintyCVConfig, run_adversarial
from ubmd.md.state import make_state
from ubmd.md.writer import read_candidates


def test_hills_bias_force_and_stress_are_gradients_of_v_of_xi():
    atoms = bulk("Ar", "fcc", a=5.3, cubic=True).repeat(2)
    atoms.rattle(0.1, seed=3)
    state = make_state([atoms], temperature_K=None)
    model = LJModel(calibrated=True, cutoff=5.0)
    cfg = UncertaintyCVConfig(height_eV=0.1, width=0.05)
    hills = HillsBias(cfg)
    zero = torch.zeros(1, 3, 3, dtype=torch.float64)
    xi0 = float(model.outputs(state.positions, zero, state)[keys.CALIBRATED_UNCERTAINTY][0])
    hills.centers = torch.tensor([[xi0 - 0.03, xi0 + 0.08]], dtype=torch.float64)
    hills.heights = torch.tensor([[0.1, 0.05]], dtype=torch.float64)

    def v_of(pos, strain):
        xi = model.outputs(pos, strain, state)[keys.CALIBRATED_UNCERTAINTY].detach()
        return float(hills.potential(xi, state.replica_id)[0][0])

    ev = evaluate(state, model, stress=True, bias=hills)
    assert float(ev.biased_energy[0]) == float(ev.energy[0]) + v_of(state.positions, zero)
    bias_f = (ev.forces - ev.model_forces).numpy()
    h = 1e-5
    for i, a in [(0, 0), (5, 1), (17, 2)]:
        p, m = state.positions.clone(), state.positions.clone()
        p[i, a] += h
        m[i, a] -= h
        assert bias_f[i, a] == pytest.approx(-(v_of(p, zero) - v_of(m, zero)) / (2 * h), rel=1e-5)
    bias_s = (ev.stress - ev.model_stress)[0].numpy()
    e = zero.clone()
    e[0, 0, 1] = e[0, 1, 0] = h / 2
    fd = (v_of(state.positions, e) - v_of(state.positions, -e)) / (2 * h) / atoms.get_volume()
    assert bias_s[0, 1] == pytest.approx(fd, rel=1e-5)
    assert abs(bias_f).max() > 1e-4


def test_uncertainty_cv_sampler_deposits_hills_and_explores_wider(tmp_path):
    cluster = Icosahedron("Ar", 2)
    model = LJModel(calibrated=True)

    def run(sampler):
        cfg = ExploreConfig(sampler=sampler, temperature_K=20.0, timestep_fs=5.0, n_steps=600,
                            record_every=10, seed=2,
                            uncertainty_cv=UncertaintyCVConfig(height_eV=0.02, width=0.05, pace=20))  # fmt: skip
        run_explorer(cfg, model, [cluster], out_path=tmp_path / f"{sampler}.h5", replicas=2)
        return read_candidates(tmp_path / f"{sampler}.h5")

    md, cv = run("md"), run("uncertainty_cv")
    assert set(cv[keys.SAMPLER]) == {"uncertainty_cv"}
    assert np.ptp(cv[keys.CALIBRATED_UNCERTAINTY]) > 1.5 * np.ptp(md[keys.CALIBRATED_UNCERTAINTY])
    assert np.abs(cv[keys.BIAS_STRENGTH]).max() > 0  # dV/dxi recorded


def test_adversarial_attack_raises_uncertainty(tmp_path):
    cluster = Icosahedron("Ar", 2)
    model = LJModel()
    state = make_state([cluster], temperature_K=None)
    zero = torch.zeros(1, 3, 3, dtype=torch.float64)
    out0 = model.outputs(state.positions, zero, state)
    e0, u0 = float(out0[keys.ENERGY][0]), float(out0[keys.UNCERTAINTY][0])
    cfg = AdversarialConfig(training_energies_eV=(e0, e0 + 0.01), temperature_K=300.0,
                            n_iterations=60, learning_rate_A=0.01, record_every=20)  # fmt: skip
    summary = run_adversarial(cfg, model, [cluster, cluster], out_path=tmp_path / "adv.h5")
    data = read_candidates(tmp_path / "adv.h5")
    assert set(data[keys.SAMPLER]) == {"adversarial"}
    assert list(data[keys.MD_STEP]) == [20, 20, 40, 40, 60, 60]
    assert summary["stop_reasons"] == {0: "max_steps", 1: "max_steps"}
    u = data[keys.UNCERTAINTY]
    assert (u > u0).all()
    kT = 300.0 * 8.617333e-5
    objective = np.log(u) - (data[keys.ENERGY] - e0) / kT  # ascended by Adam
    assert (objective > np.log(u0)).all() and objective[-1] > objective[0]
    # the attack stays near low energies: kT = 26 meV keeps it close to the start
    disp = np.abs(data[keys.POSITIONS][-13:] - cluster.positions).max()
    assert 0.01 < disp < 1.0
    with pytest.raises(ValueError, match="training energies"):
        AdversarialConfig(training_energies_eV=())
    with pytest.raises(ValueError, match="differentiable"):
        from ubmd.md.forcefield import ASEForceField

        run_adversarial(cfg, ASEForceField(lambda: None), [cluster], out_path=tmp_path / "x.h5")


def test_cv_config_errors():
    with pytest.raises(ValueError, match="hills need"):
        UncertaintyCVConfig(width=0.0)
    state = make_state([Icosahedron("Ar", 2)], temperature_K=None)
    with pytest.raises(ValueError, match="not among the model outputs"):
        evaluate(state, LJModel(), stress=False, bias=HillsBias(UncertaintyCVConfig()))


def test_adversarial_from_the_command_line(tmp_path):
    """`ubmd explore --sampler adversarial --training-data FILE`: attacks on a ubmd model
    file, Q from the file's energies; missing training data is a clear error."""
    from pathlib import Path

    from ase.io import read
    from typer.testing import CliRunner

    from ubmd.cli import app, get_app
    from ubmd.models import build_model
    from ubmd.uncertainty import UncertaintyConfig, fit_uncertainty, save_bundle

    data = Path(__file__).resolve().parents[2] / "data" / "ala2" / "ala2_xtb_300K.extxyz"
    torch.manual_seed(0)
    model = build_model("painn", [1, 6, 7, 8], options={"n_features": 8, "n_basis": 4})
    save_bundle(
        tmp_path / "m.pt", model, fit_uncertainty(model, read(data, ":8"), UncertaintyConfig())
    )
    read(data, index=0).write(tmp_path / "s.xyz")
    get_app()
    args = ["explore", str(tmp_path / "m.pt"), str(tmp_path / "s.xyz"), "--sampler", "adversarial",
            "--steps", "6", "--record-every", "3", "-o", str(tmp_path / "adv.h5")]  # fmt: skip
    res = CliRunner().invoke(app, [*args, "--training-data", str(data)])
    assert res.exit_code == 0, res.output
    cands = read_candidates(tmp_path / "adv.h5")
    assert set(cands[keys.SAMPLER]) == {"adversarial"} and list(cands[keys.MD_STEP]) == [3, 6]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "needs --training-data" in res.output
