"""Stop rules per replica, refilled slots, blow-ups, bad input."""

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.cluster import Icosahedron
from md_helpers import LJModel

from ubmd import keys
from ubmd.md.explore import ExploreConfig, run_explorer
from ubmd.md.stop import StopRules
from ubmd.md.writer import read_candidates


class NaNAfter(LJModel):
    """LJ whose energy turns NaN for replica id 1 from MD step ``after`` on."""

    def __init__(self, after, **kw):
        super().__init__(**kw)
        self.after = after

    def outputs(self, positions, strain, state):
        out = super().outputs(positions, strain, state)
        bad = (state.replica_id == 1) & (state.step >= self.after)
        out[keys.ENERGY] = torch.where(bad, float("nan"), out[keys.ENERGY])
        return out


def _run(tmp_path, model, structures, name, *, replicas=None, **cfg):
    config = ExploreConfig(**{"temperature_K": 30.0, "timestep_fs": 4.0, "n_steps": 40,
                              "record_every": 10, "window": 5, **cfg})  # fmt: skip
    out = tmp_path / f"{name}.h5"
    summary = run_explorer(config, model, structures, out_path=out, replicas=replicas)
    return summary, read_candidates(out)


def test_each_stop_rule_stops_with_its_reason(tmp_path):
    ico = Icosahedron("Ar", 2)
    close = ico.copy()
    close.positions[1] = close.positions[0] + [0.4, 0, 0]
    cases = {
        "max_steps": (LJModel(), [ico], {}),
        "too_close": (LJModel(), [close], {"stop": StopRules(min_distance_A=0.5, max_force_eV_A=None)}),
        "force": (LJModel(), [ico], {"stop": StopRules(max_force_eV_A=1e-4)}),
        "atomic_uncertainty": (LJModel(calibrated=True), [ico],
                               {"stop": StopRules(max_atomic_uncertainty=1.0)}),
        "uncertainty": (LJModel(calibrated=True), [ico], {"stop": StopRules(max_uncertainty=1.0)}),
    }  # fmt: skip
    for reason, (model, structs, cfg) in cases.items():
        summary, data = _run(tmp_path, model, structs, reason, **cfg)
        assert summary["replicas"][0]["stop_reason"] == reason, reason
        assert data[keys.STOP_REASON][-1] == reason
        if reason == "max_steps":
            assert summary["replicas"][0]["steps"] == 40
            assert list(data[keys.MD_STEP]) == [10, 20, 30, 40]
        else:
            assert summary["replicas"][0]["steps"] == 0  # the start frame already breaks it
            assert list(data[keys.MD_STEP]) == [0]
    # calibrated thresholds sit just between steps: a replica under it runs on
    summary, _ = _run(tmp_path, LJModel(calibrated=True), [ico], "under",
                      stop=StopRules(max_atomic_uncertainty=1e6, max_uncertainty=1e6))  # fmt: skip
    assert summary["replicas"][0]["stop_reason"] == "max_steps"


def test_nan_stops_one_replica_others_go_on_and_slot_is_refilled(tmp_path):
    ico = Icosahedron("Ar", 2)
    model = NaNAfter(after=5)
    summary, data = _run(tmp_path, model, [ico, ico, ico], "nan", replicas=2)
    reasons = {k: v["stop_reason"] for k, v in summary["replicas"].items()}
    assert reasons == {0: "max_steps", 1: "nan", 2: "max_steps"}
    assert summary["replicas"][1]["steps"] == 5  # initial call + 4 steps fine, 5th NaN
    # the refilled slot (replica 2) ran its full trajectory; candidates from all three
    assert set(data[keys.REPLICA].tolist()) == {0, 1, 2}
    nan_rows = np.flatnonzero(data[keys.STOP_REASON] == "nan")
    assert len(nan_rows) == 1 and data[keys.REPLICA][nan_rows[0]] == 1
    # its stop frame is the last finite one (before the failing step), not NaNs
    assert data[keys.MD_STEP][nan_rows[0]] == 4
    assert np.isfinite(data[keys.ENERGY]).all() and np.isfinite(data[keys.POSITIONS]).all()
    assert np.isfinite(data[keys.FEATURES]).all()


def test_nan_frame_survives_an_integrator_that_writes_in_place(tmp_path, monkeypatch):
    """The last finite frame is a copy taken before the step, so it holds even when the
    step overwrites the old tensors (here: a wrapped step copying its results into them)."""
    import ubmd.md.explore as explore_mod

    real = explore_mod.langevin_step

    def in_place(state, model, **kw):
        old = state.positions, state.velocities
        ev = real(state, model, **kw)
        old[0].copy_(state.positions)
        old[1].copy_(state.velocities)
        state.positions, state.velocities = old
        return ev

    monkeypatch.setattr(explore_mod, "langevin_step", in_place)
    ico = Icosahedron("Ar", 2)
    _, data = _run(tmp_path, NaNAfter(after=5), [ico, ico], "inplace", record_every=1, n_steps=8)
    mine = data[keys.REPLICA] == 1
    assert data[keys.MD_STEP][mine].tolist() == [1, 2, 3, 4, 4]
    assert data[keys.STOP_REASON][mine][-1] == "nan"
    pos = data[keys.POSITIONS].reshape(-1, len(ico), 3)[mine]
    np.testing.assert_array_equal(pos[-1], pos[-2])  # the frame of step 4, again


def test_replica_pool_assigns_starts_in_turn():
    from ubmd.md.replicas import ReplicaPool

    a, b = Atoms("Ar"), Atoms("Ne")
    pool = ReplicaPool([a, b], n_slots=3)
    assert pool.n_runs == 3
    ids, atoms, conts = pool.take(2)
    assert ids == [0, 1] and atoms == [a, b] and conts == [None, None]
    pool.started(ids, ["", "too_close"])
    assert pool.info[1] == {"start_index": 1, "stop_reason": "too_close", "steps": 0}
    ids, atoms, _ = pool.take(5)
    assert ids == [2] and atoms == [a] and not pool.waiting
    pool.started(ids, [""])
    pool.stopped(2, "max_steps", 7)
    assert pool.info[2] == {"start_index": 0, "stop_reason": "max_steps", "steps": 7}
    assert ReplicaPool([a, b, a], n_slots=1).n_runs == 3  # every structure runs once


def test_blow_up_ends_cleanly(tmp_path):
    """A far too long timestep on a compressed crystal: the replica ends with a reason,
    a readable candidate file and no exception; a sane replica in the batch goes on."""
    hot = bulk("Ar", "fcc", a=3.8, cubic=True).repeat(2)  # strongly compressed argon
    sane = Icosahedron("Ar", 2)  # the same 40 fs steps are fine for it at 30 K
    settings = {"timestep_fs": 40.0, "n_steps": 30,
                "stop": StopRules(min_distance_A=1.0, max_force_eV_A=20.0)}  # fmt: skip
    summary, data = _run(tmp_path, LJModel(cutoff=4.0), [hot, sane], "blow", **settings)
    assert summary["replicas"][0]["stop_reason"] in ("force", "too_close", "nan")
    assert 0 < summary["replicas"][0]["steps"] < 30  # blew up during MD, not at the start
    assert np.isfinite(data[keys.POSITIONS]).all()
    # the sane replica ran every step: its frames every 10 steps up to the step limit, finite
    assert summary["replicas"][1] == {"start_index": 1, "stop_reason": "max_steps", "steps": 30}
    mine = data[keys.REPLICA] == 1
    assert list(data[keys.MD_STEP][mine]) == [10, 20, 30]
    assert list(data[keys.STOP_REASON][mine]) == ["", "", "max_steps"]
    atoms_of = np.repeat(data[keys.REPLICA], data[keys.N_ATOMS]) == 1
    for key, rows in ((keys.ENERGY, mine), (keys.POSITIONS, atoms_of), (keys.FORCES, atoms_of)):
        assert np.isfinite(data[key][rows]).all(), key
    # and exactly as it runs next to a sane twin (same replica id, so the same noise): the
    # blow-up beside it did not touch its trajectory
    _, twin = _run(tmp_path, LJModel(cutoff=4.0), [sane, sane], "twin", **settings)
    twin_rows = twin[keys.REPLICA] == 1
    twin_atoms = np.repeat(twin[keys.REPLICA], twin[keys.N_ATOMS]) == 1
    np.testing.assert_allclose(
        data[keys.ENERGY][mine], twin[keys.ENERGY][twin_rows], rtol=0, atol=1e-12
    )
    np.testing.assert_allclose(
        data[keys.POSITIONS][atoms_of], twin[keys.POSITIONS][twin_atoms], rtol=0, atol=1e-10
    )


def test_bad_input(tmp_path):
    ico = Icosahedron("Ar", 2)
    with pytest.raises(ValueError, match="calibrated model"):
        _run(tmp_path, LJModel(), [ico], "nocal", stop=StopRules(max_atomic_uncertainty=1.5))
    with pytest.raises(ValueError, match="NPT needs periodic"):
        _run(tmp_path, LJModel(), [ico], "npt", ensemble="npt")
    with pytest.raises(ValueError, match="temperature_K must be > 0"):
        ExploreConfig(temperature_K=0.0)
    with pytest.raises(ValueError, match="temperature_K must be > 0"):
        ExploreConfig(temperature_K=-10.0)
    with pytest.raises(ValueError, match="sampler"):
        ExploreConfig(sampler="magic")
    with pytest.raises(ValueError, match="min_distance_A"):
        StopRules(min_distance_A=0.0)
    with pytest.raises(ValueError, match="no start structures"):
        _run(tmp_path, LJModel(), [], "empty")
    with pytest.raises(ValueError, match="needs the model to return"):
        _run(tmp_path, _NoUncertainty(), [ico], "nou")
    atom = Atoms("Ar", positions=[[0, 0, 0]])
    summary, _ = _run(tmp_path, LJModel(), [atom, ico], "single", sampler="md")
    assert summary["replicas"][0]["stop_reason"] == "max_steps"


class _NoUncertainty(LJModel):
    def outputs(self, positions, strain, state):
        out = super().outputs(positions, strain, state)
        return {keys.ENERGY: out[keys.ENERGY]}


def test_min_distance_uses_minimum_image():
    from ubmd.md.state import make_state
    from ubmd.md.stop import min_distances

    atoms = bulk("Cu", cubic=True)  # a = 3.61, nearest neighbours at a/sqrt(2)
    atoms.positions[0] = [0.05, 0.05, 0.05]
    atoms.positions[1] = [3.56, 0.05, 0.05]  # 0.1 Å through the boundary
    mol = Icosahedron("Ar", 2)
    d = min_distances(make_state([atoms, mol], temperature_K=None))
    assert float(d[0]) == pytest.approx(3.61 - 3.51, abs=1e-6)
    expect = min(
        np.linalg.norm(mol.positions[i] - mol.positions[j]) for i in range(13) for j in range(i)
    )
    assert float(d[1]) == pytest.approx(expect)
    assert torch.isfinite(d).all()


def test_min_distance_large_replicas_use_neighbour_lists():
    from ubmd.md.state import make_state
    from ubmd.md.stop import min_distances

    big = bulk("Cu", cubic=True).repeat((3, 3, 4))  # 144 atoms
    big.rattle(0.05, seed=1)
    big.positions[7] = big.positions[3] + [0.3, 0.0, 0.0]
    small = big[:100]
    small.pbc = False
    state = make_state([big, small], temperature_K=None)
    d_nl = min_distances(state, bound=0.5)
    d_dense = min_distances(state)  # no bound: dense path for every size
    assert float(d_nl[0]) == pytest.approx(0.3, abs=1e-9)
    torch.testing.assert_close(d_nl, d_dense)
    far = make_state([bulk("Cu", cubic=True).repeat((3, 3, 4))], temperature_K=None)
    assert float(min_distances(far, bound=0.5)[0]) == float("inf")  # none closer than 0.5


def test_explore_config_from_a_campaign_mapping():
    """YAML-like dicts build the nested configs (schedules, stop rules, hills)."""
    from ubmd.md.samplers import UncertaintyCVConfig
    from ubmd.md.schedule import LinearRamp
    from ubmd.strict import ConfigError, build

    cfg = build(ExploreConfig, {
        "sampler": "uncertainty_cv", "temperature_K": {"start": 300, "end": 600, "n_steps": 100},
        "stop": {"max_atomic_uncertainty": 1.5}, "species_weights": {"H": 0},
        "uncertainty_cv": {"height_eV": 0.1},
    }, "exploration.settings")  # fmt: skip
    assert cfg.temperature_K == LinearRamp(300.0, 600.0, 100)
    assert cfg.stop.max_atomic_uncertainty == 1.5
    assert cfg.uncertainty_cv == UncertaintyCVConfig(height_eV=0.1)
    assert cfg.bias().config.height_eV == 0.1
    assert ExploreConfig(species_weights={"H": 0}).bias().species_weights == {1: 0.0}
    with pytest.raises(ConfigError, match="not an element symbol"):
        build(ExploreConfig, {"species_weights": {"Hx": 0}}, "exploration.settings")


def test_explorer_stop_checks_take_the_force_calls_pair_distances(tmp_path, monkeypatch):
    """Every step the too-close rule takes its distances from the Verlet lists of that
    step's force call, never from an all-pairs distance matrix of its own (that matrix
    cost ~7 % of a compiled 32-replica alanine dipeptide step), and gets the same values;
    the reasons of the whole batch come back in one transfer per check."""
    from pathlib import Path

    from ase.io import read

    import ubmd.md.stop as stop_mod
    from ubmd.md.adapter import UBMDModel
    from ubmd.md.neighbours import VerletLists
    from ubmd.models import build_model

    dense = stop_mod.min_distances
    dense_calls, from_lists = [], []
    monkeypatch.setattr(stop_mod, "min_distances",
                        lambda *a, **kw: dense_calls.append(1) or dense(*a, **kw))  # fmt: skip
    real = VerletLists.min_distances

    def checked(self, state, bound):
        d = real(self, state, bound)
        if d is not None:
            torch.testing.assert_close(d, dense(state))
            from_lists.append(state.n_replicas)
        return d

    monkeypatch.setattr(VerletLists, "min_distances", checked)
    transfers = []
    tolist = torch.Tensor.tolist

    def counted(t):
        transfers.append(tuple(t.shape))
        return tolist(t)

    ala2 = Path(__file__).resolve().parents[2] / "data" / "ala2" / "ala2_xtb_300K.extxyz"
    frames = read(ala2, ":3")
    close = frames[2].copy()
    close.positions[1] = close.positions[0] + [0.3, 0.0, 0.0]
    torch.manual_seed(0)
    small = {"n_features": 16, "n_interactions": 1, "n_basis": 8, "readout_hidden": 8}
    md = UBMDModel(build_model("painn", [1, 6, 7, 8], options=small))
    config = ExploreConfig(sampler="md", n_steps=12, record_every=6, timestep_fs=0.5)
    state, ev = _evaluated(md, frames[:2])
    with monkeypatch.context() as m:
        m.setattr(stop_mod.torch.Tensor, "tolist", counted)
        reasons = stop_mod.check_stops(state, ev, config.stop, model=md)
    assert reasons == ["", ""] and len(transfers) == 1  # one transfer for the batch
    summary = run_explorer(config, md, [*frames[:2], close], out_path=tmp_path / "c.h5")
    assert summary["replicas"][2] == {"start_index": 2, "stop_reason": "too_close", "steps": 0}
    assert [summary["replicas"][r]["stop_reason"] for r in (0, 1)] == ["max_steps"] * 2
    assert dense_calls == []
    assert from_lists == [2, 3] + [2] * 12  # the check above, the start, then every step


def _evaluated(md, frames):
    from ubmd.md.integrators import initialize
    from ubmd.md.state import make_state

    state = make_state(frames, temperature_K=300, seed=0, dtype=md.dtype)
    return state, initialize(state, md)
