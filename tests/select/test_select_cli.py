"""`ubmd select` and `ubmd design` smoke tests: they read .npz/.h5 and write their outputs."""

import json

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from ubmd.cli import app, get_app
from ubmd.select import design_report, select_batch

runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    get_app()
    d = tmp_path_factory.mktemp("sel")
    rng = np.random.default_rng(0)
    pool = rng.normal(size=(80, 12)).astype(np.float32)
    unc = rng.random(80)
    train = rng.normal(size=(10, 12))
    np.savez(d / "pool.npz", features=pool, uncertainty=unc)
    np.savez(d / "train.npz", features=train)
    with h5py.File(d / "pool.h5", "w") as h5:
        h5["features"] = pool
        h5["uncertainty"] = unc
    np.savez(d / "nofeat.npz", energy=np.zeros(3))
    return d, pool, unc, train


@pytest.mark.parametrize("name", ["pool.npz", "pool.h5"])
def test_select_writes_picks(files, name):
    d, pool, _unc, train = files
    out = d / f"picks_{name}.json"
    args = ["select", str(d / name), "--method", "max_det", "--batch-size", "8"]
    res = runner.invoke(app, [*args, "--train", str(d / "train.npz"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    want = select_batch(pool, 8, method="max_det", train_features=train)
    assert doc["indices"] == want.indices.tolist()
    assert doc["method"] == "max_det" and len(doc["scores"]) == 8


def test_select_uses_file_uncertainty(files):
    d, _, unc, _ = files
    out = d / "unc.json"
    res = runner.invoke(
        app, ["select", str(d / "pool.npz"), "-m", "max_unc", "-b", "3", "-o", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["indices"] == np.argsort(-unc)[:3].tolist()


def test_select_random_scores_are_null_in_json(files):
    d = files[0]
    out = d / "rand.json"
    res = runner.invoke(
        app, ["select", str(d / "pool.npz"), "-m", "random", "-b", "4", "-o", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["scores"] == [None] * 4


def test_design_prints_report_and_saves_plot(files):
    d, pool, _, train = files
    png = d / "design.png"
    args = ["design", str(d / "pool.npz"), "--train", str(d / "train.npz"), "--plot", str(png)]
    res = runner.invoke(app, [*args, "--batch-size", "4", "--out", str(d / "report.json")])
    assert res.exit_code == 0, res.output
    assert "effective rank" in res.output and "condition number" in res.output
    assert "pool adds information" in res.output
    rep = design_report(pool, train_features=train)
    assert f"{rep.max_gain:.4g}" in res.output
    doc = json.loads((d / "report.json").read_text())
    assert doc["adds_information"] is True
    np.testing.assert_allclose(doc["gains"], rep.gains)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_cli_errors_are_one_line(files):
    d = files[0]
    res = runner.invoke(app, ["select", str(d / "pool.npz"), "-m", "nope"])
    assert res.exit_code == 2 and "known methods" in res.output
    res = runner.invoke(app, ["select", str(d / "pool.npz"), "-b", "81"])
    assert res.exit_code == 2 and "larger than the candidate pool" in res.output
    res = runner.invoke(app, ["select", str(d / "nofeat.npz")])
    assert res.exit_code == 2 and "no 'features' array" in res.output
    res = runner.invoke(app, ["design", str(d / "missing.npz")])
    assert res.exit_code == 2 and "no such file" in res.output
    assert "Traceback" not in res.output


def test_load_features_checks_files(tmp_path):
    from ubmd.select.io import load_features

    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_features(tmp_path / "x.csv")
    np.savez(tmp_path / "bad.npz", features=np.zeros((3, 2)), uncertainty=np.zeros(4))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        load_features(tmp_path / "bad.npz")
    with h5py.File(tmp_path / "x.h5", "w") as h5:
        h5["features"] = np.ones((4, 3))
    feats, unc = load_features(tmp_path / "x.h5")
    assert feats.shape == (4, 3) and unc is None


@pytest.mark.parametrize(
    ("command", "batch", "message"),
    [
        ("design", "81", "batch_size=81 is larger than the candidate pool (80 candidates)"),
        ("select", "81", "batch_size=81 is larger than the candidate pool (80 candidates)"),
        ("design", "0", "--batch-size"),
        ("select", "0", "--batch-size"),
    ],
)
def test_batch_sizes_outside_the_pool_are_refused(files, command, batch, message):
    d = files[0]
    res = runner.invoke(app, [command, str(d / "pool.npz"), "--batch-size", batch])
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split())
    assert "Traceback" not in res.output


def test_design_report_refuses_a_batch_larger_than_the_pool(files):
    with pytest.raises(ValueError, match="larger than the candidate pool"):
        design_report(files[1], batch_size=81)


def _candidate_file(path, n_frames=6, n_atoms=3, seed=0):
    from ubmd import keys
    from ubmd.md.writer import CandidateWriter

    rng = np.random.default_rng(seed)
    with CandidateWriter(path) as w:
        w.append(
            {
                keys.N_ATOMS: np.full(n_frames, n_atoms),
                keys.NUMBERS: np.tile([8, 1, 1], n_frames),
                keys.POSITIONS: rng.normal(size=(n_frames * n_atoms, 3)) * 2,
                keys.CELL: np.zeros((n_frames, 3, 3)),
                keys.PBC: np.zeros((n_frames, 3), bool),
                keys.MD_STEP: np.arange(n_frames) * 20,
                keys.REPLICA: np.arange(n_frames) % 2,
                keys.SAMPLER: np.array(["biased_md"] * n_frames, dtype=object),
                keys.FEATURES: rng.normal(size=(n_frames, 4)),
            }
        )


def test_select_writes_the_picked_frames_with_provenance(tmp_path):
    import ase.io

    from ubmd.md.writer import candidates_to_atoms, read_candidates

    _candidate_file(tmp_path / "c.h5")
    out = tmp_path / "picked.extxyz"
    res = runner.invoke(
        get_app(),
        ["select", str(tmp_path / "c.h5"), "-b", "3", "-o", str(tmp_path / "p.json"),
         "--structures", str(out)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    picks = json.loads((tmp_path / "p.json").read_text())["indices"]
    frames = candidates_to_atoms(read_candidates(tmp_path / "c.h5"), picks)
    written = ase.io.read(out, index=":")
    assert len(written) == 3
    for w, f in zip(written, frames, strict=True):
        np.testing.assert_array_equal(w.positions, f.positions)
        assert w.info["md_step"] == f.info["md_step"] and w.info["sampler"] == "biased_md"
        assert w.calc is None  # model outputs are not labels
    # an existing output is refused before selecting; an .npz pool has no frames to write
    res = runner.invoke(get_app(), ["select", str(tmp_path / "c.h5"), "--structures", str(out)])
    assert res.exit_code == 2 and "exists" in res.output
    np.savez(tmp_path / "p.npz", features=np.ones((4, 2)))
    res = runner.invoke(
        get_app(), ["select", str(tmp_path / "p.npz"), "--structures", str(tmp_path / "n.extxyz")]
    )
    assert res.exit_code == 2 and "candidate file" in res.output
