"""Small differentiable models for the MD tests: a torch Lennard-Jones with toy
uncertainties, and EMT (through ASE) made differentiable with a toy uncertainty."""

from __future__ import annotations

import torch
from ase.calculators.emt import EMT

from ubmd import keys
from ubmd.md.forcefield import strained
from ubmd.md.state import MDState, segment_sum


def _pairs(state: MDState) -> tuple[torch.Tensor, torch.Tensor]:
    ii, jj = [], []
    start = 0
    for n in state.n_atoms.tolist():
        i, j = torch.triu_indices(n, n, offset=1)
        ii.append(i + start)
        jj.append(j + start)
        start += n
    return torch.cat(ii).to(state.device), torch.cat(jj).to(state.device)


def pair_vectors(positions, strain, state):
    """Minimum-image pair vectors (P, 3) of all pairs inside each replica, strained."""
    pos, cell = strained(positions, strain, state)
    i, j = _pairs(state)
    b = state.batch[i]
    d = pos[j] - pos[i]
    with torch.no_grad():  # image shift: piecewise constant, taken from the unstrained cell
        periodic = state.pbc[b]
        safe = torch.where(periodic.all(-1)[:, None, None], state.cell[b], torch.eye(3).to(d))
        frac = torch.linalg.solve(safe.transpose(1, 2), d.detach().unsqueeze(-1)).squeeze(-1)
        shift = torch.where(periodic, torch.round(frac), torch.zeros_like(frac))
    d = d - torch.bmm(shift[:, None].to(d), cell[b]).squeeze(1)
    return d, i, j, b


def lj_energy(positions, strain, state, *, epsilon=0.0104, sigma=3.4, cutoff=8.0):
    """Shifted-force-free LJ with a smooth cosine switch to zero at ``cutoff``; (R,) eV."""
    d, i, j, b = pair_vectors(positions, strain, state)
    r = d.norm(dim=-1)
    sr6 = (sigma / r) ** 6
    e = 4 * epsilon * (sr6 * sr6 - sr6)
    x = (r / cutoff).clamp(max=1.0)
    switch = 0.5 * (1 + torch.cos(torch.pi * x))
    return segment_sum(e * switch, b, state.n_replicas), (d, i, j, b)


def toy_uncertainty(pairs, state, *, width=3.0):
    """A smooth stand-in uncertainty: per-atom sum of Gaussians of pair distances."""
    d, i, j, _ = pairs
    g = torch.exp(-((d.norm(dim=-1) / width) ** 2))
    per_atom = torch.zeros(state.positions.shape[0], dtype=d.dtype, device=d.device)
    per_atom = per_atom.index_add(0, i, g).index_add(0, j, g)
    return per_atom, segment_sum(per_atom, state.batch, state.n_replicas)


class LJModel:
    """Differentiable LJ model with a toy uncertainty (and a fake calibration factor)."""

    differentiable = True

    def __init__(self, *, calibrated: bool = False, cal_factor: float = 2.0, **lj):
        self.has_calibration = calibrated
        self.cal = cal_factor
        self.lj = lj

    def outputs(self, positions, strain, state):
        e, pairs = lj_energy(positions, strain, state, **self.lj)
        ua, u = toy_uncertainty(pairs, state)
        out = {
            keys.ENERGY: e,
            keys.UNCERTAINTY: u,
            keys.ATOMIC_UNCERTAINTY: ua,
            keys.FEATURES: torch.stack([u, e], dim=-1),
        }
        if self.has_calibration:
            out[keys.CALIBRATED_UNCERTAINTY] = self.cal * u / state.n_atoms
            out[keys.CALIBRATED_ATOMIC_UNCERTAINTY] = self.cal * ua
        return out


class _ASEEnergy(torch.autograd.Function):
    """E(positions, strain) from an ASE calculator; backward from its forces and stress."""

    @staticmethod
    def forward(ctx, positions, strain, state, calc):
        from ubmd.md.forcefield import ASEForceField

        out = ASEForceField(calc).compute(state, stress=True)
        vol = state.volume[:, None, None]
        ctx.save_for_backward(out[keys.FORCES], out[keys.STRESS] * vol, state.batch)
        return out[keys.ENERGY]

    @staticmethod
    def backward(ctx, grad_e):
        forces, dedeps, batch = ctx.saved_tensors
        return -forces * grad_e[batch][:, None], dedeps * grad_e[:, None, None], None, None


class EMTVolumeModel:
    """EMT energy with a toy uncertainty growing with |log(V/V0)| (per atom)."""

    differentiable = True
    has_calibration = False

    def __init__(self, v0_per_atom: float):
        self.calc = EMT()
        self.v0 = v0_per_atom

    def outputs(self, positions, strain, state):
        e = _ASEEnergy.apply(positions, strain, state, self.calc)
        _, cell = strained(positions, strain, state)
        n = state.n_atoms.to(positions.dtype)
        logv = torch.log(torch.linalg.det(cell).abs() / (n * self.v0))
        # a weak position dependence too, so the force bias is not zero
        _, pos_u = toy_uncertainty(pair_vectors(positions, strain, state), state)
        return {keys.ENERGY: e, keys.UNCERTAINTY: n * logv**2 + 1e-3 * pos_u}
