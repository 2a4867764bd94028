"""Campaign features end to end on parsl: an ensemble, MACE, NPT with the bias stress, starting
from the store and from labelled data, start structures from a store file, and the label-budget
and target-error stopping rules.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from ubmd import keys
from ubmd.campaign.frames import read_frames
from ubmd.campaign.layout import CampaignLayout, read_json
from ubmd.campaign.learning import energy_above_minimum
from ubmd.md.writer import read_candidates
from ubmd.store import StructureStore

ROOT = Path(__file__).resolve().parents[2]
ALA2_300K = ROOT / "data" / "ala2" / "ala2_xtb_300K.extxyz"

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]


def _run(config: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ubmd.cli", "run", str(config), "--site", "local", "--no-live"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=800)


def _edit(config: Path, change) -> Path:
    data = yaml.safe_load(config.read_text())
    change(data)
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return config


def _labelled_frames(path: Path, n: int) -> None:
    import ase.io

    ase.io.write(path, ase.io.read(ALA2_300K, index=f":{n}"), format="extxyz")


def _iterations(store: Path) -> np.ndarray:
    with StructureStore.open(store, mode="r") as st:
        return np.asarray(st.read_arrays()[keys.ITERATION])


def test_ensemble_from_store_with_labelled_data_stops_at_label_budget(shrunk, tmp_path):
    import ase.io

    # a start structure given as a ubmd store (.h5): its one labelled frame
    start = tmp_path / "start.h5"
    with StructureStore.create(start) as st:
        st.append([ase.io.read(ALA2_300K, index=0)])
    _labelled_frames(tmp_path / "labelled.extxyz", 6)

    def change(d):
        d["systems"][0]["structure"] = str(start)
        d["initial_data"]["labelled"] = [str(tmp_path / "labelled.extxyz")]
        d["model"]["ensemble_size"] = 2
        d["uncertainty"]["settings"] = {"method": "ensemble"}
        d["exploration"]["start_from"] = "store"
        d["stopping"]["label_budget"] = 5  # batches of 3: reached after iteration 2

    config = _edit(shrunk(name="ens", iterations=5), change)
    res = _run(config)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "label budget reached (6 >= 5)" in res.stdout
    layout = CampaignLayout(tmp_path / "ens")
    its = _iterations(layout.store)
    # 6 imported (iteration -1), 10 displacements (0), 3 + 3 by active learning
    assert [int((its == i).sum()) for i in (-1, 0, 1, 2, 3)] == [6, 10, 3, 3, 0]
    # iteration 2 explored from the system's structure and those of iteration 1's three labels
    # that training keeps (model.max_energy_above_min_eV_atom of the quickstart)
    limit = (
        yaml.safe_load(config.read_text())["model"].get("max_energy_above_min_eV_atom") or np.inf
    )
    with StructureStore.open(layout.store, mode="r") as st:
        ok = st.read_arrays(status="ok")
        kept = (ok[keys.ITERATION] == 1) & (energy_above_minimum(ok) <= limit)
        atoms = st.read_atoms(indices=st.select(status="ok")[kept])
    labelled_1 = {a.positions.tobytes() for a in atoms}
    starts = read_frames(layout.starts(2))
    assert len(starts) == 1 + len(labelled_1)
    assert {a.positions.tobytes() for a in starts[1:]} == labelled_1
    assert len(read_frames(layout.starts(1))) == 1
    # an ensemble of two members all the way to the final model
    assert layout.final_member(0).exists() and layout.final_member(1).exists()
    assert not layout.final_member(2).exists()
    final = read_json(layout.final_report)
    assert final["labels"] == 22 and 0 < final["test"]["force_rmse_eV_A"] < 2.0


def test_target_force_rmse_stops_the_campaign(shrunk, tmp_path):
    config = _edit(
        shrunk(name="target", iterations=5),
        lambda d: d["stopping"].update(target_force_rmse_eV_A=50.0),
    )
    res = _run(config)
    assert res.returncode == 0, res.stderr[-4000:]
    layout = CampaignLayout(tmp_path / "target")
    rmse = read_json(layout.report(1))["test"]["force_rmse_eV_A"]
    assert f"held-out force RMSE {rmse:.4f} <= target 50.0" in res.stdout
    assert layout.iterations_present() == [0, 1]
    assert layout.final_report.exists()


def test_mace_campaign(shrunk, tmp_path):
    pytest.importorskip("mace")

    def change(d):
        d["model"]["kind"] = "mace"
        d["model"]["hyperparameters"] = {"n_channels": 8, "max_L": 0, "cutoff": 4.0}
        d["model"]["training"] = {"max_epochs": 3, "patience": 3}
        d["model"]["fine_tuning"] = {"max_epochs": 2, "patience": 2}

    config = _edit(shrunk(name="mace", iterations=1), change)
    res = _run(config)
    assert res.returncode == 0, res.stderr[-4000:]
    layout = CampaignLayout(tmp_path / "mace")
    final = read_json(layout.final_report)
    with StructureStore.open(layout.store, mode="r") as st:
        n_ok = len(st.select(status="ok"))
    assert final["labels"] == n_ok >= 12  # 10 initial + up to 3 (a label may fail)
    assert np.isfinite(final["test"]["force_rmse_eV_A"])


def test_npt_with_the_bias_stress_on_mil53(tmp_path):
    """A shrunk mil53_npt: periodic cells, GFN1-xTB stress labels, the barostat moving the cell
    under the bias stress; the labelled cells differ from the start cells."""
    data = yaml.safe_load((ROOT / "workflows" / "mil53_npt" / "campaign.yaml").read_text())
    for system in data["systems"]:
        system["structure"] = str(ROOT / "workflows" / "mil53_npt" / system["structure"])
    data["evaluation"]["test_set"] = str(ROOT / "data" / "mil53" / "mil53_gfn1_test.extxyz")
    data.update(name="npt", directory=str(tmp_path / "npt"))
    data["initial_data"]["random_displacements"] = 5  # x 2 systems
    data["model"]["training"] = {"max_epochs": 6, "patience": 6, "stress_weight": 10.0}
    data["model"]["fine_tuning"] = {"max_epochs": 3, "patience": 3}
    data["model"]["hyperparameters"] = {"cutoff": 5.0, "n_features": 16}
    data["exploration"].update(explorers=1, replicas=2, compile=False)
    # a 10-step window: the adaptive bias (forces and stress) is on from step 10
    # trajectories run their 60 steps (no uncertainty stop: the 6-epoch model is unsure everywhere)
    data["exploration"]["settings"].update(n_steps=60, record_every=20, window=10)
    data["exploration"]["settings"]["stop"]["max_atomic_uncertainty"] = None
    data["selection"]["batch_size"] = 2
    data["stopping"]["max_iterations"] = 1
    config = tmp_path / "npt.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    res = _run(config)
    assert res.returncode == 0, res.stderr[-4000:]
    layout = CampaignLayout(tmp_path / "npt")
    with StructureStore.open(layout.store, mode="r") as st:
        arrays = st.read_arrays(iteration=1)
    assert arrays[keys.HAS_STRESS].all() and np.isfinite(arrays[keys.STRESS]).all()
    # the explorers' frames: the bias stress switched on after its window, cells moved
    cands = read_candidates(layout.explorer(1, 0))
    after = cands[keys.MD_STEP] >= 20
    assert after.any() and (cands[keys.BIAS_STRESS_STRENGTH][after] > 0).all()
    volumes = np.abs(np.linalg.det(np.asarray(cands[keys.CELL]).reshape(-1, 3, 3)))
    starts = np.array([802.3, 1427.4])
    assert (np.abs(volumes[after][:, None] - starts).min(axis=1) > 0.01).all(), volumes
    final = read_json(layout.final_report)
    assert final["test"]["n_stress"] == 48 and final["test"]["stress_rmse_meV_A3"] > 0


def test_no_new_candidates_stops_the_campaign(shrunk, tmp_path):
    # a threshold no model meets: every replica stops at its first frame, so the candidates are
    # the start structures; iteration 1 labels the system's start structure, and from
    # iteration 2 on (start_from: store) every start is labelled already: nothing new to pick
    def change(d):
        d["exploration"]["start_from"] = "store"
        d["exploration"]["settings"]["stop"] = {"max_atomic_uncertainty": 1e-9}

    config = _edit(shrunk(name="nocand", iterations=5), change)
    res = _run(config)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "iteration 2: no new candidates" in res.stdout, res.stdout[-2000:]
    layout = CampaignLayout(tmp_path / "nocand")
    assert list(_iterations(layout.store)).count(1) == 1  # the start structure, labelled once
    assert layout.final_report.exists()
