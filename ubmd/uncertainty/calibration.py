"""Conformal calibration of uncertainties (split conformal prediction).

Scores s_i = r_i / u_i on a held-out calibration split; c is the k-th smallest score with
k = ⌈(n + 1)(1 − α)⌉ (the inverse-ECDF quantile at level k/n), so that for exchangeable data
P(r ≤ c·u) ≥ 1 − α on fresh points. Residuals: r = |ΔE|/N (eV/atom) for the total uncertainty
and the per-atom force RMSE sqrt(mean_xyz ΔF_i²) (eV/Å) for the atom-based one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from ubmd import keys


@dataclass(frozen=True)
class Calibration:
    """Conformal scale factors: calibrated u = c·u (None where that variant was not calibrated)."""

    alpha: float
    c_total: float | None
    c_atom: float | None
    n_cal: int  # calibration structures
    n_cal_atoms: int = 0  # calibration atoms (atom-based scores)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, where: str = "calibration") -> Calibration:
        """Built strictly: unknown keys name the nearest valid one, wrong values are named."""
        from ubmd.strict import build

        return build(cls, data, where)

    def apply(self, results: dict[str, Tensor]) -> dict[str, Tensor]:
        """Add the calibrated uncertainty keys to a results dict (returns the same dict)."""
        if self.c_total is not None and keys.UNCERTAINTY in results:
            results[keys.CALIBRATED_UNCERTAINTY] = self.c_total * results[keys.UNCERTAINTY]
        if self.c_atom is not None and keys.ATOMIC_UNCERTAINTY in results:
            u = results[keys.ATOMIC_UNCERTAINTY]
            results[keys.CALIBRATED_ATOMIC_UNCERTAINTY] = self.c_atom * u
        return results


def conformal_quantile(scores: Tensor, alpha: float) -> float:
    """The k-th smallest score, k = ⌈(n + 1)(1 − α)⌉; ValueError if n is too small for alpha."""
    _check_alpha(alpha)
    s = torch.as_tensor(scores).detach().reshape(-1).double()
    n = s.numel()
    if n == 0:
        raise ValueError("no calibration scores; the calibration split is empty")
    if not torch.isfinite(s).all():
        raise ValueError("calibration scores contain NaN or inf (zero uncertainty or NaN labels?)")
    k = math.ceil((n + 1) * (1.0 - alpha) - 1e-12)
    if k > n:
        raise ValueError(
            f"{n} calibration points are too few for alpha={alpha}: "
            f"need at least {math.ceil(1.0 / alpha - 1.0 - 1e-12)}"
        )
    return float(torch.sort(s).values[k - 1])


def total_residual(pred_energy: Tensor, ref_energy: Tensor, n_atoms: Tensor) -> Tensor:
    """|ΔE|/N per structure (eV/atom)."""
    return (pred_energy - ref_energy).abs() / n_atoms.to(pred_energy.dtype)


def atom_residual(pred_forces: Tensor, ref_forces: Tensor) -> Tensor:
    """Per-atom force RMSE sqrt(mean_xyz ΔF_i²) (eV/Å)."""
    return (pred_forces - ref_forces).pow(2).mean(dim=-1).sqrt()


def calibrate(
    *,
    alpha: float = 0.05,
    u_total: Tensor | None = None,
    r_total: Tensor | None = None,
    u_atom: Tensor | None = None,
    r_atom: Tensor | None = None,
) -> Calibration:
    """Fit c_total from (u_total, r_total) and/or c_atom from (u_atom, r_atom)."""
    _check_alpha(alpha)
    if (u_total is None) != (r_total is None) or (u_atom is None) != (r_atom is None):
        raise ValueError("give each uncertainty together with its residual (u_total+r_total, ...)")
    if u_total is None and u_atom is None:
        raise ValueError("nothing to calibrate: give u_total/r_total and/or u_atom/r_atom")
    c_total = c_atom = None
    n_cal = n_atoms = 0
    if u_total is not None:
        c_total = conformal_quantile(_scores(u_total, r_total, "total"), alpha)
        n_cal = int(u_total.numel())
    if u_atom is not None:
        c_atom = conformal_quantile(_scores(u_atom, r_atom, "atom-based"), alpha)
        n_atoms = int(u_atom.numel())
    return Calibration(
        alpha=float(alpha), c_total=c_total, c_atom=c_atom, n_cal=n_cal, n_cal_atoms=n_atoms
    )


def empirical_coverage(u_calibrated: Tensor, residual: Tensor) -> float:
    """Fraction of points whose residual lies within the calibrated uncertainty."""
    u = torch.as_tensor(u_calibrated).detach().reshape(-1)
    r = torch.as_tensor(residual).detach().reshape(-1).to(u.dtype)
    if u.shape != r.shape or u.numel() == 0:
        raise ValueError(
            f"need equally long non-empty uncertainties and residuals, got {u.numel()} and {r.numel()}"
        )
    return float((r <= u).double().mean())


def _scores(u: Tensor, r: Tensor, what: str) -> Tensor:
    u = torch.as_tensor(u).detach().reshape(-1).double()
    r = torch.as_tensor(r).detach().reshape(-1).double()
    if u.shape != r.shape:
        raise ValueError(f"{what}: {u.numel()} uncertainties but {r.numel()} residuals")
    if not torch.isfinite(r).all():
        raise ValueError(f"{what}: residuals contain NaN or inf (NaN in the labels?)")
    if not (u > 0).all() or not torch.isfinite(u).all():
        raise ValueError(f"{what}: uncertainties must be finite and > 0 to form scores r/u")
    return r / u


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
