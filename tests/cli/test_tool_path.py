"""The tool path outside campaigns: `ubmd train --uncertainty` writes a calibrated bundle,
`ubmd evaluate --calibration` measures it, `ubmd explore` biases with it and checks at load
time everything a run needs. Tiny models and a few MD steps, so every test is quick."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.io import read, write
from typer.testing import CliRunner

from ubmd import keys
from ubmd.cli import get_app

ROOT = Path(__file__).resolve().parents[2]
ALA2 = ROOT / "data" / "ala2" / "ala2_xtb_300K.extxyz"
CAMPAIGN_MODEL = ROOT / "docs" / "results" / "quickstart" / "smallF_biased_seed0" / "model.pt"
TINY = "model_options: {n_features: 8, n_interactions: 1, n_basis: 4, readout_hidden: 8}\n"

runner = CliRunner()


def ubmd(*args) -> object:
    return runner.invoke(get_app(), [str(a) for a in args])


def train_args(d: Path, out, *extra) -> list:
    return ["train", d / "data.xyz", "--out", d / out, "--epochs", "1", "--config", d / "tiny.yaml",
            "--quiet", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """40 labelled frames, 3 start frames, and a bundle trained with a posterior uncertainty
    (half of the data held out to calibrate: 20 structures, enough for alpha = 0.05)."""
    d = tmp_path_factory.mktemp("tool_path")
    frames = read(ALA2, ":60")
    write(d / "data.xyz", frames[:40])
    write(d / "cal.xyz", frames[40:60])
    write(d / "starts.xyz", [frames[0], frames[20], frames[39]])
    (d / "tiny.yaml").write_text(TINY)
    res = ubmd(
        *train_args(d, "m.pt", "--uncertainty", "posterior", "--calibration-fraction", "0.5")
    )
    assert res.exit_code == 0, res.output
    assert "on 20 structures, 20 held out to calibrate" in res.output
    return d


@pytest.fixture
def torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def snapshot(d: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(d.rglob("*"))
    }


def explore(work: Path, model, out: Path, *extra):
    return ubmd("explore", model, work / "starts.xyz", "--out", out, "--steps", "4",
                "--record-every", "2", "--window", "2", "--replicas", "2", *extra)  # fmt: skip


# ---------------------------------------------------------------- 1. train with uncertainty


def test_train_with_uncertainty_writes_a_calibrated_bundle(work):
    from ubmd.uncertainty import load_bundle

    _, est, cal = load_bundle(work / "m.pt")
    assert est.config.method == "posterior" and est.config.features == "last_layer"
    assert cal.alpha == 0.05 and cal.n_cal == 20  # the held-out half
    assert cal.c_total is not None and cal.c_atom is not None
    res = ubmd("evaluate", work / "m.pt", work / "cal.xyz", "--calibration")
    assert res.exit_code == 0, res.output
    assert "coverage" in res.output and "total" in res.output and "atom-based" in res.output
    assert "mean energy error (predicted - label)" in res.output


def test_explore_biases_with_the_trained_bundle(work, tmp_path):
    from ubmd.md.writer import read_candidates

    res = explore(work, work / "m.pt", tmp_path / "c.h5", "--max-uncertainty", "1e6",
                  "--max-atomic-uncertainty", "1e6")  # fmt: skip
    assert res.exit_code == 0, res.output
    data = read_candidates(tmp_path / "c.h5")
    assert set(data[keys.SAMPLER]) == {"biased_md"}
    assert list(data[keys.MD_STEP]) == [2, 2, 4, 4]
    assert (data[keys.BIAS_STRENGTH][data[keys.MD_STEP] == 4] > 0).all()
    assert np.isfinite(data[keys.CALIBRATED_UNCERTAINTY]).all()
    assert np.isfinite(data[keys.CALIBRATED_ATOMIC_UNCERTAINTY]).all()
    assert "calibrated: total and atom-based" in res.output
    # set-up apart from the steady-state rate
    line = next(ln for ln in res.output.splitlines() if ln.startswith("set-up"))
    assert re.search(r"set-up [\d.]+ s \(loading, first 1 step\); steady state \d+ atom-steps/s "
                     r"over 3 steps; wall time [\d.]+ s", line), line  # fmt: skip


def test_calibration_data_and_early_errors(work, tmp_path):
    from ubmd.uncertainty import load_bundle

    res = ubmd(*train_args(work, tmp_path / "cal_data.pt", "--uncertainty", "distance",
                           "--calibration-data", work / "cal.xyz"))  # fmt: skip
    assert res.exit_code == 0, res.output
    _, est, cal = load_bundle(tmp_path / "cal_data.pt")
    assert est.config.method == "distance" and cal.n_cal == 20
    assert "on 40 structures, calibrating on the 20 of --calibration-data" in res.output
    before = snapshot(work)
    both = ["--calibration-data", work / "cal.xyz", "--calibration-fraction", "0.3"]
    bad = [
        (["--uncertainty", "posterior", "--calibration-fraction", "0.1"], "needs at least 19"),
        (["--uncertainty", "ensemble"], "-M 2"),
        (["--features", "sketched_gradient"], "only apply with --uncertainty"),
        (["--uncertainty", "bayes"], "bayes"),
        (["--uncertainty", "posterior", *both], "not both"),
    ]
    for extra, msg in bad:
        res = ubmd(*train_args(work, "bad.pt", *extra))
        assert res.exit_code == 2 and msg in res.output, (extra, res.output)
    assert snapshot(work) == before  # nothing trained, nothing written


def test_ensemble_uncertainty(work, tmp_path):
    from ubmd.md.writer import read_candidates
    from ubmd.uncertainty import load_bundle

    res = ubmd(*train_args(work, tmp_path / "ens.pt", "-M", "2", "--uncertainty", "ensemble",
                           "--calibration-fraction", "0.5"))  # fmt: skip
    assert res.exit_code == 0, res.output
    net, est, cal = load_bundle(tmp_path / "ens.pt")
    assert len(net.members) == 2 and est.config.method == "ensemble"
    assert cal.c_total is not None and cal.c_atom is not None
    res = explore(work, tmp_path / "ens.pt", tmp_path / "e.h5", "--max-uncertainty", "1e6")
    assert res.exit_code == 0, res.output
    assert len(read_candidates(tmp_path / "e.h5")[keys.MD_STEP]) == 4


# ---------------------------------------------------------------- 2. checks at load time


def test_explore_refuses_what_the_model_lacks_and_creates_nothing(work, tmp_path):
    from ubmd.models import save_model
    from ubmd.uncertainty import load_bundle, save_bundle

    net, est, _ = load_bundle(work / "m.pt")
    save_model(tmp_path / "bare.pt", net)
    save_bundle(tmp_path / "nocal.pt", net, est)
    out = tmp_path / "new" / "c.h5"
    cases = [
        ([tmp_path / "bare.pt"], ["no uncertainty estimator", "--sampler biased_md",
                                  "ubmd train DATA --uncertainty posterior", "--sampler md"]),
        ([tmp_path / "bare.pt", "--sampler", "uncertainty_cv"], ["no uncertainty estimator"]),
        ([tmp_path / "bare.pt", "--sampler", "md", "--max-atomic-uncertainty", "1"],
         ["no uncertainty estimator", "--max-atomic-uncertainty", "ubmd train"]),
        ([tmp_path / "nocal.pt", "--max-atomic-uncertainty", "1.5"],
         ["holds no calibration", "ubmd train DATA --uncertainty posterior"]),
        ([CAMPAIGN_MODEL, "--max-uncertainty", "0.1"],
         ["needs the calibrated total uncertainty", "only the atom-based part",
          "use --max-atomic-uncertainty", "ubmd train"]),
        (["emt"], ["sampler 'md'"]),
    ]  # fmt: skip
    before = snapshot(tmp_path)
    for (model, *extra), messages in cases:
        res = explore(work, model, out, *extra)
        assert res.exit_code == 2, (model, extra, res.output)
        for msg in messages:
            assert msg in res.output, (model, extra, msg, res.output)
        assert not out.parent.exists()
    assert snapshot(tmp_path) == before
    # a campaign model's atom-based calibration is enough for --max-atomic-uncertainty
    res = explore(work, CAMPAIGN_MODEL, out, "--max-atomic-uncertainty", "1e6", "--steps", "2")
    assert res.exit_code == 0, res.output


# ---------------------------------------------------------------- output file


def test_out_is_fresh_unless_append(work, tmp_path):
    from ubmd.md.writer import read_candidates

    out = tmp_path / "c.h5"
    assert explore(work, work / "m.pt", out).exit_code == 0
    first = out.read_bytes()
    res = explore(work, work / "m.pt", out)
    assert res.exit_code == 2 and "exists" in res.output and "--append" in res.output
    assert out.read_bytes() == first
    res = explore(work, work / "m.pt", out, "--append")
    assert res.exit_code == 0, res.output
    assert len(read_candidates(out)[keys.MD_STEP]) == 8
    (tmp_path / "text.h5").write_text("not a candidate file")
    res = explore(work, work / "m.pt", tmp_path / "text.h5", "--append")
    assert res.exit_code == 2 and "not a ubmd candidate file" in res.output


def test_nothing_left_after_a_failure_before_the_first_frame(work, tmp_path, monkeypatch):
    import ubmd.md.explore as explore_mod
    from ubmd.md.writer import read_candidates

    def broken(*args, **kwargs):
        raise ValueError("the first evaluation failed")

    monkeypatch.setattr(explore_mod, "initialize", broken)
    out = tmp_path / "a" / "b" / "c.h5"
    res = explore(work, work / "m.pt", out)
    assert res.exit_code == 2 and "the first evaluation failed" in res.output
    assert not (tmp_path / "a").exists()
    # an existing file given with --append stays as it was
    monkeypatch.undo()
    kept = tmp_path / "kept.h5"
    assert explore(work, work / "m.pt", kept).exit_code == 0
    before = read_candidates(kept)[keys.MD_STEP].tolist()
    monkeypatch.setattr(explore_mod, "initialize", broken)
    assert explore(work, work / "m.pt", kept, "--append").exit_code == 2
    assert read_candidates(kept)[keys.MD_STEP].tolist() == before
    # a run that fails after its first frames keeps them
    monkeypatch.undo()
    real, calls = explore_mod.langevin_step, []

    def fails_later(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise ValueError("blew up at step 3")
        return real(*args, **kwargs)

    monkeypatch.setattr(explore_mod, "langevin_step", fails_later)
    out = tmp_path / "partial.h5"
    res = explore(work, work / "m.pt", out, "--record-every", "1")
    assert res.exit_code == 2 and "blew up" in res.output
    assert read_candidates(out)[keys.MD_STEP].tolist() == [1, 1, 2, 2]


# ---------------------------------------------------------------- frames, compile, threads


def test_frames_default_to_every_frame_spread_over_the_replicas(work, tmp_path):
    from ubmd.md.writer import read_candidates

    starts = read(work / "starts.xyz", ":")
    out = tmp_path / "c.h5"
    res = ubmd("explore", work / "m.pt", work / "starts.xyz", "--out", out, "--steps", "1",
               "--record-every", "1", "--replicas", "5", "--sampler", "md")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "5 replicas from 3 of 3 start frames" in res.output
    data = read_candidates(out)
    pos = data[keys.POSITIONS].reshape(-1, len(starts[0]), 3)
    nearest = [
        int(np.argmin([np.abs(p - s.positions).max() for s in starts]))
        for p in pos[np.argsort(data[keys.REPLICA])]
    ]
    assert nearest == [0, 1, 2, 0, 1]  # replica k starts from frame k mod 3


def test_steady_rate_says_when_stopped_replicas_left_slots_empty(work, tmp_path):
    """A replica that stops leaves its slot empty (no start frame left to refill it): the
    steady-state rate then runs fewer atoms per step, and the summary says so, so that
    it is not compared with a full batch's rate."""
    starts = read(work / "starts.xyz", ":2")
    starts[1].positions[1] = starts[1].positions[0] + [0.3, 0.0, 0.0]  # too close: stops at 0
    write(tmp_path / "s.xyz", starts)
    res = ubmd("explore", work / "m.pt", tmp_path / "s.xyz", "--out", tmp_path / "c.h5",
               "--steps", "4", "--replicas", "2", "--window", "2")  # fmt: skip
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.output.splitlines() if ln.startswith("set-up"))
    assert re.search(r"steady state \d+ atom-steps/s over 3 steps \(1.0 of 2 replicas running "
                     r"on average\); wall time", line), line  # fmt: skip
    res = explore(work, work / "m.pt", tmp_path / "full.h5")  # a full batch: no such note
    assert res.exit_code == 0 and "replicas running on average" not in res.output


def test_sketched_features_under_compile_run_eagerly_with_a_warning(work, tmp_path):
    res = ubmd(*train_args(work, tmp_path / "sk.pt", "--uncertainty", "posterior", "--features",
                           "sketched_gradient", "--calibration-fraction", "0.5"))  # fmt: skip
    assert res.exit_code == 0, res.output
    res = explore(work, tmp_path / "sk.pt", tmp_path / "c.h5", "--compile")
    assert res.exit_code == 0, res.output
    assert "warning:" in res.output and "running eagerly instead of --compile" in res.output
    assert "; eager" in res.output
    assert "sketched_gradient" in res.output


def test_threads_option_sets_torch_threads(work, tmp_path, torch_threads):
    res = explore(work, work / "m.pt", tmp_path / "a.h5", "--threads", "1")
    assert res.exit_code == 0, res.output
    assert torch.get_num_threads() == 1 and "torch threads 1;" in res.output
    res = explore(work, work / "m.pt", tmp_path / "b.h5")
    assert res.exit_code == 0 and "torch threads 1 (torch's default" in res.output
    assert ubmd("explore", "emt", work / "starts.xyz", "--threads", "0").exit_code == 2


def test_compile_help_does_not_promise_seconds():
    res = ubmd("explore", "--help")
    text = " ".join(res.output.split())
    assert "10-40 s" in text and "seconds to compile" not in text
    assert "--threads" in text and "--append" in text


def test_relative_out_in_cwd(work, tmp_path):
    """--out in the working directory (no parent folder to create or remove)."""
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        res = explore(work, work / "m.pt", Path("c.h5"))
    finally:
        os.chdir(cwd)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "c.h5").exists()
