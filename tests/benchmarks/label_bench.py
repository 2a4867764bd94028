"""Benchmark: per-label wall time and the labeler wrapper's overhead against calling the code
directly.

- CP2K on one H2O (periodic 5 Å box, DZVP-MOLOPT-SR-GTH, 300 Ry, 1 OpenMP thread): the same input
  run as ``cp2k.psmp -i ubmd.inp`` through ``subprocess.run`` vs ``CP2KLabeler.label`` (input
  writing, process-group launch, parsing, validation). Runs alternate to share machine noise.
- GFN2-xTB on alanine dipeptide: tblite's ``Calculator(...).singlepoint()`` vs ``XTBLabeler.label``.

Two overhead estimates: the difference of the medians (direct vs labeler, noisy on a busy
machine) and a paired one: per labeler call, its wall time minus the time spent inside the code
itself (the CP2K process / tblite's singlepoint), measured in the same call.  The paired figure
counts everything the wrapper adds (for xTB also building the tblite Calculator) and is the one
compared with the targets.

Targets: CP2K overhead <= 5 %, xTB overhead <= 2 ms per label.  Usage:

    OMP_NUM_THREADS=1 python tests/benchmarks/label_bench.py [--cp2k-repeats 7] [--xtb-repeats 200]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from ase import units
from ase.build import molecule

from ubmd.labelers import make_labeler
from ubmd.labelers.amber import load_amber_structure

REPO = Path(__file__).resolve().parents[2]
ALA2 = REPO / "data" / "ala2"


def bench_cp2k(repeats: int, scratch: Path) -> tuple[float, float, float]:
    import ubmd.labelers.base as base

    inside: list[float] = []
    original = base.run_command

    def timed_run_command(*args, **kwargs):
        outcome = original(*args, **kwargs)
        inside.append(outcome.wall_time_s)
        return outcome

    base.run_command = timed_run_command
    atoms = molecule("H2O")
    atoms.cell = [5.0, 5.0, 5.0]
    atoms.pbc = True
    atoms.center()
    lab = make_labeler("cp2k", cutoff_Ry=300.0, rel_cutoff_Ry=50.0, omp_num_threads=1)
    lab.label(atoms, workdir=scratch / "warmup")  # caches the version query, warms the disk
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    direct, wrapped = [], []
    for i in range(repeats):
        d = scratch / f"direct_{i}"
        d.mkdir()
        shutil.copy(scratch / "warmup" / "ubmd.inp", d / "ubmd.inp")
        t0 = time.perf_counter()
        with open(d / "cp2k.out", "wb") as out:
            subprocess.run(["cp2k.psmp", "-i", "ubmd.inp"], cwd=d, env=env, stdout=out, check=True)
        direct.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        result = lab.label(atoms, workdir=scratch / f"wrapped_{i}")
        wrapped.append(time.perf_counter() - t0)
        assert result.ok
    base.run_command = original
    paired = [w - i for w, i in zip(wrapped, inside[1:], strict=True)]
    return statistics.median(direct), statistics.median(wrapped), statistics.median(paired)


def bench_xtb(repeats: int) -> tuple[float, float, float]:
    import tblite.interface
    from tblite.interface import Calculator

    inside: list[float] = []
    original = Calculator.singlepoint

    def timed_singlepoint(self, *args, **kwargs):
        t0 = time.perf_counter()
        out = original(self, *args, **kwargs)
        inside.append(time.perf_counter() - t0)
        return out

    atoms = load_amber_structure(ALA2 / "alanine-dipeptide.prmtop", ALA2 / "alanine-dipeptide.crd")
    lab = make_labeler("xtb")
    work = Path(tempfile.mkdtemp(prefix="xtb_bench_"))

    def direct_once() -> float:
        calc = Calculator("GFN2-xTB", atoms.numbers, atoms.positions / units.Bohr)
        calc.set("verbosity", 0)
        return float(calc.singlepoint().get("energy")) * units.Hartree

    e_direct = direct_once()
    e_lab = lab.label(atoms, workdir=work).energy
    assert abs(e_direct - e_lab) < 1e-8, (e_direct, e_lab)
    direct, wrapped, paired = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        direct_once()
        direct.append(time.perf_counter() - t0)
        tblite.interface.Calculator.singlepoint = timed_singlepoint
        t0 = time.perf_counter()
        lab.label(atoms, workdir=work)
        wrapped.append(time.perf_counter() - t0)
        tblite.interface.Calculator.singlepoint = original
        paired.append(wrapped[-1] - inside[-1])
    shutil.rmtree(work, ignore_errors=True)
    return statistics.median(direct), statistics.median(wrapped), statistics.median(paired)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cp2k-repeats", type=int, default=7)
    parser.add_argument("--xtb-repeats", type=int, default=200)
    args = parser.parse_args()

    xtb_direct, xtb_wrapped, xtb_paired = bench_xtb(args.xtb_repeats)
    xtb_over_ms = xtb_paired * 1e3
    print(
        f"xtb  ala2 (22 atoms): direct {xtb_direct * 1e3:.2f} ms, labeler {xtb_wrapped * 1e3:.2f} ms "
        f"(median of {args.xtb_repeats}); difference of medians "
        f"{(xtb_wrapped - xtb_direct) * 1e3:+.2f} ms, paired wrapper overhead {xtb_over_ms:.2f} ms/label"
    )

    if shutil.which("cp2k.psmp") is None:
        print("cp2k.psmp not found: CP2K part skipped")
        print(f"SUMMARY xtb overhead {xtb_over_ms:.2f} ms/label (target <= 2 ms); cp2k n/a")
        return
    with tempfile.TemporaryDirectory(prefix="cp2k_bench_") as tmp:
        cp_direct, cp_wrapped, cp_paired = bench_cp2k(args.cp2k_repeats, Path(tmp))
    cp_over = cp_paired / cp_direct * 100
    print(
        f"cp2k H2O (5 A box):   direct {cp_direct:.3f} s, labeler {cp_wrapped:.3f} s "
        f"(median of {args.cp2k_repeats}); difference of medians "
        f"{(cp_wrapped - cp_direct) / cp_direct * 100:+.1f} %, paired wrapper overhead "
        f"{cp_paired * 1e3:.1f} ms = {cp_over:.2f} %"
    )
    print(
        f"SUMMARY cp2k overhead {cp_over:.2f} % paired / {(cp_wrapped - cp_direct) / cp_direct * 100:+.1f} % "
        f"median difference (target <= 5 %); xtb overhead {xtb_over_ms:.2f} ms/label paired / "
        f"{(xtb_wrapped - xtb_direct) * 1e3:+.2f} ms median difference (target <= 2 ms)"
    )


if __name__ == "__main__":
    main()
