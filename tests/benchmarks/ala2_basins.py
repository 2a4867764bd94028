"""Where an alanine-dipeptide model is wrong, by conformer basin.

For each campaign directory (or exported result folder) given: how many of its labels lie in
each basin of the Ramachandran plane, and its model's energy and force errors on a labelled
test set, split by the basin of each test frame. A frame belongs to the nearest (periodic
distance in phi/psi) of five conformer centres:

    C5 (-155, 160)   C7eq (-83, 73)   alphaR (-70, -40)   C7ax (70, -70)   alphaL (60, 40)

Usage:
    python tests/benchmarks/ala2_basins.py DIR [DIR ...] [--test data/ala2/ala2_xtb_300K.extxyz]

DIR holds ``store.h5`` and ``final/model.pt`` (a campaign) or ``model.pt`` (an export).
The last line is the mean over DIRs of the ratio (energy RMSE in C7eq) / (energy RMSE in C5).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

CENTRES = {
    "C5": (-155.0, 160.0),
    "C7eq": (-83.0, 73.0),
    "alphaR": (-70.0, -40.0),
    "C7ax": (70.0, -70.0),
    "alphaL": (60.0, 40.0),
}


def basins(phi_psi_deg: np.ndarray) -> np.ndarray:
    """(F,) names of the nearest conformer centre of each (phi, psi), periodic in 360 degrees."""
    centres = np.array(list(CENTRES.values()))
    d = np.abs(phi_psi_deg[:, None, :] - centres[None])
    d = np.minimum(d, 360.0 - d)
    return np.array(list(CENTRES))[np.argmin((d**2).sum(-1), axis=1)]


def _phi_psi(frames) -> np.ndarray:
    """(F, 2) for frames of one molecule: one call over the stacked positions."""
    from ubmd.campaign.ramachandran import phi_psi

    return phi_psi(np.stack([a.positions for a in frames]), frames[0].numbers)


def _model_of(directory: Path) -> Path:
    for path in (directory / "final" / "model.pt", directory / "model.pt"):
        if path.exists():
            return path
    raise SystemExit(f"{directory}: neither final/model.pt nor model.pt")


def _errors(model: Path, frames) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame energy error (meV/atom) and squared force error summed over atoms (eV/Å)²."""
    from ubmd.calculator import UBMDCalculator

    calc = UBMDCalculator.from_file(model, device="cpu")
    de, df2 = [], []
    for atoms in frames:
        ref_e, ref_f = atoms.get_potential_energy(), atoms.get_forces()
        copy = atoms.copy()
        copy.calc = calc
        de.append(1000 * (copy.get_potential_energy() - ref_e) / len(atoms))
        df2.append(((copy.get_forces() - ref_f) ** 2).sum())
    return np.array(de), np.array(df2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path)
    parser.add_argument("--test", type=Path, default=Path("data/ala2/ala2_xtb_300K.extxyz"))
    args = parser.parse_args()
    import torch
    from ase.io import read

    from ubmd.store import StructureStore

    torch.set_num_threads(1)
    test = read(args.test, ":")
    test_basin = basins(_phi_psi(test))
    n_atoms = len(test[0])
    names = list(CENTRES)
    print(f"test set {args.test}: " + ", ".join(f"{b} {np.sum(test_basin == b)}" for b in names))
    ratios = []
    for directory in args.dirs:
        with StructureStore.open(directory / "store.h5", mode="r") as store:
            labels = store.read_atoms()
        label_basin = basins(_phi_psi(labels))
        de, df2 = _errors(_model_of(directory), test)
        print(f"\n{directory}: {len(labels)} labels")
        print(
            f"  {'basin':8s} {'labels':>6s} {'test':>5s} {'E mean':>7s} {'E RMSE':>7s} {'F RMSE':>7s}"
        )
        rmse = {}
        for b in names:
            k = test_basin == b
            row = f"  {b:8s} {np.sum(label_basin == b):6d} {np.sum(k):5d}"
            if k.any():
                rmse[b] = float(np.sqrt(np.mean(de[k] ** 2)))
                f_rmse = np.sqrt(df2[k].sum() / (3 * n_atoms * k.sum()))
                row += f" {de[k].mean():7.2f} {rmse[b]:7.2f} {f_rmse:7.3f}"
            print(row)
        f_all = np.sqrt(df2.sum() / (3 * n_atoms * len(test)))
        print(f"  {'all':8s} {len(labels):6d} {len(test):5d} {de.mean():7.2f} "
              f"{np.sqrt(np.mean(de**2)):7.2f} {f_all:7.3f}")  # fmt: skip
        if "C7eq" in rmse and "C5" in rmse:
            ratios.append(rmse["C7eq"] / rmse["C5"])
    print("(E in meV/atom, mean = predicted - label; F in eV/Å)")
    if ratios:
        print(f"energy RMSE C7eq / C5, mean over {len(ratios)} model(s): {np.mean(ratios):.2f}")


if __name__ == "__main__":
    main()
