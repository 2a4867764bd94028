"""Ensemble uncertainties from member predictions."""

from __future__ import annotations

import torch
from torch import Tensor


def ensemble_uncertainty(
    energies: Tensor, forces: Tensor | None, n_atoms: Tensor
) -> tuple[Tensor, Tensor | None]:
    """Total and atom-based ensemble uncertainties.

    energies (M, S) eV, forces (M, A, 3) eV/Å or None, n_atoms (S,).
    Returns u_total (S,) = std over members of E/N (eV/atom) and u_atom (A,) =
    sqrt(mean_xyz var_m F_i) (eV/Å), both with the unbiased (M − 1) variance.
    Differentiable when the member predictions are (forces made with create_graph=True).
    """
    if energies.ndim != 2 or energies.shape[0] < 2:
        raise ValueError(
            f"ensemble energies must be (M, S) with M >= 2 members, got {tuple(energies.shape)}"
        )
    per_atom = energies / n_atoms.to(energies.dtype)[None, :]
    u_total = _safe_sqrt(per_atom.var(dim=0))
    if forces is None:
        return u_total, None
    if forces.ndim != 3 or forces.shape[0] != energies.shape[0] or forces.shape[2] != 3:
        raise ValueError(
            f"ensemble forces must be (M={energies.shape[0]}, A, 3), got {tuple(forces.shape)}"
        )
    u_atom = _safe_sqrt(forces.var(dim=0).mean(dim=-1))
    return u_total, u_atom


def _safe_sqrt(x: Tensor) -> Tensor:
    # Members that agree exactly would give sqrt'(0) = inf; the clamp keeps gradients finite.
    return x.clamp_min(torch.finfo(x.dtype).tiny).sqrt()
