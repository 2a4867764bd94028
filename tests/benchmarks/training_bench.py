"""Training inside a campaign, replayed: from scratch vs warm start, loss weights, weight averaging.

Takes the labels of a finished campaign's store in the order they arrived and trains, iteration by
iteration, on the labels from before that iteration, exactly as a campaign does, with several
training variants. Each variant's model after every iteration is measured on held-out test sets,
so the variants' learning curves (and their wall time) compare on the same data:

    OMP_NUM_THREADS=1 python tests/benchmarks/training_bench.py STORE.h5 \\
        --test data/ala2/ala2_xtb_300K.extxyz --test data/ala2/ala2_xtb_plane.extxyz

``--final-only`` trains once on every label (a campaign's final model), e.g. to compare loss
weights over seeds: ``--final-only --seed 1 --variant scratch:energy_weight=100.0``.

Variants are named ``kind[:key=value,...]``: ``scratch`` retrains from a fresh model every
iteration, ``warm`` fine-tunes the previous iteration's model; the keys are TrainConfig fields
(for ``warm`` they apply to the fine-tuning runs; the first iteration always starts from scratch
with the base settings). Last line: final force RMSE on the last test set, warm / scratch.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _parse_variant(text: str) -> tuple[str, str, dict]:
    kind, _, rest = text.partition(":")
    if kind not in ("scratch", "warm"):
        raise SystemExit(f"variant {text!r}: kind must be 'scratch' or 'warm'")
    options = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        options[key] = _value(value)
    return text, kind, options


def _value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _errors(model, arrays) -> tuple[float, float, float]:
    """(energy RMSE meV/atom, energy MAE meV/atom, force RMSE eV/Å)."""
    from ubmd import keys
    from ubmd.models.data import select
    from ubmd.models.graph import Graph
    from ubmd.models.potential import compute

    n = len(arrays[keys.N_ATOMS])
    de, df = [], []
    for start in range(0, n, 64):
        part = select(arrays, np.arange(start, min(start + 64, n)))
        graph = Graph.from_arrays(part, cutoff=model.cutoff, device="cpu", dtype=model.dtype)
        out = compute(model, graph, forces=True)
        de.append(
            (out["energy"].detach().double().numpy() - part[keys.ENERGY]) / part[keys.N_ATOMS]
        )
        df.append(out["forces"].detach().double().numpy() - part[keys.FORCES])
    de_all, df_all = np.concatenate(de), np.concatenate(df)
    return (
        1000 * float(np.sqrt(np.mean(de_all**2))),
        1000 * float(np.mean(np.abs(de_all))),
        float(np.sqrt(np.mean(df_all**2))),
    )


def main() -> None:
    from ubmd import keys
    from ubmd.models.data import labelled_arrays
    from ubmd.models.train import TrainConfig
    from ubmd.store import StructureStore

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store")
    parser.add_argument("--test", action="append", required=True)
    parser.add_argument(
        "--variant",
        action="append",
        help="e.g. scratch, 'warm:max_epochs=100,lr=0.001' (repeatable)",
    )
    parser.add_argument("--base", default="", help="base TrainConfig fields, key=value,...")
    parser.add_argument("--seed", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--final-only",
        action="store_true",
        help="train once on every label (the final model) instead of replaying iterations",
    )
    parser.add_argument("--every", type=int, default=1, help="evaluate every k-th iteration")
    parser.add_argument(
        "--max-energy-above-min",
        type=float,
        help="leave out labels this far (eV/atom) above the lowest of their composition, as a "
        "campaign's model.max_energy_above_min_eV_atom does",
    )
    args = parser.parse_args()
    variants = [_parse_variant(v) for v in (args.variant or ["scratch", "warm"])]
    base = _parse_variant("scratch:" + args.base)[2]
    base_config = TrainConfig(**{"max_epochs": 300, "patience": 50, **base})

    with StructureStore.open(args.store, mode="r") as store:
        rows = store.select(status=keys.STATUS_OK)
        arrays = store.read_arrays(indices=rows)
    if args.max_energy_above_min is not None:
        from ubmd.campaign.learning import energy_above_minimum
        from ubmd.models.data import select as select_rows

        keep = np.flatnonzero(energy_above_minimum(arrays) <= args.max_energy_above_min)
        print(f"leaving out {len(arrays[keys.N_ATOMS]) - len(keep)} labels far above the minimum")
        arrays = select_rows(arrays, keep)
    its = arrays[keys.ITERATION]
    tests = {p.rsplit("/", 1)[-1]: labelled_arrays(p) for p in args.test}
    iterations = sorted(set(int(i) for i in its) | {int(its.max()) + 1})[1:]
    if args.final_only:
        iterations = iterations[-1:]
    print(f"{len(its)} labels, iterations {iterations[0]}..{iterations[-1]}; tests {list(tests)}")
    final: dict[str, list[list[float]]] = {}  # variant -> per seed [E, F] of each test set
    for seed in args.seed:
        for name, kind, options in variants:
            model = _replay(
                arrays, tests, iterations, base_config, kind, options, seed=seed, name=name,
                every=args.every, final_only=args.final_only,
            )  # fmt: skip
            final.setdefault(name, []).append(
                [v for t in tests.values() for v in np.array(_errors(model, t))[[0, 2]]]
            )
    if len(args.seed) > 1:
        print(f"\nmean ± std over seeds {args.seed} (E meV/atom, F eV/Å) on {list(tests)}")
        for name, rows in final.items():
            m, s_ = np.mean(rows, axis=0), np.std(rows, axis=0, ddof=1)
            print(
                f"{name:40s} " + "  ".join(f"{a:.4g} ± {b:.2g}" for a, b in zip(m, s_, strict=True))
            )
    names = [v[0] for v in variants]
    warm = next((n for n in names if n.startswith("warm")), None)
    scratch = next((n for n in names if n.startswith("scratch")), None)
    if warm and scratch:
        ratio = np.mean(final[warm], axis=0)[-1] / np.mean(final[scratch], axis=0)[-1]
        print(f"final force RMSE warm/scratch: {ratio:.3f}")


def _replay(arrays, tests, iterations, base_config, kind, options, *, seed, name, every,
            final_only):  # fmt: skip
    """Train ``kind`` iteration by iteration (or once on every label); print its curve."""
    import dataclasses

    from ubmd import keys
    from ubmd.models.data import select
    from ubmd.models.train import train_model

    its = arrays[keys.ITERATION]
    model, cpu = None, 0.0
    for it in iterations:
        data = select(arrays, np.flatnonzero(its < it))
        config = dataclasses.replace(base_config, seed=seed + (0 if final_only else it))
        if (kind == "warm" and model is not None) or kind == "scratch":
            config = dataclasses.replace(config, **options)
        t0 = time.process_time()
        model, history = train_model(config, data, init_model=model if kind == "warm" else None)
        cpu += time.process_time() - t0
        if (it - iterations[0]) % every and it != iterations[-1]:
            continue
        cells = []
        for tname, tarr in tests.items():
            e_rmse, e_mae, f_rmse = _errors(model, tarr)
            cells.append(f"{tname}: E {e_rmse:6.2f} (MAE {e_mae:6.2f}) meV/at F {f_rmse:.4f}")
        print(
            f"{name:32s} seed {seed} it {it:3d} n {len(data[keys.N_ATOMS]):4d} "
            f"ep {len(history):4d} " + " | ".join(cells),
            flush=True,
        )
    print(f"{name:32s} seed {seed} CPU {cpu:.0f} s", flush=True)
    return model


if __name__ == "__main__":
    main()
