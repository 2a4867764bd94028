"""Candidate frames: the columns of :mod:`ubmd.md.writer` for replicas of a batch."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ubmd import keys
from ubmd.md.evaluation import Evaluation
from ubmd.md.state import MDState


def voigt(stress: torch.Tensor) -> torch.Tensor:
    """(R, 3, 3) -> (R, 6) ASE Voigt order xx, yy, zz, yz, xz, xy."""
    return stress[:, keys.VOIGT_ROWS, keys.VOIGT_COLS]


def frames_from(
    state: MDState,
    ev: Evaluation,
    rows: Sequence[int],
    reasons: Sequence[str],
    *,
    explorer: int,
    sampler: str,
    stress: bool,
) -> dict[str, np.ndarray]:
    """Candidate columns (see :mod:`ubmd.md.writer`) for replicas ``rows`` of the batch."""

    def np_(t: torch.Tensor) -> np.ndarray:
        return t.detach().cpu().numpy()

    rows_t = torch.tensor(list(rows), dtype=torch.long, device=state.device)
    atom_idx = torch.cat([torch.arange(state.atom_slice(r).start, state.atom_slice(r).stop)
                          for r in rows]).to(state.device)  # fmt: skip
    nan_r = torch.full((len(rows),), float("nan"), dtype=torch.float64)
    out = {
        keys.N_ATOMS: np_(state.n_atoms[rows_t]),
        keys.NUMBERS: np_(state.numbers[atom_idx]),
        keys.POSITIONS: np_(state.positions[atom_idx]),
        keys.FORCES: np_(ev.model_forces[atom_idx])
        if ev.model_forces_exact
        else np.full((len(atom_idx), 3), np.nan),
        keys.CELL: np_(state.cell[rows_t]),
        keys.PBC: np_(state.pbc[rows_t]),
        keys.ENERGY: np_(ev.energy[rows_t]),
        keys.STRESS: np_(voigt(ev.model_stress[rows_t])) if stress else None,
        keys.BIAS_STRENGTH: np_(ev.tau[rows_t]),
        keys.BIAS_STRESS_STRENGTH: np_(ev.tau_stress[rows_t]),
        keys.TEMPERATURE_K: np_(state.temperature()[rows_t]),
        keys.PRESSURE_EV_A3: np_(state.pressure()[rows_t]) if stress else np_(nan_r),
        keys.MD_STEP: np_(state.step[rows_t]),
        keys.REPLICA: np_(state.replica_id[rows_t]),
        keys.EXPLORER: np.full(len(rows), explorer, dtype=np.int64),
        keys.STOP_REASON: np.array(list(reasons), dtype=object),
        keys.SAMPLER: np.array([sampler] * len(rows), dtype=object),
    }
    for key in (keys.UNCERTAINTY, keys.CALIBRATED_UNCERTAINTY, keys.FEATURES):
        if key in ev.outputs and ev.outputs[key].shape[0] == state.n_replicas:
            out[key] = np_(ev.outputs[key][rows_t])
    for key in (keys.ATOMIC_UNCERTAINTY, keys.CALIBRATED_ATOMIC_UNCERTAINTY):
        if key in ev.outputs:
            out[key] = np_(ev.outputs[key][atom_idx])
    return {k: v for k, v in out.items() if v is not None}
