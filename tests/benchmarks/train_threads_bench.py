"""One training run at one thread and at every core: what an iterations campaign gains by giving
a lone training task its local executor's cores (``ExecutorSpec.threads_alone``).

Each count runs in a fresh process (torch fixes its thread pool per process), on the ``ok``
labels of a store, the same optimizer steps from scratch, best of ``--repeat``:

    python tests/benchmarks/train_threads_bench.py \\
        docs/results/ala2_paper/full_biased_seed0/store.h5 --labels 400 --steps 300

Last line: time with one thread / time with every core.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

CHILD = "_child"


def child(store: str, labels: int, steps: int) -> None:
    """Train in this process with the thread count torch was given; print seconds."""
    import torch

    from ubmd.models.train import TrainConfig, train_model
    from ubmd.store.store import StructureStore

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    with StructureStore.open(store) as s:
        atoms = s.read_atoms(status="ok")[:labels]
    config = TrainConfig(max_epochs=10**6, max_steps=steps, lr_schedule="cosine", seed=0)
    t0 = time.perf_counter()
    train_model(config, atoms)
    print(time.perf_counter() - t0)


def timed(args: argparse.Namespace, threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, __file__, CHILD, args.store, str(args.labels), str(args.steps)]
    runs = []
    for _ in range(args.repeat):
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        runs.append(float(out.stdout.split()[-1]))
    return min(runs)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == CHILD:
        child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store")
    parser.add_argument("--labels", type=int, default=400, help="first N ok labels")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    one = timed(args, 1)
    print(f"1 thread: {one:.1f} s", flush=True)
    every = timed(args, cores)
    print(f"{cores} threads: {every:.1f} s", flush=True)
    print(f"train {args.labels} labels x {args.steps} steps: 1 thread / {cores} threads = "
          f"{one / every:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
