"""`ubmd store info | export | import | validate` through typer's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import ase.io
import h5py
import numpy as np
import pytest
import typer
from ase import Atoms
from store_helpers import labeled_atoms
from typer.testing import CliRunner

from ubmd.cli import store_cmd
from ubmd.store import StructureStore


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    root = typer.Typer()

    @root.callback()
    def _root() -> None:
        pass

    store_cmd.register(root)
    return root


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "c.h5"
    with StructureStore.create(path) as st:
        st.append(labeled_atoms(6))
    return path


def run(app: typer.Typer, *args: str):
    return CliRunner().invoke(app, ["store", *map(str, args)])


def test_info(app, store: Path) -> None:
    res = run(app, "info", store)
    assert res.exit_code == 0, res.output
    assert "structures     6" in res.output and "ok: 6" in res.output
    assert "schema version 1" in res.output
    res = run(app, "info", store, "--json")
    data = json.loads(res.output)
    assert data["by_iteration"] == {"0": 2, "1": 2, "2": 2}
    assert data["by_labeler"] == {"xtb": 6}


def test_export_and_import_round_trip(app, store: Path, tmp_path: Path) -> None:
    res = run(app, "export", store, tmp_path / "it1.extxyz", "--iteration", "1")
    assert res.exit_code == 0 and "exported 2 structures" in res.output
    assert len(ase.io.read(tmp_path / "it1.extxyz", ":")) == 2
    res = run(app, "export", store, tmp_path / "all.db", "--status", "ok")
    assert res.exit_code == 0 and "exported 6" in res.output
    new = tmp_path / "new.h5"
    res = run(app, "import", new, tmp_path / "it1.extxyz", tmp_path / "all.db", "--labeler", "cp2k")
    assert res.exit_code == 0, res.output
    assert "it1.extxyz: 2 added, 0 duplicates" in res.output
    assert "all.db: 4 added, 2 duplicates" in res.output
    assert "= store row 0" in res.output
    with StructureStore.open(new) as st, StructureStore.open(store) as ref:
        assert len(st) == 6 and set(st.read_arrays()["labeler"]) == {"cp2k"}
        a, b = ref.read_arrays(iteration=1), st.read_arrays(indices=[0, 1])
        assert a["positions"].tobytes() == b["positions"].tobytes()
    res = run(app, "export", store, tmp_path / "x.json")
    assert res.exit_code == 2 and "error:" in res.output and ".db" in res.output


def test_import_unlabeled_needs_flag(app, tmp_path: Path) -> None:
    cif = tmp_path / "si.cif"
    ase.io.write(
        cif, Atoms("Si2", positions=[[0, 0, 0], [1.3] * 3], cell=np.eye(3) * 5.4, pbc=True)
    )
    new = tmp_path / "n.h5"
    res = run(app, "import", new, cif)
    assert res.exit_code == 2 and "--allow-unlabeled" in " ".join(res.output.split())
    res = run(app, "import", new, cif, "--allow-unlabeled")
    assert res.exit_code == 0, res.output
    with StructureStore.open(new) as st:
        d = st.read_arrays()
    assert d["status"].tolist() == ["failed"] and "unlabeled" in d["reason"][0]


def test_validate_clean_and_corrupted(app, store: Path, tmp_path: Path) -> None:
    res = run(app, "validate", store)
    assert res.exit_code == 0 and "valid" in res.output
    with h5py.File(store, "r+") as f:
        f["energy"][1] = np.nan  # an 'ok' record without energy
        f["positions"][0, 0] += 1.0  # content no longer matches its hash
        f["atom_offset"][3] += 1  # offsets no longer contiguous
    res = run(app, "validate", store)
    assert res.exit_code == 1
    out = res.output
    assert "without finite energy: 1" in out
    assert "hash does not match content at structures 0" in out
    assert "atom_offset not contiguous at structures 3" in out
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"\0" * 100)
    res = run(app, "validate", junk)
    assert res.exit_code == 1 and "not an HDF5 file" in res.output
    res = run(app, "validate", tmp_path / "missing.h5")
    assert res.exit_code == 2 and "does not exist" in " ".join(res.output.split())


def test_validate_detects_stored_duplicates_and_bad_counts(app, store: Path) -> None:
    with h5py.File(store, "r+") as f:
        f["hash"][2] = f["hash"][1]
        f["strings"].resize((f["strings"].shape[0] + 1,))
        f["status"][4] = f["strings"].shape[0] - 1  # a code beyond the committed table
    res = run(app, "validate", store)
    assert res.exit_code == 1
    assert "status: string codes out of range at structures 4" in res.output
    with h5py.File(store, "r+") as f:
        f["status"][4] = 1
        f["committed"][0] = 99
    res = run(app, "validate", store)
    assert res.exit_code == 1 and "99 committed structures" in res.output


def test_help_texts(app) -> None:
    for cmd in ("info", "export", "import", "validate"):
        res = run(app, cmd, "--help")
        assert res.exit_code == 0 and "Usage" in res.output


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--status", "bogus"], "status 'bogus' is not a record status (accepted: 'ok', 'failed')"),
        (["--sampler", "nope"], "matches sampler 'nope'; nothing written"),
        (["--iteration", "7"], "matches iteration [7]; nothing written"),
    ],
)
def test_export_of_nothing_is_an_error_and_writes_no_file(app, store, tmp_path, options, message):
    out = tmp_path / "out.extxyz"
    res = run(app, "export", store, out, *options)
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split())
    assert "Traceback" not in res.output
    assert not out.exists()
