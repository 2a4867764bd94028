"""Benchmark: conformal calibration of every uncertainty method on a trained alanine-dipeptide model.

Data: the 300 GFN2-xTB-labelled frames of 300 K MD in data/ala2 (22 atoms), split at random into
train (150), calibration (50) and test (100). A PaiNN (and, for the ensemble, three members with
different seeds) is trained on the training split; each method is fitted on the training split,
calibrated on the calibration split at the given alpha, and its empirical coverage measured on
the test split, for the total (|ΔE|/N) and atom-based (per-atom force RMSE) uncertainties.
Also reported: Spearman rank correlation between raw atom-based uncertainty and force error.

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
from ubmd.uncertainty import UncertaintyConfig, fit_uncertainty
from ubmd.uncertainty.bundle import calibrate_model, coverage, uncertainties_and_residuals

ALA2 = Path(__file__).resolve().parents[2] / "data" / "ala2" / "ala2_xtb_300K.extxyz"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--members", type=int, default=3)
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
    print(f"{'method':<22}{'cov total':>10}{'cov atom':>10}{'spearman atom':>15}{'F RMSE':>9}")
    worst = 0.0
    for name, (m, cfg) in cases.items():
        est = fit_uncertainty(m, train, cfg)
        calib = calibrate_model(m, est, cal, alpha=args.alpha)
        cov = coverage(m, est, calib, test)
        raw = uncertainties_and_residuals(m, est, test)
        rho = spearmanr(raw["u_atom"].numpy(), raw["r_atom"].numpy()).statistic
        rmse = float(raw["r_atom"].pow(2).mean().sqrt())
        worst = max(worst, *(abs(cov[k] - (1 - args.alpha)) for k in cov if k.startswith("cov")))
        print(
            f"{name:<22}{cov['coverage_total']:10.3f}{cov['coverage_atom']:10.3f}"
            f"{rho:15.2f}{rmse:9.3f}"
        )
    print(
        f"SUMMARY coverage at alpha={args.alpha}: max |coverage - {1 - args.alpha:.2f}| = "
        f"{worst:.3f} ({worst / sd:.1f} sd) over 5 methods x (total, atom)"
    )


if __name__ == "__main__":
    main()
