"""Where a campaign's selected labels came from: bias strength, temperature, trajectory step and
energy, per store.

For each store given: how many labels the explorers found (``md_step`` >= 0; the initial data
has -1), the share of them picked while the bias was off (bias strength 0: plain MD, or the
first ``window`` steps of a trajectory before the adaptive strength is set), and the medians of
the explorer temperature, the trajectory step and the energy above the store's lowest ok label
(meV/atom; initial data beside it). The last line is the mean over stores of the unbiased share.

Usage:
    python tests/benchmarks/label_origins.py STORE.h5 [STORE.h5 ...]
"""

from __future__ import annotations

import argparse

import numpy as np


def origins(path: str) -> dict[str, float]:
    from ubmd.store.store import StructureStore

    with StructureStore.open(path, mode="r") as store:
        atoms = [a for a in store.read_atoms() if a.info["status"] == "ok"]
    energy = np.array([a.get_potential_energy() / len(a) for a in atoms])
    found = np.array([a.info["md_step"] >= 0 for a in atoms])
    info = {k: np.array([a.info[k] for a in atoms])[found] for k in ("bias_strength",
            "temperature_K", "md_step")}  # fmt: skip
    above = 1000.0 * (energy - energy.min())
    return {
        "ok": len(atoms),
        "found": int(found.sum()),
        "unbiased_share": float(np.mean(info["bias_strength"] == 0)) if found.any() else np.nan,
        "temperature_K": float(np.median(info["temperature_K"])) if found.any() else np.nan,
        "md_step": float(np.median(info["md_step"])) if found.any() else np.nan,
        "above_min_found": float(np.median(above[found])) if found.any() else np.nan,
        "above_min_initial": float(np.median(above[~found])) if (~found).any() else np.nan,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stores", nargs="+")
    args = parser.parse_args()
    shares = []
    print("store  ok  found  bias-off share  T median (K)  md_step median  "
          "E above min: found / initial (meV/atom)")  # fmt: skip
    for path in args.stores:
        o = origins(path)
        shares.append(o["unbiased_share"])
        print(f"{path}  {o['ok']}  {o['found']}  {o['unbiased_share']:.2f}  "
              f"{o['temperature_K']:.0f}  {o['md_step']:.0f}  "
              f"{o['above_min_found']:.1f} / {o['above_min_initial']:.1f}")  # fmt: skip
    print(
        f"share of explorer labels picked with the bias off, mean over {len(shares)} "
        f"store(s): {np.nanmean(shares):.3f}"
    )


if __name__ == "__main__":
    main()
