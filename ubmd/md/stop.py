"""Per-replica stop rules. A stopped replica ends; the others go on.

Checked after every force call, in this order (the first that fires is the reason):
``nan`` (non-finite positions, energy, forces or uncertainty), ``too_close`` (two atoms
closer than ``min_distance_A``), ``force`` (max |F_model| above ``max_force_eV_A``; on
single-pass biased steps the total force, see :mod:`ubmd.md.evaluation`),
``atomic_uncertainty`` / ``uncertainty`` (calibrated uncertainty above a threshold; the
model must carry a calibration), ``max_steps``.

The checks run after every step of every replica, so they stay cheap: the too-close rule
takes the pair distances the model's neighbour lists computed for that step's force call
(where the model has them, :meth:`ubmd.md.neighbours.VerletLists.min_distances`) instead of
all pairs again, and the reasons of all replicas come back to the host in one transfer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ubmd import keys
from ubmd.md.evaluation import Evaluation
from ubmd.md.state import MDState, segment_sum

REASONS = ("nan", "too_close", "force", "atomic_uncertainty", "uncertainty", "max_steps")
_FINITE_KEYS = (keys.UNCERTAINTY, keys.CALIBRATED_UNCERTAINTY)  # per-replica outputs checked


@dataclass(frozen=True)
class StopRules:
    """Thresholds; None switches a rule off.

    ``max_atomic_uncertainty``: calibrated atom-based uncertainty, eV/Å (paper: 1.5 for
    alanine dipeptide). ``max_uncertainty``: calibrated total uncertainty, eV/atom.
    """

    max_steps: int | None = None
    min_distance_A: float | None = 0.5
    max_force_eV_A: float | None = 50.0
    max_atomic_uncertainty: float | None = None
    max_uncertainty: float | None = None

    def __post_init__(self) -> None:
        for name in (
            "max_steps",
            "min_distance_A",
            "max_force_eV_A",
            "max_atomic_uncertainty",
            "max_uncertainty",
        ):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ValueError(f"stop rule {name} must be > 0 or None, got {v}")

    @property
    def needs_calibration(self) -> bool:
        return self.max_atomic_uncertainty is not None or self.max_uncertainty is not None

    def check_model(self, model) -> None:
        """Fail early when a calibrated threshold is asked for and the model has none."""
        if self.needs_calibration and not getattr(model, "has_calibration", False):
            raise ValueError(
                "a calibrated uncertainty threshold (max_atomic_uncertainty / max_uncertainty) "
                "needs a calibrated model; calibrate it first or drop the threshold"
            )


def _min_distances_nl(state: MDState, bound: float) -> torch.Tensor:
    """Large replicas: neighbour lists (vesin) with cutoff ``bound``; inf if none closer."""
    import numpy as np

    from ubmd.models.graph import neighbour_list

    pos = state.positions.detach().cpu().numpy()
    cell, pbc = state.cell.detach().cpu().numpy(), state.pbc.cpu().numpy()
    out = []
    for r in range(state.n_replicas):
        p = pos[state.atom_slice(r)]
        if not np.isfinite(p).all():
            out.append(float("nan"))
            continue
        (i, j), shifts = neighbour_list(p, cell[r], pbc[r], bound)
        d = np.linalg.norm(p[j] - p[i] + shifts @ cell[r], axis=1) if len(i) else np.array([np.inf])
        out.append(float(d.min()))
    return torch.tensor(out, dtype=state.dtype, device=state.device)


def min_distances(state: MDState, bound: float | None = None) -> torch.Tensor:
    """(R,) smallest interatomic distance per replica (minimum image where periodic; inf
    for one-atom replicas). Small replicas: padded (R, N, N) tensors; replicas of more
    than 128 atoms: neighbour lists with cutoff ``bound`` (exact below ``bound``)."""
    R, n_max = state.n_replicas, int(state.n_atoms.max())
    if n_max > 128 and bound is not None:
        return _min_distances_nl(state, bound)
    idx = torch.arange(state.positions.shape[0], device=state.device)
    starts = torch.cumsum(state.n_atoms, 0) - state.n_atoms
    local = idx - starts[state.batch]
    pad = torch.full((R, n_max, 3), float("nan"), dtype=state.dtype, device=state.device)
    pad[state.batch, local] = state.positions.detach()
    d = pad[:, None, :, :] - pad[:, :, None, :]  # (R, N, N, 3)
    periodic = state.pbc.all(-1)
    if bool(periodic.any()):
        cell = torch.where(
            periodic[:, None, None], state.cell, torch.eye(3, dtype=state.dtype).to(state.cell)
        )
        inv = torch.linalg.inv(cell)
        frac = torch.einsum("rijk,rkl->rijl", d, inv)
        frac = torch.where(
            state.pbc[:, None, None, :], frac - torch.round(frac), frac
        )  # minimum image by rounding: exact for distances below half the cell height
        d = torch.where(
            periodic[:, None, None, None], torch.einsum("rijk,rkl->rijl", frac, cell), d
        )
    dist = d.norm(dim=-1)
    eye = torch.eye(n_max, dtype=torch.bool, device=state.device)
    dist = torch.where(eye | dist.isnan(), torch.full_like(dist, float("inf")), dist)
    return dist.flatten(1).amin(1)


def _too_close_distances(state: MDState, bound: float, model) -> torch.Tensor:
    """min_distances(state, bound), from the model's neighbour lists of this very state when
    it keeps them (its last force call was for these positions), else computed here."""
    lists = getattr(model, "neighbours", None)
    known = lists.min_distances(state, bound) if hasattr(lists, "min_distances") else None
    return min_distances(state, bound) if known is None else known


def check_stops(
    state: MDState,
    ev: Evaluation,
    rules: StopRules,
    *,
    step_limit: int | None = None,
    model=None,
) -> list[str]:
    """Reason per replica ("" = keep going) after the evaluation ``ev`` of ``state``.

    ``model``: the model that made ``ev``; one with Verlet lists (:class:`UBMDModel
    <ubmd.md.adapter.UBMDModel>`) gives the too-close rule its pair distances.
    """
    R, b = state.n_replicas, state.batch
    masks: list[torch.Tensor] = []  # (R,) bool per rule, in the order of precedence
    names: list[str] = []

    def mark(mask: torch.Tensor, reason: str) -> None:
        masks.append(mask)
        names.append(reason)

    # (few, batch-wide tensor operations: they run after every step)
    finite_atom = torch.isfinite(torch.cat([state.positions, ev.forces], 1)).all(1)
    bad = segment_sum((~finite_atom).to(torch.long), b, R) > 0
    per_replica = [ev.energy, state.cell] + [ev.outputs[k] for k in _FINITE_KEYS if k in ev.outputs]
    per_replica = [t.flatten(1) if t.ndim > 1 else t[:, None] for t in per_replica]
    mark(bad | ~torch.isfinite(torch.cat(per_replica, 1)).all(1), "nan")
    if rules.min_distance_A is not None:
        d_min = _too_close_distances(state, rules.min_distance_A, model)
        mark(d_min < rules.min_distance_A, "too_close")
    if rules.max_force_eV_A is not None:
        fmax = torch.zeros(R, dtype=state.dtype, device=state.device)
        fnorm = ev.model_forces.norm(dim=-1).nan_to_num(float("inf"))
        fmax = fmax.scatter_reduce(0, b, fnorm, "amax")
        mark(fmax > rules.max_force_eV_A, "force")
    for key, limit in ((keys.CALIBRATED_ATOMIC_UNCERTAINTY, rules.max_atomic_uncertainty),
                       (keys.CALIBRATED_UNCERTAINTY, rules.max_uncertainty)):  # fmt: skip
        if limit is not None and key not in ev.outputs:
            raise ValueError(f"a stop threshold on {key!r} needs the model to return it "
                             f"(its calibration lacks that part?); it returned {sorted(ev.outputs)}")  # fmt: skip
    if rules.max_atomic_uncertainty is not None:
        ua = ev.outputs[keys.CALIBRATED_ATOMIC_UNCERTAINTY]
        umax = torch.zeros(R, dtype=ua.dtype, device=ua.device).scatter_reduce(0, b, ua, "amax")
        mark(umax > rules.max_atomic_uncertainty, "atomic_uncertainty")
    if rules.max_uncertainty is not None:
        mark(ev.outputs[keys.CALIBRATED_UNCERTAINTY] > rules.max_uncertainty, "uncertainty")
    limit = rules.max_steps if step_limit is None else step_limit
    if limit is not None:
        mark(state.step >= limit, "max_steps")
    fired = torch.stack(masks).T.tolist()  # one transfer to the host: (R, rules)
    return [names[row.index(True)] if True in row else "" for row in fired]
