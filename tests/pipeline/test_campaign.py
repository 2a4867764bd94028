"""The campaign on parsl (HighThroughputExecutor + LocalProvider): end to end, resume after
SIGKILL at distinct phases, a killed worker's task retried, bad files rejected before any task."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
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


def _wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    t0 = time.monotonic()
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"campaign ended before {what}: {proc.stderr.read()[-3000:]}")
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


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
    summary = (root / "reports" / "summary.tsv").read_text().splitlines()
    assert len(summary) == 4 and summary[0].startswith("iteration")
    assert (root / "reports" / "learning_curve.png").is_file()
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
    # the final model: trained on every stored label, calibrated, reported, an ASE calculator
    final = _model_extra(root / "final" / "models" / "member_0.pt")
    limit = data["model"].get("max_energy_above_min_eV_atom")
    digest, n_kept = _ok_labels_digest(root / "store.h5", limit)
    assert final["n_train"] == n_kept and final["training_data"] == digest
    atoms.calc = UBMDCalculator.from_file(root / "final" / "model.pt")
    assert np.isfinite(atoms.get_potential_energy())
    assert np.isfinite(atoms.calc.get_property("atomic_uncertainty", atoms)).all()
    report = yaml.safe_load((root / "final" / "report.json").read_text())
    assert report["labels"] == len(content)
    for metrics in (report["test"], report["tests"]["plane"]):
        assert 0 < metrics["energy_rmse_eV_atom"] < 1.0 and 0 < metrics["force_rmse_eV_A"] < 5.0
    assert 0 < report["ramachandran_coverage"] <= 1
    rows = [line.split("\t") for line in summary]
    assert [r[0] for r in rows[1:]] == ["1", "2", "final"]
    assert "plane_force_rmse_eV_A" in rows[0]
    status = subprocess.run(
        [sys.executable, "-m", "ubmd.cli", "status", str(root)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert status.returncode == 0 and "ok" in status.stdout
    assert f"final model: {root / 'final' / 'model.pt'}" in status.stdout
    assert f"{len(content)} labels in the store" in status.stdout


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
    proc = _start(config)
    try:
        # a training task is running once its model folder appears: kill the workers under it
        _wait_for(lambda: (root / "iter_001" / "models").is_dir(), proc, "training")
        workers = _workers(proc, root)
        assert workers, "no parsl worker processes found"
        # the busiest process under the pool is the worker running the training task (the
        # others are an idle worker and multiprocessing's manager, which must survive)
        before = {w.pid: _cpu(w) for w in workers}
        time.sleep(1.5)
        busiest = max(workers, key=lambda w: _cpu(w) - before[w.pid])
        busiest.kill()
        assert not (root / "iter_001" / "model.pt").exists(), "training finished before the kill"
        assert proc.wait(timeout=400) == 0, proc.stderr.read()[-4000:]
    finally:
        if proc.poll() is None:
            _kill_group(proc, root)
    logs = "\n".join(p.read_text(errors="replace") for p in (root / "parsl").rglob("parsl.log"))
    assert "fail_count" in logs or "retry" in logs.lower(), "no retry recorded in the parsl log"
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


def _cpu(p: psutil.Process) -> float:
    try:
        t = p.cpu_times()
        return t.user + t.system
    except psutil.Error:
        return 0.0


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
