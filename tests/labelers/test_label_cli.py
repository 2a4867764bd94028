"""`ubmd label`: labels into a store, failed ones recorded with their reason, bad input refused."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from label_helpers import H2O32_OUT, make_script
from typer.testing import CliRunner

from ubmd.cli import app, get_app
from ubmd.store import StructureStore

runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def _commands():
    get_app()


def copper_frames(path):
    frames = []
    for seed in range(3):
        atoms = bulk("Cu", cubic=True)
        atoms.rattle(0.05, seed=seed)
        atoms.info["iteration"] = 4
        atoms.info["sampler"] = "biased_md"
        frames.append(atoms)
    ase.io.write(path, frames)
    return ase.io.read(path, ":")  # the positions as written (extxyz rounds them)


def test_emt_labels_go_into_the_store(tmp_path):
    frames = copper_frames(tmp_path / "cu.extxyz")
    store = tmp_path / "campaign.h5"
    result = runner.invoke(
        app,
        ["label", str(tmp_path / "cu.extxyz"), "--labeler", "emt", "--store", str(store),
         "--workdir", str(tmp_path / "runs")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "3 ok, 0 failed" in result.output
    with StructureStore.open(store) as st:
        back = st.read_atoms(status="ok")
        arrays = st.read_arrays()
    assert len(back) == 3
    for atoms, stored in zip(frames, back, strict=True):
        ref = atoms.copy()
        ref.calc = EMT()
        assert stored.get_potential_energy() == pytest.approx(ref.get_potential_energy())
        np.testing.assert_allclose(stored.get_forces(), ref.get_forces(), atol=1e-10)
        np.testing.assert_allclose(stored.get_stress(), ref.get_stress(), atol=1e-10)
    assert set(arrays["labeler"]) == {"emt"} and len(set(arrays["labeler_hash"])) == 1
    assert list(arrays["iteration"]) == [4, 4, 4]  # provenance from the file is kept
    assert set(arrays["sampler"]) == {"biased_md"}
    # Running again: exact duplicates are reported, not stored twice.
    again = runner.invoke(
        app, ["label", str(tmp_path / "cu.extxyz"), "-l", "emt", "-s", str(store),
              "--workdir", str(tmp_path / "runs2"), "--iteration", "5"],
    )  # fmt: skip
    assert again.exit_code == 0 and "3 already in the store" in again.output


def test_failed_structures_are_recorded_with_reason(tmp_path, h2o32_atoms):
    ase.io.write(tmp_path / "w.extxyz", [h2o32_atoms])
    crash = make_script(tmp_path / "cp2k_crash.sh", 'echo "boom" >&2\nexit 3\n')
    store = tmp_path / "s.h5"
    result = runner.invoke(
        app,
        ["label", str(tmp_path / "w.extxyz"), "-l", "cp2k", "-s", str(store), "--command",
         str(crash), "--max-attempts", "2", "--workdir", str(tmp_path / "runs")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "0 ok, 1 failed" in result.output
    with StructureStore.open(store) as st:
        arrays = st.read_arrays(status="failed")
    assert len(arrays["n_atoms"]) == 1
    reason = str(arrays["reason"][0])
    assert (
        reason.startswith("program_crashed: cp2k exited with status 3") and "2 attempts" in reason
    )
    assert (tmp_path / "runs" / "cp2k_00000" / "attempt_2" / "stderr.log").read_text() == "boom\n"


def test_settings_file_and_command(tmp_path, h2o32_atoms):
    ase.io.write(tmp_path / "w.extxyz", [h2o32_atoms])
    replay = make_script(tmp_path / "cp2k_replay.sh", f'cat "{H2O32_OUT}"\n')
    (tmp_path / "cp2k.yaml").write_text("cutoff_Ry: 300\nomp_num_threads: 1\n")
    store = tmp_path / "s.h5"
    result = runner.invoke(
        app,
        ["label", str(tmp_path / "w.extxyz"), "-l", "cp2k", "-s", str(store), "--settings",
         str(tmp_path / "cp2k.yaml"), "--command", str(replay), "--workdir", str(tmp_path / "r")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "CUTOFF 300.0" in (tmp_path / "r" / "cp2k_00000" / "attempt_1" / "ubmd.inp").read_text()
    with StructureStore.open(store) as st:
        (atoms,) = st.read_atoms()
    assert atoms.get_potential_energy() == pytest.approx(-15009.0220, abs=1e-3)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-l", "emt"], "EMT has no parameters for ['Mg']"),
        (["-l", "gaussian"], "unknown labeler 'gaussian'"),
        (["-l", "emt", "--command", "x"], "--command does not apply"),
        (["-l", "cp2k", "--command", "no-such-cp2k"], "'no-such-cp2k' not found"),
    ],
)
def test_bad_input_fails_before_anything_runs(tmp_path, args, message):
    ase.io.write(tmp_path / "mg.extxyz", [bulk("Mg")])
    store = tmp_path / "s.h5"
    result = runner.invoke(app, ["label", str(tmp_path / "mg.extxyz"), "-s", str(store), *args])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert not store.exists()


def test_unknown_setting_in_file(tmp_path):
    ase.io.write(tmp_path / "cu.extxyz", [bulk("Cu")])
    (tmp_path / "emt.yaml").write_text("cutoff_A: 5\n")
    result = runner.invoke(
        app,
        ["label", str(tmp_path / "cu.extxyz"), "-l", "emt", "-s", str(tmp_path / "s.h5"),
         "--settings", str(tmp_path / "emt.yaml")],
    )  # fmt: skip
    assert result.exit_code == 2 and "cutoff_A" in result.output
