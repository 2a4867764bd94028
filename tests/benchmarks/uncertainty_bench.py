"""Benchmark: cost of the posterior uncertainty and its gradients relative to energy+forces (CPU).

Built-in PaiNN (default size) on alanine dipeptide (22 atoms) and a 256-atom periodic cell
(+stress), float32 and float64. Per call: median CPU time of this process (``process_time``, so
other jobs on the machine disturb it less), the variants interleaved, one thread:

* ``E+F``      energy and forces (``ubmd.models.compute``),
* ``+u``       E, F and the total + atom-based posterior uncertainties (``predict``),
* ``+u,du/dr`` the same plus a separate ∂u/∂r (``uncertainty_gradients=True``: a second
               reverse pass over the same forward),
* ``bias``     E, u and one backward through E − τ·u (the biased force in one pass),

for last-layer and sketched-gradient (K=512) features. Ratios are relative to ``E+F``.

    OMP_NUM_THREADS=1 python tests/benchmarks/uncertainty_bench.py [--repeats 50]

Target: last-layer ``+u,du/dr`` <= 1.2x E+F at 22 atoms.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from ase.build import bulk
from ase.io import read
from bench_timing import median_cpu

from ubmd import keys
from ubmd.models import Graph, compute
from ubmd.models.builtin import PaiNN
from ubmd.uncertainty import UncertaintyConfig, evaluate, fit_uncertainty, predict

ALA2 = Path(__file__).resolve().parents[2] / "data" / "ala2" / "ala2_xtb_300K.extxyz"


def _bias_step(model, graph, est, stress: bool, tau: float = 0.1):
    g = graph.detach()
    wrt = [g.positions.requires_grad_(True)]
    if stress:
        wrt.append(g.strain.requires_grad_(True))
    res, _ = evaluate(model, g, est, wrt=wrt)
    return torch.autograd.grad((res[keys.ENERGY] - tau * res[keys.UNCERTAINTY]).sum(), wrt)


def _bench_case(model, est, atoms, dtype, repeats: int) -> dict[str, float]:
    graph = Graph.from_atoms(atoms, cutoff=model.cutoff, dtype=dtype)
    st = bool(atoms.pbc.all())
    fns = {
        "ef": lambda: compute(model, graph, stress=st),
        "u": lambda: predict(model, graph, est, stress=st),
        "du": lambda: predict(model, graph, est, stress=st, uncertainty_gradients=True),
        "bias": lambda: _bias_step(model, graph, est, st),
    }
    return median_cpu(fns, repeats)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    frames = read(ALA2, index=":40")
    species = sorted({int(z) for a in frames for z in a.numbers} | {29})
    cu = bulk("Cu", "fcc", a=3.6, cubic=True) * (4, 4, 4)  # 256 atoms
    cu.rattle(0.05, seed=0)
    systems = {"ala2 (22)": frames[-1], "Cu256 pbc": cu}
    summary = {}
    print(f"{'system':<11}{'dtype':<9}{'features':<19}{'E+F ms':>8}{'+u':>7}{'+u,du/dr':>9}"
          f"{'bias':>7}   ratios: +u  +u,du/dr  bias")  # fmt: skip
    for dtype in (torch.float32, torch.float64):
        torch.manual_seed(0)
        model = PaiNN(species).to(dtype)
        for feats in ("last_layer", "sketched_gradient"):
            cfg = UncertaintyConfig(method="posterior", features=feats, sketch_dim=512)
            est = fit_uncertainty(model, [*frames[:30], cu], cfg)
            for name, atoms in systems.items():
                t = _bench_case(model, est, atoms, dtype, args.repeats)
                r = {k: v / t["ef"] for k, v in t.items()}
                summary.setdefault((name, feats), []).append(r)
                print(f"{name:<11}{str(dtype)[6:]:<9}{feats:<19}{1e3 * t['ef']:8.2f}"
                      f"{1e3 * t['u']:7.2f}{1e3 * t['du']:9.2f}{1e3 * t['bias']:7.2f}"
                      f"{r['u']:16.2f}{r['du']:9.2f}{r['bias']:6.2f}")  # fmt: skip
    ala = summary[("ala2 (22)", "last_layer")]
    print(
        "SUMMARY ala2 last-layer posterior vs E+F (float32, float64): "
        f"u {ala[0]['u']:.2f}x, {ala[1]['u']:.2f}x; "
        f"biased force E-tau*u {ala[0]['bias']:.2f}x, {ala[1]['bias']:.2f}x (target <= 1.2); "
        f"separate du/dr {ala[0]['du']:.2f}x, {ala[1]['du']:.2f}x"
    )


if __name__ == "__main__":
    main()
