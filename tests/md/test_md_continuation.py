"""Continued trajectories (:mod:`ubmd.md.continuation`): two runs joined by a continuation are
the trajectory one run makes, the bias window and its strength included."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.cluster import Icosahedron
from md_helpers import LJModel

from ubmd import keys
from ubmd.md.continuation import Continuation
from ubmd.md.explore import ExploreConfig, run_explorer
from ubmd.md.writer import read_candidates


def _starts():
    rng = np.random.default_rng(3)
    out = []
    for _ in range(2):
        atoms = Icosahedron("Ar", 2)
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        out.append(atoms)
    return out


def _config(n_steps: int, **kw) -> ExploreConfig:
    # NVE: no thermostat noise, so a continued run must repeat the long run exactly
    base = dict(sampler="biased_md", ensemble="nve", timestep_fs=5.0, n_steps=n_steps,
                record_every=10, window=20, tau_rel=0.5, seed=1)  # fmt: skip
    return ExploreConfig(**{**base, **kw})


def _frames_after(path, step: int) -> dict[str, np.ndarray]:
    data = read_candidates(path)
    keep = data[keys.MD_STEP] > step
    return {k: data[k][keep] for k in (keys.MD_STEP, keys.REPLICA, keys.BIAS_STRENGTH)} | {
        "first_atom": data[keys.POSITIONS][np.cumsum(data[keys.N_ATOMS]) - data[keys.N_ATOMS]][keep]
    }


def test_two_runs_joined_by_a_continuation_are_one_run(tmp_path):
    starts = _starts()
    whole = run_explorer(_config(60), LJModel(), starts, out_path=tmp_path / "whole.h5",
                         keep_ends=True)  # fmt: skip
    first = run_explorer(_config(30), LJModel(), starts, out_path=tmp_path / "a.h5", keep_ends=True)
    assert sorted(first["ends"]) == [0, 1] and first["ends"][0].step == 30
    conts = [first["ends"][r] for r in (0, 1)]
    second = run_explorer(_config(30), LJModel(), [c.atoms() for c in conts],
                          out_path=tmp_path / "b.h5", continuations=conts, keep_ends=True)  # fmt: skip
    for r in (0, 1):
        a, b = whole["ends"][r], second["ends"][r]
        assert b.step == a.step == 60
        np.testing.assert_allclose(b.positions, a.positions, rtol=0, atol=1e-10)
        np.testing.assert_allclose(b.velocities, a.velocities, rtol=0, atol=1e-12)
        for name in a.windows:
            np.testing.assert_allclose(b.windows[name], a.windows[name], rtol=1e-10)
    # the frames of the second run are the long run's from step 40 on, bias strength included:
    # the window is not started again (the long run is biased from step 20 on)
    long, cont = _frames_after(tmp_path / "whole.h5", 30), _frames_after(tmp_path / "b.h5", 30)
    np.testing.assert_array_equal(cont[keys.MD_STEP], long[keys.MD_STEP])
    np.testing.assert_allclose(cont[keys.BIAS_STRENGTH], long[keys.BIAS_STRENGTH], rtol=1e-9)
    np.testing.assert_allclose(cont["first_atom"], long["first_atom"], atol=1e-10)
    assert (cont[keys.BIAS_STRENGTH] > 0).all()


def test_a_continuation_survives_json_to_the_last_digit():
    starts = _starts()
    rng = np.random.default_rng(0)
    c = Continuation(
        numbers=starts[0].numbers, positions=rng.normal(size=(13, 3)),
        velocities=rng.normal(size=(13, 3)) * 1e-3, cell=np.zeros((3, 3)),
        pbc=np.zeros(3, dtype=bool), step=25, windows={"win_f2": rng.random(2) * 1e3},
    )  # fmt: skip
    back = Continuation.from_json(json.loads(json.dumps(c.to_json())))
    assert back.step == 25
    np.testing.assert_array_equal(back.positions, c.positions)
    np.testing.assert_array_equal(back.velocities, c.velocities)
    np.testing.assert_array_equal(back.windows["win_f2"], c.windows["win_f2"])


def test_a_continuation_of_another_structure_or_window_is_refused(tmp_path):
    starts = _starts()
    first = run_explorer(_config(20), LJModel(), starts[:1], out_path=tmp_path / "a.h5",
                         keep_ends=True)  # fmt: skip
    cont = first["ends"][0]
    with pytest.raises(ValueError, match="bias window win_f2 has"):
        run_explorer(_config(20, window=40), LJModel(), [cont.atoms()],
                     out_path=tmp_path / "b.h5", continuations=[cont])  # fmt: skip
    with pytest.raises(ValueError, match="2 continuations for 1 start structures"):
        run_explorer(_config(20), LJModel(), [cont.atoms()], out_path=tmp_path / "c.h5",
                     continuations=[cont, cont])  # fmt: skip
