"""Shared test data for the store tests; run as a script it is the crash-test writer.

python store_helpers.py STORE FIRST_BATCH   # appends batches FIRST_BATCH, +1, ... forever,
                                            # printing "<batch> <n>" after each commit
"""

from __future__ import annotations

import sys

import numpy as np

from ubmd import keys
from ubmd.store import STORE_INDEX

VOLATILE = (keys.CREATED_AT, STORE_INDEX)


def assert_same(a: dict, b: dict, skip=VOLATILE) -> None:
    assert set(a) == set(b)
    for k in a:
        if k in skip:
            continue
        assert a[k].dtype == b[k].dtype, k
        # bitwise: compare bytes so that NaN == NaN and -0.0 != 0.0
        if a[k].dtype.kind in "fiub":
            assert a[k].shape == b[k].shape and a[k].tobytes() == b[k].tobytes(), k
        else:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def batch_arrays(batch_id: int) -> dict[str, np.ndarray]:
    """A deterministic batch of 1-6 random molecules (3-12 atoms); iteration = batch_id."""
    rng = np.random.default_rng(batch_id)
    n_atoms = rng.integers(3, 13, size=int(rng.integers(1, 7)))
    S, A = len(n_atoms), int(n_atoms.sum())
    return {
        keys.NUMBERS: rng.integers(1, 9, size=A),
        keys.POSITIONS: rng.normal(size=(A, 3)) * 3,
        keys.FORCES: rng.normal(size=(A, 3)),
        keys.N_ATOMS: n_atoms,
        keys.ENERGY: rng.normal(size=S) * 10,
        keys.ITERATION: np.full(S, batch_id),
        keys.MD_STEP: np.arange(S),
        keys.LABELER: np.array(["xtb", "emt"])[rng.integers(0, 2, size=S)],
    }


def labeled_atoms(n: int, seed: int = 0, *, periodic_every: int = 3) -> list:
    """Random labeled structures: molecules, and every ``periodic_every``-th periodic with stress."""
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        na = int(rng.integers(2, 9))
        atoms = Atoms(numbers=rng.integers(1, 30, size=na), positions=rng.normal(size=(na, 3)) * 2)
        results = {
            "energy": float(rng.normal() * 5),
            "forces": rng.normal(size=(na, 3)),
        }
        if i % periodic_every == periodic_every - 1:
            atoms.cell = np.diag(rng.uniform(4, 8, size=3)) + rng.normal(size=(3, 3)) * 0.1
            atoms.pbc = (True, True, bool(i % 2))
            results["stress"] = rng.normal(size=6) * 0.01
            results["free_energy"] = results["energy"] - 0.01
        atoms.calc = SinglePointCalculator(atoms, **results)
        atoms.info.update(
            iteration=i % 3,
            explorer=i,
            md_step=200 * i,
            temperature_K=300.0 + rng.normal(),
            sampler="biased_md",
            selection_uncertainty=float(rng.uniform()),
            labeler="xtb",
            labeler_hash="0123abcd",
            campaign_id="T",
        )
        out.append(atoms)
    return out


def _arm_self_kill(store, where: str) -> None:
    """Make this process SIGKILL itself at a chosen point inside the next append:
    ``put:N`` before the N-th dataset write, ``flush:N`` / ``flushed:N`` before / after
    the N-th flush (flush 1 precedes the commit-count write, flush 2 follows it)."""
    import os
    import signal

    import ubmd.store.store as store_mod

    kind, n = where.split(":")
    count = {"n": 0}

    def maybe_die() -> None:
        count["n"] += 1
        if count["n"] == int(n):
            os.kill(os.getpid(), signal.SIGKILL)

    if kind == "put":
        real_put = store_mod._put

        def put(ds, start, values):
            maybe_die()
            real_put(ds, start, values)

        store_mod._put = put
    else:
        real_flush = store._f.flush

        class FileProxy:  # h5py.File does not take new attributes: wrap it
            def __getattr__(self, name):
                return getattr(store._f_real, name)

            def __getitem__(self, key):
                return store._f_real[key]

            def flush(self):
                if kind == "flush":
                    maybe_die()
                real_flush()
                if kind == "flushed":
                    maybe_die()

        store._f_real = store._f
        store._f = FileProxy()


def _writer(path: str, first: int) -> None:
    import os

    from ubmd.store import StructureStore

    store = StructureStore.open(path, mode="a")
    print("ready", flush=True)
    if os.environ.get("UBMD_TEST_SELF_KILL"):
        store.append_arrays(batch_arrays(first))
        print(first, len(batch_arrays(first)[keys.N_ATOMS]), flush=True)
        _arm_self_kill(store, os.environ["UBMD_TEST_SELF_KILL"])
        store.append_arrays(batch_arrays(first + 1))
        print("survived", flush=True)
        return
    batch = first
    while True:
        arrays = batch_arrays(batch)
        store.append_arrays(arrays)
        print(batch, len(arrays[keys.N_ATOMS]), flush=True)
        batch += 1


if __name__ == "__main__":
    _writer(sys.argv[1], int(sys.argv[2]))
