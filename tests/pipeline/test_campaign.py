"""The campaign on parsl (HighThroughputExecutor + LocalProvider): end to end, resume after
SIGKILL at distinct phases, a killed worker's task retried, bad files rejected before any task."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import parsl_logs
import psutil
import pytest
import torch
import yaml

from ubmd import keys
from ubmd.store import StructureStore

pytestmark = pytest.mark.timeout(600)


def _run(config: Path, *args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "ubmd.cli",
            "run",
            str(config),
            "--site",
            "local",
            "--no-live",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _start(config: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ubmd.cli", "run", str(config), "--site", "local", "--no-live"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the kill takes interchange and workers too
    )


def _family(proc: subprocess.Popen, root: Path) -> list[psutil.Process]:
    """The driver, its descendants and the worker pool it launched (LocalProvider detaches the
    pool from the driver's tree; it is found by the campaign's log folder on its command line)."""
    family = []
    with contextlib.suppress(psutil.NoSuchProcess):
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in psutil.process_iter(["cmdline"]):
        if str(root) in " ".join(p.info["cmdline"] or []):
            with contextlib.suppress(psutil.Error):
                family.extend([p, *p.children(recursive=True)])
    return family


def _kill_group(proc: subprocess.Popen, root: Path) -> None:
    """SIGKILL the driver and every process it started (interchange, worker pool, workers):
    what a crashed login node or an OOM kill leaves behind."""
    family = _family(proc, root)
    for p in family:
        with contextlib.suppress(psutil.Error):
            p.kill()
    proc.wait(timeout=30)
    psutil.wait_procs(family, timeout=30)


def _wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 300):
    """Poll ``predicate`` until it returns something true, and return that."""
    t0 = time.monotonic()
    while not (value := predicate()):
        if proc.poll() is not None:
            raise AssertionError(f"campaign ended before {what}: {proc.stderr.read()[-3000:]}")
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return value


def _store_content(path: Path) -> dict[bytes, tuple]:
    with StructureStore.open(path, mode="r") as store:
        arrays = store.read_arrays()
        hashes = store.content_hashes()
    offsets = np.concatenate([[0], np.cumsum(arrays[keys.N_ATOMS])[:-1]])
    out = {}
    for s, h in enumerate(hashes):
        sl = slice(offsets[s], offsets[s] + arrays[keys.N_ATOMS][s])
        out[h.tobytes()] = (
            str(arrays[keys.STATUS][s]),
            int(arrays[keys.ITERATION][s]),
            float(arrays[keys.ENERGY][s]),
            arrays[keys.FORCES][sl].tobytes(),
        )
    assert len(out) == len(hashes), "duplicate structures in the store"
    return out


def test_shrunk_quickstart_end_to_end(shrunk):
    config = shrunk(name="e2e", iterations=2)
    data = yaml.safe_load(config.read_text())
    data["exploration"]["compile"] = True  # compiled explorers inside parsl workers
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    res = _run(config)
    assert res.returncode == 0, res.stderr[-4000:]
    root = Path(yaml.safe_load(config.read_text())["directory"])
    assert "reached max_iterations = 2" in res.stdout
    assert "ran eagerly" not in res.stderr
    # a valid store with the initial data and both iterations' labels
    check = subprocess.run(
        [sys.executable, "-m", "ubmd.cli", "store", "validate", str(root / "store.h5")],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    content = _store_content(root / "store.h5")
    iterations = sorted({v[1] for v in content.values()})
    assert iterations == [0, 1, 2]
    assert sum(v[1] == 0 for v in content.values()) == 10
    assert all(v[0] == "ok" for v in content.values())
    # a model bundle, a report and plots per iteration, the summary table and curve
    for it in (1, 2):
        d = root / f"iter_{it:03d}"
        for name in (
            "model.pt",
            "report.json",
            "uncertainty_histogram.png",
            "ramachandran.png",
            "selection.extxyz",
        ):
            assert (d / name).is_file(), d / name
    # each explorer says where its time went: start-up and compiling, then the steady rate
    for it in (1, 2):
        for e in range(data["exploration"]["explorers"]):
            stats = json.loads((root / f"iter_{it:03d}/explore/explorer_{e:02d}.json").read_text())
            assert stats["compiled"] is True and stats["n_frames"] > 0, stats
            assert 0 < stats["warmup_s"] <= stats["wall_time_s"], stats
            assert stats["steady_steps"] > 0 and stats["steady_atom_steps_per_s"] > 0, stats
    # and `ubmd status` reads the newest iteration's
    status = subprocess.run(
        [sys.executable, "-m", "ubmd.cli", "status", str(root)], capture_output=True, text=True
    )
    assert status.returncode == 0, status.stdout + status.stderr
    n_explorers = data["exploration"]["explorers"]
    assert f"explorers (iteration 2): {n_explorers}/{n_explorers} done" in status.stdout
    assert "atom-steps/s each" in status.stdout
    # the trained bundle works as an ASE calculator
    from ubmd.calculator import UBMDCalculator
    from ubmd.store.convert import read_extxyz

    atoms = read_extxyz(root / "iter_002" / "selection.extxyz")[0]
    atoms.calc = UBMDCalculator.from_file(root / "iter_002" / "model.pt")
    assert np.isfinite(atoms.get_potential_energy())
    # iteration 2 fine-tuned iteration 1's member; iteration 1 started from scratch
    assert _model_extra(root / "iter_002" / "models" / "member_0.pt")["warm_start"] == str(
        root / "iter_001" / "models" / "member_0.pt"
    )
    assert _model_extra(root / "iter_001" / "models" / "member_0.pt")["warm_start"] == ""
    # nothing else runs while members train: they share the local executor's cores
    from ubmd.pipeline.sites import load_site

    alone = load_site("local").executors["local"].threads_alone(data["model"]["ensemble_size"])
    for it in (1, 2):
        extra = _model_extra(root / f"iter_{it:03d}" / "models" / "member_0.pt")
        assert extra["torch_threads"] == alone, (it, extra["torch_threads"], alone)
    # the final model: every member trained on every usable label in the store (ok, and within
    # the energy limit when one is set), and those members are the bundle handed over
    limit = data["model"].get("max_energy_above_min_eV_atom")
    digest, n_kept = _ok_labels_digest(root / "store.h5", limit)
    assert 10 <= n_kept <= len(content)
    bundle = torch.load(root / "final" / "model.pt", map_location="cpu", weights_only=True)
    members = sorted((root / "final" / "models").glob("member_*.pt"))
    assert len(members) == len(bundle["members"]) == data["model"]["ensemble_size"]
    for m, path in enumerate(members):
        saved = torch.load(path, map_location="cpu", weights_only=True)
        assert saved["extra"]["n_train"] == n_kept, path
        assert saved["extra"]["training_data"] == digest, path
        (weights,) = [member["state_dict"] for member in saved["members"]]
        handed_over = bundle["members"][m]["state_dict"]
        same = all(torch.equal(weights[k], handed_over[k]) for k in weights)
        assert same, f"final/model.pt does not hold the weights of {path}"
    # calibrated, an ASE calculator with uncertainties
    atoms.calc = UBMDCalculator.from_file(root / "final" / "model.pt")
    assert np.isfinite(atoms.get_potential_energy())
    assert np.isfinite(atoms.calc.get_property("atomic_uncertainty", atoms)).all()
    _check_reports(root, data, n_labels=len(content))
    status = subprocess.run(
        [sys.executable, "-m", "ubmd.cli", "status", str(root)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert status.returncode == 0 and "ok" in status.stdout
    assert f"final model: {root / 'final' / 'model.pt'}" in status.stdout
    assert f"{len(content)} labels in the store" in status.stdout
    _check_roles(root, status.stdout, n_labels=len(content), members=len(members))


def _check_roles(root: Path, status: str, *, n_labels: int, members: int) -> None:
    """Every task's span by role, as a streaming campaign records them: every label task
    (initial and selected), 2 explorers x 2 iterations, training (members + calibration) per
    iteration and for the final model; no role busier than the run was long."""
    roles = json.loads((root / "reports" / "roles.json").read_text())
    summary, spans = roles["summary"], roles["spans"]
    assert summary["label"]["tasks"] == n_labels
    assert summary["explore"]["tasks"] == 2 * 2
    assert summary["train"]["tasks"] == 3 * (members + 1)  # iterations 1, 2, final; calibrate
    assert summary["select"]["tasks"] == 2
    wall = sum(b - a for a, b in roles["runs"])
    for role, s in summary.items():
        assert 0 <= s["busy_s"] <= wall + 1e-6, role
        assert abs(s["busy_s"] + s["idle_s"] - wall) < 1e-2, role
    assert all(s["end"] >= s["start"] for s in spans)
    assert (root / "reports" / "timeline.png").stat().st_size > 1000
    assert "roles: explore busy" in status


def _check_reports(root: Path, data: dict, n_labels: int) -> None:
    """The reports of iterations 1 and 2 and of the final model: label counts, held-out errors
    within sane bounds (the final model's below those of predicting zero forces), calibrated
    coverage a fraction; and reports/summary.tsv, one row per report in order, repeating their
    numbers."""
    from ubmd.store.convert import read_extxyz

    evaluation = data["evaluation"]
    zero_force, sizes = {}, {}
    for name, path in (
        ("test", evaluation["test_set"]),
        ("plane", evaluation["test_sets"]["plane"]),
    ):
        frames = read_extxyz(path)
        forces = np.concatenate([a.get_forces() for a in frames])
        zero_force[name] = float(np.sqrt(np.mean(forces**2)))  # ~0.9 and ~1.3 eV/A
        sizes[name] = len(frames)
    reports = {
        "1": root / "iter_001" / "report.json",
        "2": root / "iter_002" / "report.json",
        "final": root / "final" / "report.json",
    }
    reports = {it: json.loads(path.read_text()) for it, path in reports.items()}
    alpha = data["uncertainty"]["calibration"]["alpha"]
    batch = data["selection"]["batch_size"]
    for it, rep in reports.items():
        where = f"report of iteration {it}"
        assert rep["labels"] == (n_labels if it == "final" else 10 + batch * int(it)), where
        assert rep["labels_failed"] == 0, where
        for name, metrics in (("test", rep["test"]), ("plane", rep["tests"]["plane"])):
            assert metrics["n_structures"] == sizes[name], where
            # a model with wrong reference energies or blown-up forces is off by eV/atom and
            # many eV/A; iteration 1 (12 epochs on 13 labels) is ~1.1-1.3 zero_force, the final
            # model must do better than predicting zero forces
            bound = 1.0 if it == "final" else 2.0
            assert 0 < metrics["energy_mae_eV_atom"] <= metrics["energy_rmse_eV_atom"], where
            assert metrics["energy_rmse_eV_atom"] < 0.1 * bound, (where, name, metrics)
            assert 0 < metrics["force_mae_eV_A"] <= metrics["force_rmse_eV_A"], where
            assert metrics["force_rmse_eV_A"] < bound * zero_force[name], (where, name, metrics)
        cal = rep["calibration"]
        assert cal["alpha"] == alpha and cal["n_structures"] == sizes["test"], where
        coverages = [cal[k] for k in ("coverage_total", "coverage_atom") if k in cal]
        assert coverages and all(0 < c <= 1 for c in coverages), (where, cal)
        assert 0 < rep["ramachandran_coverage"] <= 1, where
        if it != "final":
            assert rep["selected"] == batch and rep["candidates"] >= batch, where
    lines = (root / "reports" / "summary.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    rows = [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]
    assert [row["iteration"] for row in rows] == list(reports)
    for row, rep in zip(rows, reports.values(), strict=True):
        assert int(row["labels"]) == rep["labels"]
        expected = {
            "energy_rmse_meV_atom": 1e3 * rep["test"]["energy_rmse_eV_atom"],
            "force_rmse_eV_A": rep["test"]["force_rmse_eV_A"],
            "force_mae_eV_A": rep["test"]["force_mae_eV_A"],
            "coverage_atom": rep["calibration"]["coverage_atom"],
            "ramachandran_coverage": rep["ramachandran_coverage"],
            "plane_force_rmse_eV_A": rep["tests"]["plane"]["force_rmse_eV_A"],
        }
        for column, value in expected.items():  # written with 5 significant digits
            assert float(row[column]) == pytest.approx(value, rel=1e-4), (row, column)
    assert (root / "reports" / "learning_curve.png").stat().st_size > 0


def _model_extra(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)["extra"]


def _ok_labels_digest(store_path: Path, limit: float | None) -> tuple[str, int]:
    """Digest and count of the ok labels a final model trains on (all, or those within
    ``limit`` eV/atom of the lowest of their composition)."""
    import hashlib

    from ubmd.campaign.learning import energy_above_minimum

    with StructureStore.open(store_path, mode="r") as store:
        rows = store.select(status="ok")
        hashes = store.content_hashes(rows)
        arrays = store.read_arrays(indices=rows)
    if limit is not None:
        hashes = hashes[energy_above_minimum(arrays) <= limit]
    digest = hashlib.sha256(b"".join(sorted(h.tobytes() for h in hashes))).hexdigest()
    return digest, len(hashes)


def _final_weights(root: Path) -> dict:
    import torch

    payload = torch.load(root / "final" / "model.pt", map_location="cpu", weights_only=True)
    return {
        f"{m}.{k}": v
        for m, member in enumerate(payload["members"])
        for k, v in member["state_dict"].items()
    }


def test_resume_after_sigkill_at_distinct_phases_equals_uninterrupted(shrunk):
    reference = shrunk(name="reference")
    res = _run(reference)
    assert res.returncode == 0, res.stderr[-4000:]
    ref_root = Path(yaml.safe_load(reference.read_text())["directory"])
    expected = _store_content(ref_root / "store.h5")
    expected_final = _final_weights(ref_root)

    config = shrunk(name="killed")
    root = Path(yaml.safe_load(config.read_text())["directory"])
    it0, it1 = root / "iter_000", root / "iter_001"
    phases = [
        ("initial labels", lambda: len(list((it0 / "labels").glob("*.npz"))) >= 3),
        ("training", lambda: (it1 / "models").is_dir()),
        ("exploration", lambda: (it1 / "explore" / "starts.extxyz").exists()),
        ("labels of iteration 1", lambda: (it1 / "labels" / "0000.npz").exists()),
        ("final training", lambda: (root / "final" / "models").is_dir()),
    ]
    for what, predicate in phases:
        proc = _start(config)
        _wait_for(predicate, proc, what)
        _kill_group(proc, root)
        # what a kill leaves behind opens, validates and holds no duplicate
        if (root / "store.h5").exists():
            _store_content(root / "store.h5")
    res = _run(config)
    assert res.returncode == 0, res.stderr[-4000:]
    assert _store_content(root / "store.h5") == expected
    # the final model after a kill during its training is the uninterrupted one, bit for bit
    final = _final_weights(root)
    assert final.keys() == expected_final.keys()
    assert all(torch.equal(final[k], expected_final[k]) for k in final)


def _workers(proc: subprocess.Popen, root: Path) -> list[psutil.Process]:
    """The worker processes of parsl's process_worker_pool (not its resource tracker)."""
    out = []
    for p in _family(proc, root):
        with contextlib.suppress(psutil.Error):
            if "spawn_main" in " ".join(p.cmdline()) and p not in out:
                out.append(p)
    return out


def test_worker_killed_mid_task_is_retried(shrunk):
    config = shrunk(name="workerkill")
    data = yaml.safe_load(config.read_text())
    data["model"]["training"].update(max_epochs=150, patience=150)  # long enough to be hit
    config.write_text(yaml.safe_dump(data))
    root = Path(yaml.safe_load(config.read_text())["directory"])
    member = root / "iter_001" / "models" / "member_0.pt"
    proc = _start(config)
    try:
        # iteration 1's training task makes its models folder when it starts; every label is
        # stored before it is submitted, so it is then the one task a worker is running
        _wait_for(lambda: (root / "iter_001" / "models").is_dir(), proc, "training")
        running = _wait_for(
            lambda: parsl_logs.busy(root / "parsl", "local"), proc, "the training's worker", 60
        )
        (victim,) = running  # the worker whose log says it received the training task
        worker = psutil.Process(victim.pid)
        assert worker in _workers(proc, root), f"pid {victim.pid} is not one of the pool's workers"
        worker.kill()
        assert not member.exists(), "training finished before the kill"
        assert proc.wait(timeout=400) == 0, proc.stderr.read()[-4000:]
    finally:
        if proc.poll() is None:
            _kill_group(proc, root)
    # parsl saw that try fail with the worker, tried again, and another worker process ran
    # the retry to the end and wrote the member
    parsl_logs.check_retried_elsewhere(root / "parsl", victim, "WorkerLost", member)
    content = _store_content(root / "store.h5")
    assert sum(v[1] == 1 for v in content.values()) == 3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(selecton={"method": "max_det"}), "did you mean 'selection'"),
        (lambda d: d["stopping"].update(max_iterations="many"), "max_iterations"),
        (
            lambda d: d["systems"][0].update(structure="/nonexistent/ala2.xyz"),
            "/nonexistent/ala2.xyz",
        ),
        (
            lambda d: d.update(
                labeler={"name": "cp2k", "settings": {"command": "no-such-cp2k.psmp"}}
            ),
            "no-such-cp2k",
        ),
        (lambda d: d["exploration"]["settings"].update(temperature_K=-5.0), "temperature"),
        (lambda d: d["model"]["training"].update(learning_rate=1e-3), "learning_rate"),
    ],
)
def test_bad_campaign_fails_before_any_task(shrunk, change, message):
    from typer.testing import CliRunner

    from ubmd.cli import app, get_app

    config = shrunk(name="bad")
    data = yaml.safe_load(config.read_text())
    change(data)
    config.write_text(yaml.safe_dump(data))
    get_app()
    res = CliRunner().invoke(app, ["run", str(config), "--site", "local", "--no-live"])
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert not (Path(data["directory"]) / "parsl").exists(), "a task was submitted"


def test_bad_campaign_cli_exit_status(shrunk):
    config = shrunk(name="bad")
    data = yaml.safe_load(config.read_text())
    data["labeler"] = {"name": "xtb", "settings": {"methd": "GFN2-xTB"}}
    config.write_text(yaml.safe_dump(data))
    res = _run(config, timeout=120)
    assert res.returncode == 2
    assert "methd" in res.stderr and "Traceback" not in res.stderr


def test_bad_model_hyperparameter_is_caught_before_training(shrunk):
    from typer.testing import CliRunner

    from ubmd.cli import app, get_app

    config = shrunk(name="badhp")
    data = yaml.safe_load(config.read_text())
    data["model"]["hyperparameters"] = {"n_featurez": 8}
    config.write_text(yaml.safe_dump(data))
    get_app()
    res = CliRunner().invoke(app, ["run", str(config), "--no-live"])
    assert res.exit_code == 2
    assert "n_featurez" in res.output
