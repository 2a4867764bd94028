"""Injected failures through the real subprocess seam: each ends typed, logs kept, no stray process.

Fake reference codes are tiny /bin/sh scripts passed as the CP2K ``command``; they write (part
of) a real CP2K output to stdout, crash, or hang with a child process.
"""

from __future__ import annotations

import os
import time

import psutil
import pytest
from ase import units
from label_helpers import ALCO_OUT, H2O32_OUT, SI2_NOFORCES_OUT, make_script

from ubmd.labelers.cp2k import CP2KLabeler
from ubmd.labelers.errors import (
    AbsurdForces,
    MissingForces,
    OutputUnreadable,
    ProgramCrashed,
    SCFNotConverged,
    TimeLimitExceeded,
)
from ubmd.labelers.process import group_members, run_command


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def fake_cp2k(tmp_path, body: str, **settings) -> CP2KLabeler:
    script = make_script(tmp_path / "fake_cp2k.sh", body)
    return CP2KLabeler(command=str(script), **settings)


def test_fake_cp2k_replaying_a_real_output_gives_its_values(tmp_path, h2o32_atoms):
    lab = fake_cp2k(tmp_path, f'cat "{H2O32_OUT}"\n')
    result = lab.label(h2o32_atoms, workdir=tmp_path / "run")
    assert result.ok
    assert result.energy == pytest.approx(-551.571385283613040 * units.Hartree, rel=1e-12)
    f0 = [-0.01347041, -0.01037292, -0.02430793]
    assert result.forces[0] == pytest.approx([x * units.Hartree / units.Bohr for x in f0])
    assert result.stress[0] == pytest.approx(-4.56425492045 * units.GPa)
    assert (tmp_path / "run" / "ubmd.inp").is_file() and (tmp_path / "run" / "cp2k.out").is_file()


def test_crashing_executable(tmp_path, water_box):
    lab = fake_cp2k(tmp_path, 'echo "starting"\necho "segfault in rank 0" >&2\nexit 139\n')
    with pytest.raises(ProgramCrashed, match="status 139") as info:
        lab.label(water_box, workdir=tmp_path / "run")
    err = info.value
    assert err.reason == "program_crashed" and err.returncode == 139
    assert "segfault in rank 0" in err.stderr and "starting" in err.stdout
    assert err.workdir == tmp_path / "run" and (err.workdir / "stderr.log").is_file()


def test_time_limit_kills_the_whole_group(tmp_path, water_box):
    # The script starts a child, records both pids, ignores SIGTERM so only SIGKILL ends it.
    body = "trap '' TERM\nsleep 60 &\necho $! > child.pid\necho $$ > leader.pid\nwait\nsleep 60\n"
    lab = fake_cp2k(tmp_path, body, timeout_s=1.0, kill_grace_s=0.5)
    t0 = time.monotonic()
    with pytest.raises(TimeLimitExceeded, match="time limit of 1 s") as info:
        lab.label(water_box, workdir=tmp_path / "run")
    assert time.monotonic() - t0 < 30
    assert info.value.reason == "time_limit_exceeded"
    run = tmp_path / "run"
    leader, child = int((run / "leader.pid").read_text()), int((run / "child.pid").read_text())
    assert not _alive(leader) and not _alive(child)
    assert group_members(leader) == []


def test_time_limit_kills_descendants_in_their_own_session(tmp_path, water_box):
    # Like MPI ranks: a grandchild that left the process group (setsid) and ignores SIGTERM.
    body = (
        "setsid sh -c 'trap \"\" TERM; echo $$ > escaped.pid; exec sleep 60' &\n"
        "while [ ! -s escaped.pid ]; do sleep 0.05; done\nsleep 60\n"
    )
    lab = fake_cp2k(tmp_path, body, timeout_s=1.0, kill_grace_s=0.5)
    with pytest.raises(TimeLimitExceeded):
        lab.label(water_box, workdir=tmp_path / "run")
    escaped = int((tmp_path / "run" / "escaped.pid").read_text())
    assert not _alive(escaped)


def test_children_outliving_a_normal_exit_are_swept(tmp_path):
    script = make_script(tmp_path / "daemon.sh", "sleep 60 &\necho $! > child.pid\nexit 0\n")
    outcome = run_command([str(script)], cwd=tmp_path, timeout_s=10, grace_s=1.0)
    assert outcome.returncode == 0 and not outcome.timed_out
    child = int((tmp_path / "child.pid").read_text())
    assert not _alive(child)


def test_truncated_output(tmp_path, h2o32_atoms):
    size = H2O32_OUT.stat().st_size
    lab = fake_cp2k(tmp_path, f'head -c {int(size * 0.6)} "{H2O32_OUT}"\n')
    with pytest.raises(OutputUnreadable, match="truncated") as info:
        lab.label(h2o32_atoms, workdir=tmp_path / "run")
    assert info.value.reason == "output_unreadable" and info.value.returncode == 0


def test_empty_output(tmp_path, water_box):
    lab = fake_cp2k(tmp_path, "exit 0\n")
    with pytest.raises(OutputUnreadable):
        lab.label(water_box, workdir=tmp_path / "run")


def test_real_unconverged_output_raises_scf_not_converged(tmp_path):
    from ase import Atoms

    atoms = Atoms("Si2", positions=[[0, 0, 0], [1.36, 1.36, 1.36]], cell=[5.43] * 3, pbc=True)
    lab = fake_cp2k(tmp_path, f'cat "{SI2_NOFORCES_OUT}"\n')
    with pytest.raises(SCFNotConverged, match="NOT converged"):
        lab.label(atoms, workdir=tmp_path / "run")


def test_missing_forces(tmp_path):
    from ase import Atoms

    # The real Si2 output without forces, with the SCF warning removed: only forces are missing.
    atoms = Atoms("Si2", positions=[[0, 0, 0], [1.36, 1.36, 1.36]], cell=[5.43] * 3, pbc=True)
    lab = fake_cp2k(tmp_path, f'grep -v "SCF run NOT converged" "{SI2_NOFORCES_OUT}"\n')
    with pytest.raises(MissingForces, match="ATOMIC FORCES"):
        lab.label(atoms, workdir=tmp_path / "run")


def test_absurd_forces_bound(tmp_path):
    from ase import Atoms

    n = 302  # the real AlCo hydroxide output: max |F| = 0.056 Ha/bohr = 2.9 eV/Å
    atoms = Atoms(
        "H" * n, positions=[[i % 10, i // 10 % 10, i // 100] for i in range(n)], cell=[30] * 3
    )
    atoms.pbc = True
    body = f'grep -v "SCF run NOT converged" "{ALCO_OUT}"\n'
    with pytest.raises(AbsurdForces, match="above the bound max_force_eV_A=1"):
        fake_cp2k(tmp_path, body, max_force_eV_A=1.0).label(atoms, workdir=tmp_path / "a")
    assert fake_cp2k(tmp_path, body).label(atoms, workdir=tmp_path / "b").ok


def test_wrong_atom_count_in_output_is_missing_forces(tmp_path, water_box):
    lab = fake_cp2k(tmp_path, f'cat "{H2O32_OUT}"\n')  # 96 forces for 3 atoms
    with pytest.raises(MissingForces, match=r"\(96, 3\) for 3 atoms"):
        lab.label(water_box, workdir=tmp_path / "run")


def test_no_process_left_of_this_test_session():
    me = psutil.Process(os.getpid())
    assert [p for p in me.children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE] == []
