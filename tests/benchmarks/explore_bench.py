"""Explorer benchmark on alanine dipeptide with the built-in PaiNN potential, CPU.

(a) 32 replicas batched in one state vs the same 32 run one after another through ASE's
    Langevin with ubmd.calculator.UBMDCalculator: atom-steps per second and the ratio.
    Both paths run eagerly and with ``compile=True`` (torch.compile'd model copy); the
    headline ratio is the batched engine's best against the calculator as shipped
    (eager), and the ratios at equal settings are printed beside it.
(b) biased vs unbiased step cost, last-layer posterior uncertainty (uniform species
    weights: single-pass steps between window samples; and w_H = 0: two passes).
(c) the same with a 4-member ensemble (total ensemble uncertainty).
(d) neighbour searches per replica-step under NPT (MIL-53(Al), anisotropic cell).

The model is float32, as `ubmd train` makes it (--dtype float64 to compare).
Run: OMP_NUM_THREADS=1 python tests/benchmarks/explore_bench.py [--threads 1] [--steps 40]
Untrained models (timing only); weights do not change the cost.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from ase import units
from ase.io import read
from ase.md.langevin import Langevin

from ubmd import keys
from ubmd.calculator import UBMDCalculator
from ubmd.md.adapter import UBMDModel
from ubmd.md.bias import BiasConfig
from ubmd.md.forcefield import TorchFunctionModel
from ubmd.md.integrators import BarostatConfig, initialize, langevin_step, npt_step
from ubmd.md.state import make_state, segment_sum
from ubmd.models import build_model
from ubmd.models.ensemble import Ensemble
from ubmd.uncertainty import UncertaintyConfig, fit_uncertainty

DATA = Path(__file__).resolve().parents[2] / "data" / "ala2" / "ala2_xtb_300K.extxyz"
SPECIES = [1, 6, 7, 8]


def batched_runner(md_model, frames, n_rep, bias=None, *, npt=None):
    """A function running k steps of n_rep replicas in one batch (after a warm-up), on the
    model's device. ``npt``: keyword arguments of ``npt_step`` (pressure_eV_A3, barostat,
    ...) to run NPT with the stress (and the stress bias, if ``bias`` has one) instead of
    Langevin NVT."""
    state = make_state([frames[k % len(frames)] for k in range(n_rep)], temperature_K=300,
                       seed=1, window=bias.window_samples if bias else 1,
                       dtype=getattr(md_model, "dtype", torch.float64),
                       device=getattr(md_model, "device", "cpu"))  # fmt: skip
    initialize(state, md_model, bias=bias, stress=npt is not None)

    def run(k: int) -> None:
        for _ in range(k):
            if npt is not None:
                npt_step(state, md_model, timestep_fs=0.5, temperature_K=300, bias=bias, **npt)
            else:
                langevin_step(state, md_model, timestep_fs=0.5, temperature_K=300, bias=bias)

    run(3)  # warm-up (and fills a short bias window)
    if bias is not None:
        assert float(state.win_g2.sum()) > 0
    return run


def min_times(runners: dict, steps: int, rounds: int, sync=None) -> dict:
    """Seconds per step of each runner: minimum over interleaved rounds (the machine may be
    shared, so interleaving and the minimum keep the ratios fair). ``sync``: called before
    each clock reading (``torch.cuda.synchronize`` on a GPU: kernels run asynchronously)."""
    best = dict.fromkeys(runners, float("inf"))
    for _ in range(rounds):
        for name, run in runners.items():
            if sync is not None:
                sync()
            t0 = time.perf_counter()
            run(steps)
            if sync is not None:
                sync()
            best[name] = min(best[name], (time.perf_counter() - t0) / steps)
    return best


def ase_rate(calc, frames, n_rep, steps):
    """Atom-steps per second of n_rep replicas run one after another through ASE."""
    warm = frames[0].copy()  # the first calls may compile: not timed
    warm.calc = calc
    Langevin(warm, timestep=0.5 * units.fs, temperature_K=300, friction=0.01 / units.fs).run(3)
    t0 = time.perf_counter()
    for k in range(n_rep):
        atoms = frames[k % len(frames)].copy()
        atoms.calc = calc
        dyn = Langevin(atoms, timestep=0.5 * units.fs, temperature_K=300, friction=0.01 / units.fs,
                       rng=np.random.default_rng(k))  # fmt: skip
        dyn.run(steps)
    dt = (time.perf_counter() - t0) / (n_rep * steps)
    return len(frames[0]) / dt


def main() -> None:
    from ubmd.md.allocator import retain_freed_memory

    retain_freed_memory()  # what `ubmd explore` and campaign explorers do, for both paths
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--ase-steps", type=int, default=10)
    ap.add_argument("--replicas", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--features", type=int, default=None, help="PaiNN width (default: built-in)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    frames = read(DATA, ":")
    train = frames[:64]
    starts = frames[100:132]
    opts = {} if args.features is None else {"n_features": args.features}
    model = build_model("painn", SPECIES, options=opts, dtype=args.dtype)
    est = fit_uncertainty(model, train, UncertaintyConfig(method="posterior"))
    R = args.replicas
    print(f"alanine dipeptide, 22 atoms, PaiNN {opts or '(default size)'} in {args.dtype}, "
          f"{R} replicas, torch threads={args.threads}")  # fmt: skip
    n_at = len(starts[0])

    # (a) batched vs one-by-one through ASE, eager and compiled
    t0 = time.perf_counter()
    runners = {"eager": batched_runner(UBMDModel(model), starts, R)}
    runners["compiled"] = batched_runner(UBMDModel(model, compile=True), starts, R)
    compile_s = time.perf_counter() - t0
    t_a = min_times(runners, args.steps, args.rounds)
    rate_b = {k: R * n_at / t for k, t in t_a.items()}
    rate_a = {
        "eager": max(ase_rate(UBMDCalculator(model), starts, R, args.ase_steps) for _ in range(2)),
        "compiled": max(
            ase_rate(UBMDCalculator(model, compile=True), starts, R, args.ase_steps)
            for _ in range(2)
        ),
    }
    best = max(rate_b, key=rate_b.get)
    ratio_a = rate_b[best] / rate_a["eager"]
    print(
        f"(a) atom-steps/s       batched ({R} replicas)   ASE Langevin + UBMDCalculator, one by one"
    )
    for k in ("eager", "compiled"):
        print(f"    {k:9s}          {rate_b[k]:9.0f} ({t_a[k] * 1e3:5.1f} ms/step)   {rate_a[k]:9.0f} "
              f"({n_at / rate_a[k] * 1e3:.2f} ms/step)   same-setting ratio "
              f"{rate_b[k] / rate_a[k]:.1f}x")  # fmt: skip
    print(f"    (set-up incl. compiling: {compile_s:.0f} s, paid once per explorer)")
    print(f"    ratio, batched {best} vs the calculator as shipped (eager): {ratio_a:.1f}x "
          f"(target >= 10x)")  # fmt: skip

    # engine overhead: the same step with a free-particle "model" (no network)
    free = TorchFunctionModel(
        lambda pos, strain, st: {keys.ENERGY: segment_sum(0.0 * pos[:, 0], st.batch, st.n_replicas)}
    )
    t_free = min_times({"free": batched_runner(free, starts, R)}, args.steps, args.rounds)["free"]
    print(f"    engine alone (integrator, noise, bookkeeping; no network): {t_free * 1e3:.2f} ms/step "
          f"= {100 * t_free / t_a[best]:.1f}% of the batched step")  # fmt: skip

    # (b) biased vs unbiased, last-layer posterior, in the batched engine's best setting
    md_model = UBMDModel(model, est, compile=best == "compiled")
    bias = BiasConfig(window=2, norm_every=10)
    bias_h0 = BiasConfig(window=2, norm_every=10, species_weights={1: 0.0})
    tb = min_times({
        "unbiased": batched_runner(md_model, starts, R),
        "biased": batched_runner(md_model, starts, R, bias),
        "biased_wH0": batched_runner(md_model, starts, R, bias_h0),
    }, args.steps, args.rounds)  # fmt: skip
    ratio_b, ratio_b0 = tb["biased"] / tb["unbiased"], tb["biased_wH0"] / tb["unbiased"]
    print(f"(b) posterior ({best}): unbiased {tb['unbiased'] * 1e3:.1f} ms/step, biased "
          f"{tb['biased'] * 1e3:.1f} ms/step -> {ratio_b:.2f}x (target <= 1.3x); with w_H=0 "
          f"(two passes every step) {tb['biased_wH0'] * 1e3:.1f} ms -> {ratio_b0:.2f}x")  # fmt: skip

    # (c) 4-member ensemble
    ens = Ensemble([build_model("painn", SPECIES, options=opts, dtype=args.dtype)
                    for _ in range(4)])  # fmt: skip
    est_e = fit_uncertainty(ens, train, UncertaintyConfig(method="ensemble"))
    comp = best == "compiled"
    ens_total = UBMDModel(ens, est_e, member_forces=False, compile=comp)
    ens_atom = UBMDModel(ens, est_e, member_forces=True, compile=comp)
    tc = min_times({
        "unbiased": batched_runner(ens_total, starts, R),
        "biased": batched_runner(ens_total, starts, R, bias),
        "unbiased_mf": batched_runner(ens_atom, starts, R),
        "biased_mf": batched_runner(ens_atom, starts, R, bias),
    }, args.steps, args.rounds)  # fmt: skip
    ratio_c, ratio_c2 = tc["biased"] / tc["unbiased"], tc["biased_mf"] / tc["unbiased_mf"]
    print(f"(c) 4-member ensemble ({best}), total u: unbiased {tc['unbiased'] * 1e3:.1f} ms, "
          f"biased {tc['biased'] * 1e3:.1f} ms -> {ratio_c:.2f}x; with member forces (atom-based "
          f"u): unbiased {tc['unbiased_mf'] * 1e3:.1f} ms, biased {tc['biased_mf'] * 1e3:.1f} ms "
          f"-> {ratio_c2:.2f}x")  # fmt: skip
    # (d) Verlet lists under NPT: searches per replica-step on MIL-53(Al), anisotropic cell
    mil = read(DATA.parents[1] / "mil53" / "mil53al_cp_76atoms.extxyz", index=-1)
    md_mil = UBMDModel(build_model("painn", sorted(set(mil.numbers)), dtype=args.dtype))
    st = make_state([mil, mil], temperature_K=300, seed=0, dtype=md_mil.dtype)
    initialize(st, md_mil, stress=True)
    baro = BarostatConfig(mode="anisotropic", time_fs=100.0, compressibility_per_GPa=0.05)
    for _ in range(200):
        npt_step(st, md_mil, timestep_fs=0.5, temperature_K=300, pressure_eV_A3=0.0,
                 friction_per_fs=0.01, barostat=baro)  # fmt: skip
    print(f"(d) NPT on MIL-53(Al), 2 x 76 atoms, 200 steps: "
          f"{md_mil.neighbours.n_searches / 400:.3f} neighbour searches per replica-step "
          f"(1 without the deformation-aware skin)")  # fmt: skip
    print(f"SUMMARY batched/ASE={ratio_a:.1f}x (same setting: eager "
          f"{rate_b['eager'] / rate_a['eager']:.1f}x, compiled "
          f"{rate_b['compiled'] / rate_a['compiled']:.1f}x) biased/unbiased posterior="
          f"{ratio_b:.2f}x (w_H=0 {ratio_b0:.2f}x) ensemble={ratio_c:.2f}x "
          f"(member forces {ratio_c2:.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
