"""Benchmark: the HDF5 structure store against extxyz (ASE) and an ASE SQLite database.

Writes and reads N alanine-dipeptide-sized structures (22 atoms, energy, forces):

    OMP_NUM_THREADS=1 python tests/benchmarks/store_bench.py            # N = 50,000
    OMP_NUM_THREADS=1 python tests/benchmarks/store_bench.py --n 5000   # quicker

"read" for the store is ``read_arrays()`` (flat arrays, what training uses); the store's
``read_atoms()`` (ASE objects, like the other two produce) is printed as well.
Targets: store read >= 20x faster than extxyz and >= 5x faster than the ASE database; one
1,000-structure append < 1 s; store file no larger than the extxyz file.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

# ACE-ALA-NME (alanine dipeptide), 22 atoms
ALA2 = [1, 6, 1, 1, 6, 8, 7, 1, 6, 1, 6, 1, 1, 1, 6, 8, 7, 1, 6, 1, 1, 1]


class Timer:
    """Wall and CPU seconds of a block (CPU time is robust to other jobs on a busy machine)."""

    def __enter__(self) -> Timer:
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.w0
        self.cpu = time.process_time() - self.c0


def make_data(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    from ubmd import keys

    rng = np.random.default_rng(seed)
    base = rng.uniform(-4, 4, size=(22, 3))
    return {
        keys.NUMBERS: np.tile(ALA2, n),
        keys.POSITIONS: np.tile(base, (n, 1)) + rng.normal(scale=0.2, size=(22 * n, 3)),
        keys.FORCES: rng.normal(scale=1.0, size=(22 * n, 3)),
        keys.N_ATOMS: np.full(n, 22),
        keys.ENERGY: rng.normal(loc=-15000.0, scale=1.0, size=n),
    }


def to_atoms(data: dict[str, np.ndarray]) -> list:
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    from ubmd import keys

    n = len(data[keys.N_ATOMS])
    pos = data[keys.POSITIONS].reshape(n, 22, 3)
    frc = data[keys.FORCES].reshape(n, 22, 3)
    out = []
    for i in range(n):
        a = Atoms(numbers=ALA2, positions=pos[i])
        a.calc = SinglePointCalculator(a, energy=float(data[keys.ENERGY][i]), forces=frc[i])
        out.append(a)
    return out


def bench_store(data: dict, path: str, batch: int) -> dict[str, float]:
    from ubmd import keys
    from ubmd.store import Provenance, StructureStore

    n = len(data[keys.N_ATOMS])
    prov = Provenance(campaign_id="bench", iteration=0, labeler="amber", sampler="biased_md")
    times = []
    with Timer() as tw, StructureStore.create(path) as st:
        for s in range(0, n, batch):
            e = min(s + batch, n)
            chunk = {
                keys.NUMBERS: data[keys.NUMBERS][22 * s : 22 * e],
                keys.POSITIONS: data[keys.POSITIONS][22 * s : 22 * e],
                keys.FORCES: data[keys.FORCES][22 * s : 22 * e],
                keys.N_ATOMS: data[keys.N_ATOMS][s:e],
                keys.ENERGY: data[keys.ENERGY][s:e],
            }
            t = time.perf_counter()
            st.append_arrays(chunk, prov)
            times.append(time.perf_counter() - t)
    reads = []
    for _ in range(3):  # cheap, so take the median of three
        with Timer() as tr, StructureStore.open(path) as st:
            arrays = st.read_arrays()
        reads.append(tr)
        assert np.array_equal(arrays[keys.POSITIONS], data[keys.POSITIONS])
    tr = sorted(reads, key=lambda t: t.wall)[1]
    with Timer() as ta, StructureStore.open(path) as st:
        atoms = st.read_atoms()
    assert len(atoms) == n
    return {
        "write": tw.wall,
        "write_cpu": tw.cpu,
        "read": tr.wall,
        "read_cpu": tr.cpu,
        "read_atoms": ta.wall,
        "read_atoms_cpu": ta.cpu,
        "batch_max": max(times),
        "batch_mean": float(np.mean(times)),
        "size": os.path.getsize(path),
    }


def bench_extxyz(atoms: list, path: str) -> dict[str, float]:
    import ase.io

    with Timer() as tw:
        ase.io.write(path, atoms, format="extxyz")
    with Timer() as tr:
        back = ase.io.read(path, index=":", format="extxyz")
    assert len(back) == len(atoms)
    return _result(tw, tr, path)


def bench_db(atoms: list, path: str) -> dict[str, float]:
    from ase.db import connect

    with Timer() as tw, connect(path) as db:
        for a in atoms:
            db.write(a)
    with Timer() as tr:
        back = [row.toatoms() for row in connect(path).select()]
    assert len(back) == len(atoms)
    return _result(tw, tr, path)


def _result(tw: Timer, tr: Timer, path: str) -> dict[str, float]:
    return {
        "write": tw.wall,
        "write_cpu": tw.cpu,
        "read": tr.wall,
        "read_cpu": tr.cpu,
        "size": os.path.getsize(path),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=50_000, help="number of structures")
    parser.add_argument("--batch", type=int, default=1_000, help="structures per store append")
    parser.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        data = make_data(args.n)
        atoms = to_atoms(data)
        st = bench_store(data, os.path.join(tmp, "s.h5"), args.batch)
        xyz = bench_extxyz(atoms, os.path.join(tmp, "s.extxyz"))
        db = bench_db(atoms, os.path.join(tmp, "s.db"))

    mib = 2**20
    print(f"N = {args.n} structures x 22 atoms (energy, forces); store batches of {args.batch}")
    print(f"{'':10}{'write s':>10}{'(cpu)':>9}{'read s':>10}{'(cpu)':>9}{'size MiB':>10}")
    for name, r in (("store", st), ("extxyz", xyz), ("ase-db", db)):
        print(
            f"{name:10}{r['write']:10.2f}{r['write_cpu']:9.2f}{r['read']:10.3f}"
            f"{r['read_cpu']:9.3f}{r['size'] / mib:10.1f}"
        )
    print(
        f"store read_atoms (ASE objects): {st['read_atoms']:.2f} s (cpu {st['read_atoms_cpu']:.2f})"
    )
    print(f"store append per batch: mean {st['batch_mean']:.3f} s, max {st['batch_max']:.3f} s")
    r_xyz, r_db = xyz["read"] / st["read"], db["read"] / st["read"]
    c_xyz, c_db = xyz["read_cpu"] / st["read_cpu"], db["read_cpu"] / st["read_cpu"]
    ra_xyz, ra_db = xyz["read"] / st["read_atoms"], db["read"] / st["read_atoms"]
    print(f"read speed-up (arrays, wall): {r_xyz:.0f}x vs extxyz, {r_db:.0f}x vs ase-db")
    print(f"read speed-up (arrays, cpu):  {c_xyz:.0f}x vs extxyz, {c_db:.0f}x vs ase-db")
    print(f"read speed-up (Atoms, wall):  {ra_xyz:.1f}x vs extxyz, {ra_db:.1f}x vs ase-db")
    print(
        f"write speed-up (wall): {xyz['write'] / st['write']:.0f}x vs extxyz, "
        f"{db['write'] / st['write']:.0f}x vs ase-db"
    )
    size_ratio = st["size"] / xyz["size"]
    print(
        f"SUMMARY n={args.n} read {r_xyz:.0f}x extxyz (target 20) {r_db:.0f}x ase-db (target 5) "
        f"[cpu {c_xyz:.0f}x/{c_db:.0f}x]; Atoms read {ra_xyz:.1f}x/{ra_db:.1f}x; max batch "
        f"append {st['batch_max']:.3f} s (target 1); size store/extxyz {size_ratio:.2f} (target <= 1)"
    )


if __name__ == "__main__":
    main()
