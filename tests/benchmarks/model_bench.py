"""Benchmark: energy+forces cost of the built-in PaiNN vs a small MACE, and the added cost
of the posterior total uncertainty and its position gradient (CPU).

Systems: alanine dipeptide (22 atoms, non-periodic) and FCC Cu 4x4x4 (256 atoms, periodic).
Models (untrained weights; cost does not depend on them), float32 and float64:
PaiNN with its defaults; "MACE small": ``MacePotential`` sized like the MACE-OFF23 small
model (96x0e hidden features, ℓ_max=3 spherical harmonics, correlation order 3, 2 layers,
5 Å); "MACE tiny": the backend's own defaults (16x0e+16x1o, ℓ_max=2, correlation 2). Per call: median CPU time of
this process (``time.process_time``; other jobs on the machine disturb it less than wall
time) over ``--repeats`` calls after warm-up, variants interleaved; the graph (neighbour
list) is built once outside the timing (its cost is printed separately).

Uncertainty (ubmd.uncertainty, fitted on 20 ala2 frames): ``predict(...,
uncertainty_gradients=True)`` gives E, F, u_total, u_atom and ∂u/∂r; ratio to E+F alone.

    OMP_NUM_THREADS=1 python tests/benchmarks/model_bench.py [--threads 1] [--repeats 30]

Targets: PaiNN >= 10x faster than the small MACE at 22 atoms; last-layer posterior
uncertainty + gradient <= 1.2x energy+forces.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from ase.build import bulk
from ase.io import read
from bench_timing import median_cpu

from ubmd.models import compute
from ubmd.models.builtin import PaiNN
from ubmd.models.graph import Graph

ALA2 = Path(__file__).resolve().parents[2] / "data" / "ala2" / "ala2_xtb_300K.extxyz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--no-mace", action="store_true", help="skip the MACE backend")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, torch.set_num_threads({args.threads}), CPU")

    ala2 = read(ALA2, index=0)
    cu = bulk("Cu", "fcc", a=3.6, cubic=True) * (4, 4, 4)
    cu.rattle(0.05, seed=0)
    systems = {"ala2 (22 atoms)": ala2, "Cu fcc 4x4x4 (256 atoms, pbc)": cu}
    species = [1, 6, 7, 8, 29]

    torch.manual_seed(0)
    models = {"PaiNN": PaiNN(species)}
    if not args.no_mace:
        from ubmd.models.mace_backend import MacePotential

        models["MACE small"] = MacePotential(
            species, n_channels=96, max_L=0, max_ell=3, correlation=3
        )
        models["MACE tiny"] = MacePotential(species)

    results: dict[tuple[str, str, str], float] = {}
    print(f"\n{'system':32s} {'dtype':8s} {'model':14s} {'E+F ms/call':>12s} {'graph ms':>9s}")
    for sys_name, atoms in systems.items():
        stress = bool(atoms.pbc.all())
        for dtype in (torch.float32, torch.float64):
            fns, graphs = {}, {}
            for name, model in models.items():
                model.to(dtype)
                t0 = time.process_time()
                graphs[name] = Graph.from_atoms(atoms, cutoff=model.cutoff, dtype=dtype)
                t_graph = time.process_time() - t0
                fns[name] = lambda m=model, g=graphs[name], s=stress: compute(m, g, stress=s)
            # the 256-atom MACE calls are slow: fewer repeats there
            reps = args.repeats if len(atoms) < 100 else max(5, args.repeats // 3)
            med = median_cpu(fns, reps)
            for name, t in med.items():
                results[(sys_name, str(dtype)[6:], name)] = t
                print(
                    f"{sys_name:32s} {str(dtype)[6:]:8s} {name:14s} {t * 1e3:12.2f} {t_graph * 1e3:9.2f}"
                )

    speedups = {}
    if "MACE small" in models:
        print("\nPaiNN speed-up over MACE small / MACE tiny (E+F):")
        for sys_name in systems:
            for dt in ("float32", "float64"):
                painn = results[(sys_name, dt, "PaiNN")]
                s = results[(sys_name, dt, "MACE small")] / painn
                tiny = results[(sys_name, dt, "MACE tiny")] / painn
                speedups[(sys_name, dt)] = s
                print(f"  {sys_name:32s} {dt:8s} {s:6.1f}x / {tiny:4.1f}x")

    ratios = uncertainty_overhead(ala2, species, args.repeats)
    line = []
    if speedups:
        s22 = min(speedups[("ala2 (22 atoms)", dt)] for dt in ("float32", "float64"))
        line.append(f"PaiNN vs MACE small at 22 atoms >= {s22:.1f}x faster (target >= 10x)")
    if ratios:
        line.append(
            f"last-layer posterior u+du/dr = {ratios['last_layer']:.2f}x E+F (target <= 1.2x), "
            f"sketched-gradient = {ratios['sketched_gradient']:.2f}x"
        )
    print("\nSUMMARY: " + "; ".join(line))


def uncertainty_overhead(atoms, species, repeats: int) -> dict[str, float]:
    """Cost of E+F+u_total+u_atom+du/dr (posterior) relative to E+F, PaiNN float32, 22 atoms."""
    from ubmd.uncertainty import UncertaintyConfig, fit_uncertainty, predict

    torch.manual_seed(0)
    model = PaiNN(species).float()
    frames = read(ALA2, index=":20")
    graph = model.graph(atoms)
    ratios = {}
    print("\nposterior uncertainty overhead, PaiNN float32, ala2 (ms/call):")
    for features in ("last_layer", "sketched_gradient"):
        est = fit_uncertainty(
            model, frames, UncertaintyConfig(method="posterior", features=features)
        )
        fns = {
            "E+F": lambda: compute(model, graph),
            "E+F+u+du/dr": lambda e=est: predict(model, graph, e, uncertainty_gradients=True),
        }
        med = median_cpu(fns, repeats)
        ratios[features] = med["E+F+u+du/dr"] / med["E+F"]
        print(
            f"  {features:18s} E+F {med['E+F'] * 1e3:7.2f}   E+F+u+du/dr "
            f"{med['E+F+u+du/dr'] * 1e3:7.2f}   ratio {ratios[features]:.2f}x"
        )
    return ratios


if __name__ == "__main__":
    main()
