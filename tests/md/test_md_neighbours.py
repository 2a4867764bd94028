"""Verlet lists of the batched engine: exactly the pairs a fresh search gives, at every step,
with far fewer searches; and the compiled model path gives the eager forces."""

from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.io import read

from ubmd.md.adapter import UBMDModel
from ubmd.md.integrators import initialize, langevin_step
from ubmd.md.neighbours import VerletLists
from ubmd.md.state import make_state, select_replicas
from ubmd.models.graph import neighbour_list

ALA2 = Path(__file__).resolve().parents[2] / "data" / "ala2" / "ala2_xtb_300K.extxyz"
SMALL = {"n_features": 16, "n_interactions": 1, "n_basis": 8, "readout_hidden": 8}


def _edge_set(edge_index, shifts) -> set:
    i, j = edge_index.tolist()
    s = [tuple(x) for x in np.rint(shifts.cpu().numpy()).astype(int).tolist()]
    return set(zip(i, j, s, strict=True))


def _fresh_set(state, cutoff) -> set:
    out, start = set(), 0
    for r, n in enumerate(state.n_atoms.tolist()):
        pos = state.positions[start : start + n].numpy()
        e, s = neighbour_list(pos, state.cell[r].numpy(), state.pbc[r].numpy(), cutoff)
        out |= _edge_set(torch.as_tensor(e) + start, torch.as_tensor(s))
        start += n
    return out


def test_verlet_lists_match_fresh_search_every_step():
    """Random walks of a periodic crystal (its cell changing now and then, as under NPT)
    and a molecule: the kept list equals vesin's at cutoff at each of 60 steps."""
    rng = np.random.default_rng(0)
    cu = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    mol = read(ALA2, index=0)
    state = make_state([cu, mol, cu.copy()], temperature_K=300, seed=0)
    lists = VerletLists(4.0, skin_A=0.8)
    for step in range(60):
        g = lists.graph(state)
        assert _edge_set(g.edge_index, g.cell_shifts) == _fresh_set(state, 4.0), step
        state.positions += torch.as_tensor(rng.normal(0, 0.04, state.positions.shape))
        # deform replica 0's cell (and its atoms) a little every step, as NPT does, and
        # replica 2's by 1 % now and then
        for r, size in ((0, 0.003), (2, 0.01 if step % 20 == 19 else 0.0)):
            eps = torch.as_tensor(rng.normal(0, size, (3, 3)))
            deform = torch.eye(3, dtype=state.dtype) + 0.5 * (eps + eps.T)
            sl = state.atom_slice(r)
            state.positions[sl] = state.positions[sl] @ deform
            state.cell[r] = state.cell[r] @ deform
    # 3 first searches + a few refreshes, not 180 (nor 60 for the deforming cell alone)
    assert 3 < lists.n_searches < 45
    # a steady compression (1 % per step, atoms fixed in the cell): the list must be
    # refreshed from the cell's deformation alone, once pairs from beyond cutoff + skin
    # come within the cutoff
    state = make_state([cu], temperature_K=300, seed=0)
    lists = VerletLists(4.0, skin_A=0.8)
    for step in range(30):
        g = lists.graph(state)
        assert _edge_set(g.edge_index, g.cell_shifts) == _fresh_set(state, 4.0), step
        state.positions *= 0.99
        state.cell *= 0.99
    assert 1 < lists.n_searches < 10


def test_verlet_lists_per_replica_and_new_systems():
    """Searches are per replica; a slot refilled with another system gets a new list;
    an element the model does not know is named."""
    cu = bulk("Cu", "fcc", a=3.6, cubic=True)
    mol = read(ALA2, index=0)
    state = make_state([cu, mol], temperature_K=300, seed=0, replica_ids=[0, 1])
    lists = VerletLists(4.0, skin_A=1.0, species={1, 6, 7, 8, 29})
    lists.graph(state)
    assert lists.n_searches == 2
    state.positions[:4] += 0.6  # only replica 0 moved past skin/2
    lists.graph(state)
    assert lists.n_searches == 3
    other = make_state([mol, cu], temperature_K=300, seed=0, replica_ids=[0, 1])
    g = lists.graph(other)
    assert lists.n_searches == 5
    assert _edge_set(g.edge_index, g.cell_shifts) == _fresh_set(other, 4.0)
    with pytest.raises(ValueError, match=r"Au \(79\) unknown to this model"):
        VerletLists(4.0, species={29}).graph(make_state([bulk("Au")], temperature_K=300))
    with pytest.raises(ValueError, match="skin_A"):
        VerletLists(4.0, skin_A=-1)


def _run(md, frames, steps, **kw):
    state = make_state(frames, temperature_K=300, seed=3, dtype=md.dtype, **kw)
    initialize(state, md)
    for _ in range(steps):
        langevin_step(state, md, timestep_fs=0.5, temperature_K=300)
    return state


def test_skin_does_not_change_the_trajectory():
    from ubmd.models import build_model

    torch.manual_seed(0)
    model = build_model("painn", [1, 6, 7, 8], options=SMALL)
    frames = read(ALA2, ":3")
    a = _run(UBMDModel(model, skin_A=0.0), frames, 40)
    md = UBMDModel(model, skin_A=1.0)
    b = _run(md, frames, 40)
    assert md.neighbours.n_searches < 3 * 40 / 4
    torch.testing.assert_close(a.positions, b.positions, rtol=0, atol=1e-9)
    # a replica alone follows the same path as in the batch
    alone = _run(UBMDModel(model), frames[1:2], 40, replica_ids=[1])
    torch.testing.assert_close(
        select_replicas(b, [1]).positions, alone.positions, rtol=0, atol=1e-9
    )


def _full_window(frames):
    """A state whose bias window is full (the bias acts from the first call); each call
    updates the window in place, so every evaluation gets its own state."""
    st = make_state(frames, temperature_K=300, seed=0, dtype=torch.float32, window=1)
    st.win_f2.fill_(1.0)
    st.win_g2.fill_(1.0)
    return st


def test_compiled_model_gives_eager_results():
    """torch.compile'd copy (float32, as trained models are): the same forces and
    posterior uncertainty as eager, for a batch and for one replica, with the bias on."""
    from ubmd.md.bias import BiasConfig
    from ubmd.md.evaluation import evaluate
    from ubmd.models import build_model
    from ubmd.uncertainty import UncertaintyConfig, fit_uncertainty

    torch.manual_seed(0)
    model = build_model("painn", [1, 6, 7, 8], options=SMALL, dtype="float32")
    frames = read(ALA2, ":12")
    est = fit_uncertainty(model, frames[:8], UncertaintyConfig(method="posterior"))
    eager, comp = UBMDModel(model, est), UBMDModel(model, est, compile=True)
    assert comp.compiled and comp.model is not model  # the caller's model is untouched
    assert all(p.requires_grad for p in model.parameters())
    bias = BiasConfig(window=1, norm_every=1)
    for batch in (frames[8:12], frames[8:9]):
        a, b = (evaluate(_full_window(batch), m, stress=False, bias=bias) for m in (eager, comp))
        assert float(a.tau.min()) > 0  # the bias is on
        for name in ("energy", "forces", "model_forces", "tau"):
            torch.testing.assert_close(getattr(b, name), getattr(a, name), rtol=1e-4, atol=1e-4)
        for key in ("uncertainty", "atomic_uncertainty"):
            torch.testing.assert_close(b.outputs[key], a.outputs[key], rtol=1e-4, atol=1e-5)
    # periodic, with stress (the NPT path): molecules in a small box see their images
    boxed = [a.copy() for a in frames[8:10]]
    for a in boxed:
        a.set_cell([9.0, 9.5, 10.0])
        a.pbc = True
    a, b = (evaluate(_full_window(boxed), m, stress=True, bias=bias) for m in (eager, comp))
    for name in ("forces", "stress", "model_stress"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name), rtol=1e-4, atol=1e-5)
    assert float(a.stress.abs().max()) > 0
    with pytest.raises(ValueError, match="create_graph=True"):
        UBMDModel(model, est, compile=True, create_graph=True)
    with pytest.raises(ValueError, match="compile=True cannot be used"):
        est_g = fit_uncertainty(
            model, frames[:8], UncertaintyConfig(method="posterior", features="sketched_gradient")
        )
        UBMDModel(model, est_g, compile=True)


def test_allocator_setting_is_idempotent():
    import sys

    from ubmd.md.allocator import retain_freed_memory

    first = retain_freed_memory()
    assert retain_freed_memory() is first
    if sys.platform.startswith("linux"):
        import platform

        assert first is (platform.libc_ver()[0] == "glibc")


def test_explore_cli_compile_matches_eager(tmp_path):
    """`ubmd explore --compile` on a float32 model file (dtype taken from the model):
    the same frames as the eager run over a short trajectory."""
    from typer.testing import CliRunner

    from ubmd import keys
    from ubmd.cli import app, get_app
    from ubmd.md.writer import read_candidates
    from ubmd.models import build_model
    from ubmd.uncertainty import UncertaintyConfig, fit_uncertainty, save_bundle

    torch.manual_seed(0)
    model = build_model("painn", [1, 6, 7, 8], options=SMALL, dtype="float32")
    frames = read(ALA2, ":10")
    save_bundle(tmp_path / "m.pt", model, fit_uncertainty(model, frames, UncertaintyConfig()))
    frames[0].write(tmp_path / "s.xyz")
    get_app()
    runner = CliRunner()
    common = [str(tmp_path / "m.pt"), str(tmp_path / "s.xyz"), "--steps", "20", "--replicas",
              "2", "--record-every", "10", "--window", "4"]  # fmt: skip
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        res = runner.invoke(app, ["explore", *common, *extra, "-o", str(tmp_path / f"{name}.h5")])
        assert res.exit_code == 0, res.output
    a, b = read_candidates(tmp_path / "eager.h5"), read_candidates(tmp_path / "compiled.h5")
    assert list(a[keys.MD_STEP]) == list(b[keys.MD_STEP]) == [10, 10, 20, 20]
    np.testing.assert_allclose(b[keys.POSITIONS], a[keys.POSITIONS], atol=1e-3)
    res = runner.invoke(app, ["explore", "emt", str(tmp_path / "s.xyz"), "--compile", "--sampler",
                              "md", "-o", str(tmp_path / "x.h5")])  # fmt: skip
    assert res.exit_code == 2 and "--compile applies to ubmd model files" in res.output


def test_compile_failure_falls_back_to_eager(monkeypatch, tmp_path):
    """A compiler that fails (here: inductor raising) gives a warning naming the error and
    eager results; the explorer reports that it did not run compiled code."""
    import torch._inductor.compile_fx as cfx

    from ubmd.md.explore import ExploreConfig, run_explorer
    from ubmd.models import build_model
    from ubmd.models.compiled import call, compile_for_inference, is_compiled
    from ubmd.models.graph import Graph

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setattr(cfx, "compile_fx", broken)
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = build_model("painn", [1, 6, 7, 8], options=SMALL, dtype="float32")
    comp = compile_for_inference(model)
    graph = Graph.from_atoms(read(ALA2, index=0), cutoff=model.cutoff, dtype=torch.float32)
    with pytest.warns(RuntimeWarning, match="no C.. compiler here"):
        out = call(comp, graph)
    torch.testing.assert_close(out["energy"], model(graph)["energy"])
    assert not is_compiled(comp) and "no C++ compiler" in comp.compile_error
    md = UBMDModel(model, compile=True)
    with pytest.warns(RuntimeWarning, match="running the model eagerly"):
        summary = run_explorer(ExploreConfig(sampler="md", n_steps=3, record_every=3,
                                             dtype="float32"), md, read(ALA2, ":1"),
                               out_path=tmp_path / "c.h5")  # fmt: skip
    assert summary["compiled"] is False and md.compile_requested


def test_library_objects_leave_the_allocator_alone(monkeypatch):
    """Constructing a model adapter or an ASE calculator changes no process-wide setting."""
    import ubmd.md.allocator as allocator
    from ubmd.calculator import UBMDCalculator
    from ubmd.md.adapter import UBMDModel
    from ubmd.models.builtin import PaiNN

    calls = []
    monkeypatch.setattr(allocator, "retain_freed_memory", lambda: calls.append(1) or True)
    model = PaiNN([1, 6], n_features=8)
    UBMDModel(model)
    UBMDCalculator(model)
    assert calls == []


def test_min_distances_come_from_the_last_call_for_these_positions_only():
    """The lists answer the too-close rule with the distances of their last call (minimum
    image included) as long as the positions and cell are the very tensors of that call,
    unchanged; otherwise (moved, changed in place, bound beyond the cutoff, no skin) they
    give None and the stop rule computes the distances itself."""
    from ubmd.md.stop import min_distances

    cu = bulk("Cu", cubic=True)  # a = 3.61
    cu.positions[0] = [0.05, 0.05, 0.05]
    cu.positions[1] = [3.56, 0.05, 0.05]  # 0.1 Å through the boundary
    state = make_state([cu, read(ALA2, index=0)], temperature_K=None)
    lists = VerletLists(4.0, skin_A=0.5)
    assert lists.min_distances(state, 0.5) is None  # nothing computed yet
    lists.graph(state)
    d = lists.min_distances(state, 0.5)
    torch.testing.assert_close(d, min_distances(state))
    assert float(d[0]) == pytest.approx(0.1, abs=1e-9)
    assert lists.min_distances(state, 4.5) is None  # not exact beyond the cutoff
    state.positions[1, 0] += 0.01  # in place
    assert lists.min_distances(state, 0.5) is None
    lists.graph(state)
    assert float(lists.min_distances(state, 0.5)[0]) == pytest.approx(0.09, abs=1e-9)
    state.cell = state.cell * 1.01  # a new cell (NPT)
    assert lists.min_distances(state, 0.5) is None
    lists.graph(state)
    state.positions = state.positions + 0.0  # a new positions tensor (the next step)
    assert lists.min_distances(state, 0.5) is None
    other = select_replicas(state, [1])
    lists.graph(state)
    assert lists.min_distances(other, 0.5) is None  # another batch
    no_skin = VerletLists(4.0, skin_A=0.0)
    no_skin.graph(state)
    assert no_skin.min_distances(state, 0.5) is None
