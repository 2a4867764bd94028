"""Benchmark: conformal calibration of every uncertainty method on a trained alanine-dipeptide model.

Data: the 300 GFN2-xTB-labelled frames of 300 K MD in data/ala2 (22 atoms), split at random into
train (150), calibration (50) and test (100). A PaiNN (and, for the ensemble, three members with
different seeds) is trained on the training split; each method is fitted on the training split,
calibrated on the calibration split at the given alpha, and its empirical coverage measured on
the test split, for the total (|ΔE|/N) and atom-based (per-atom force RMSE) uncertainties.
Also reported: Spearman rank correlation between raw atom-based uncertainty and force error, and
the mean coverage over ``--resplits`` random re-splits of the 150 held-out frames into 50/100
(conformal coverage is guaranteed marginally over splits; one split scatters by ~1 sd).

    OMP_NUM_THREADS=1 python tests/benchmarks/calibration_bench.py [--alpha 0.05] [--epochs 60]

Expect coverage ≈ 1 − alpha within sampling error (sd ≈ sqrt(alpha(1−alpha)(1/50 + 1/100))).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from ase.io import read
from scipy.stats import spearmanr

from ubmd.models import Ensemble, train_model
from ubmd.models.train import TrainConfig
from ubmd.uncertainty import UncertaintyConfig, calibrate, empirical_coverage, fit_uncertainty
from ubmd.uncertainty.bundle import calibrate_model, coverage, uncertainties_and_residuals

ALA2 = Path(__file__).resolve().parents[2] / "data" / "ala2" / "ala2_xtb_300K.extxyz"


def _resplit_coverage(model, est, heldout, alpha: float, n_splits: int) -> tuple[float, float]:
    """Mean coverage over random 50/100 splits of the held-out frames (22 atoms each)."""
    raw = uncertainties_and_residuals(model, est, heldout)
    n = raw["u_total"].numel()
    u_atom, r_atom = raw["u_atom"].reshape(n, -1), raw["r_atom"].reshape(n, -1)
    rng = np.random.default_rng(1)
    tot, atom = [], []
    for _ in range(n_splits):
        perm = torch.as_tensor(rng.permutation(n))
        c, t = perm[:50], perm[50:]
        cal = calibrate(
            alpha=alpha,
            u_total=raw["u_total"][c],
            r_total=raw["r_total"][c],
            u_atom=u_atom[c].reshape(-1),
            r_atom=r_atom[c].reshape(-1),
        )
        tot.append(empirical_coverage(cal.c_total * raw["u_total"][t], raw["r_total"][t]))
        atom.append(empirical_coverage(cal.c_atom * u_atom[t].reshape(-1), r_atom[t].reshape(-1)))
    return float(np.mean(tot)), float(np.mean(atom))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--resplits", type=int, default=500)
    args = ap.parse_args()
    torch.set_num_threads(1)
    frames = read(ALA2, index=":")
    idx = np.random.default_rng(0).permutation(len(frames))
    train = [frames[i] for i in idx[:150]]
    cal = [frames[i] for i in idx[150:200]]
    test = [frames[i] for i in idx[200:]]
    options = {"cutoff": 5.0, "n_features": 32, "n_basis": 16, "readout_hidden": 32}
    t0 = time.perf_counter()
    members = []
    for m in range(args.members):
        config = TrainConfig(
            model_options=options, max_epochs=args.epochs, batch_size=8, lr=5e-3, seed=m
        )
        members.append(train_model(config, train)[0])
    print(f"trained {args.members} PaiNN members in {time.perf_counter() - t0:.0f} s")
    model = members[0]
    cases = {
        "posterior/last_layer": (model, UncertaintyConfig(method="posterior")),
        "posterior/sketched": (
            model,
            UncertaintyConfig(method="posterior", features="sketched_gradient"),
        ),
        "distance/last_layer": (model, UncertaintyConfig(method="distance")),
        "gmm (8 comp.)": (model, UncertaintyConfig(method="gmm", gmm_components=8)),
        f"ensemble (M={args.members})": (Ensemble(members), UncertaintyConfig(method="ensemble")),
    }
    sd = math.sqrt(args.alpha * (1 - args.alpha) * (1 / len(cal) + 1 / len(test)))
    print(f"alpha={args.alpha}: target coverage {1 - args.alpha:.3f} ± {sd:.3f} (1 sd)")
    print(
        f"{'method':<22}{'cov total':>10}{'cov atom':>10}{'spearman atom':>15}{'F RMSE':>9}"
        f"{'resplit mean total':>20}{'atom':>7}"
    )
    worst, resplit = 0.0, []
    for name, (m, cfg) in cases.items():
        est = fit_uncertainty(m, train, cfg)
        calib = calibrate_model(m, est, cal, alpha=args.alpha)
        cov = coverage(m, est, calib, test)
        raw = uncertainties_and_residuals(m, est, test)
        rho = spearmanr(raw["u_atom"].numpy(), raw["r_atom"].numpy()).statistic
        rmse = float(raw["r_atom"].pow(2).mean().sqrt())
        worst = max(worst, *(abs(cov[k] - (1 - args.alpha)) for k in cov if k.startswith("cov")))
        mean_tot, mean_atom = _resplit_coverage(m, est, cal + test, args.alpha, args.resplits)
        resplit.append((mean_tot, mean_atom))
        print(
            f"{name:<22}{cov['coverage_total']:10.3f}{cov['coverage_atom']:10.3f}"
            f"{rho:15.2f}{rmse:9.3f}{mean_tot:20.3f}{mean_atom:7.3f}"
        )
    print(
        f"SUMMARY coverage at alpha={args.alpha}: max |coverage - {1 - args.alpha:.2f}| = "
        f"{worst:.3f} ({worst / sd:.1f} sd) over 5 methods x (total, atom); mean over "
        f"{args.resplits} re-splits {min(min(r) for r in resplit):.3f}-"
        f"{max(max(r) for r in resplit):.3f}"
    )


if __name__ == "__main__":
    main()
