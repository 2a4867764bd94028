"""Two more samplers with the same candidate output as biased MD.

* **Uncertainty as a collective variable** (Tan, Dietschreit, Gómez-Bombarelli 2025):
  metadynamics-style Gaussian hills deposited on xi = the (calibrated, if available)
  uncertainty, V(xi) = sum_k h_k exp(-(xi - xi_k)^2 / (2 w^2)); the bias force is
  -V'(xi) dxi/dr (chain rule), the bias stress +V'(xi) (1/V) dxi/deps. Hills fill the
  low-uncertainty basin, pushing replicas towards higher uncertainty. Optional
  well-tempering (h_k = h exp(-V(xi_k) / (k_B dT))). Use with ``run_explorer``
  (``ExploreConfig(sampler="uncertainty_cv", uncertainty_cv=UncertaintyCVConfig(...))``).
* **Adversarial attacks** (Schwalbe-Koda, Tan, Gómez-Bombarelli, Nat. Commun. 12, 5104
  (2021)): maximise u(x+delta) exp(-E(x+delta)/kT) / Q over displacements delta with
  Adam, Q = mean over the training set of exp(-E_i/kT), energies relative to the lowest
  training energy to avoid overflow. We ascend the logarithm of that objective (same
  maximiser, no underflow): log u - (E - E_ref)/kT - log Q.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from ase import Atoms, units

from ubmd import keys
from ubmd.md.bias import Evaluation, UncertaintyCVConfig, _two_grads
from ubmd.md.explore import _DTYPES, frames_from
from ubmd.md.state import MDState, make_state, segment_sum, select_replicas
from ubmd.md.stop import StopRules, check_stops
from ubmd.md.writer import CandidateWriter


class HillsBias:
    """Metadynamics bias on the uncertainty; hills are kept per replica id."""

    def __init__(self, config: UncertaintyCVConfig) -> None:
        self.config = config
        self.centers = torch.zeros(0, 0, dtype=torch.float64)  # (ids, H), NaN = no hill
        self.heights = torch.zeros(0, 0, dtype=torch.float64)

    def _rows(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        need = int(ids.max()) + 1
        if need > self.centers.shape[0]:
            grow = need - self.centers.shape[0]
            h = self.centers.shape[1]
            self.centers = torch.cat([self.centers, torch.full((grow, h), math.nan)])
            self.heights = torch.cat([self.heights, torch.zeros(grow, h)])
        cpu = ids.cpu()
        return self.centers[cpu].to(ids.device), self.heights[cpu].to(ids.device)

    def potential(self, xi: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """V(xi) and dV/dxi, (R,) each, for replicas ``ids``."""
        c, h = self._rows(ids)
        c, h = c.to(xi.dtype), h.to(xi.dtype)
        diff = (xi[:, None] - c.nan_to_num(0.0)) / self.config.width
        g = torch.where(c.isnan(), torch.zeros_like(diff), h * torch.exp(-0.5 * diff**2))
        return g.sum(1), (-g * diff / self.config.width).sum(1)

    def _deposit(self, xi: torch.Tensor, v: torch.Tensor, ids: torch.Tensor, mask) -> None:
        if not bool(mask.any()):
            return
        self.centers = torch.cat(
            [self.centers, torch.full((self.centers.shape[0], 1), math.nan)], 1
        )
        self.heights = torch.cat([self.heights, torch.zeros(self.heights.shape[0], 1)], 1)
        h = torch.full_like(v, self.config.height_eV)
        if self.config.well_tempered_dT_K is not None:
            h = h * torch.exp(-v / (units.kB * self.config.well_tempered_dT_K))
        rows = ids[mask].cpu()
        self.centers[rows, -1] = xi[mask].detach().cpu().double()
        self.heights[rows, -1] = h[mask].detach().cpu().double()

    def evaluate(self, state: MDState, model, *, stress: bool) -> Evaluation:
        if not getattr(model, "differentiable", False):
            raise ValueError("uncertainty-CV sampling needs a differentiable model")
        R = state.n_replicas
        pos = state.positions.detach().requires_grad_(True)
        strain = torch.zeros(R, 3, 3, dtype=state.dtype, device=state.device, requires_grad=stress)
        inputs = [pos, strain] if stress else [pos]
        with torch.enable_grad():
            out = model.outputs(pos, strain, state)
            key = self.config.cv_key
            if key not in out:
                raise ValueError(f"the CV {key!r} is not among the model outputs {sorted(out)}")
            xi = out[key]
            g_e, g_x = _two_grads(out[keys.ENERGY].sum(), xi.sum(), inputs)
        xi = xi.detach()
        v, dv = self.potential(xi, state.replica_id)
        f_model = -g_e[0]
        forces = f_model - dv[state.batch][:, None] * g_x[0]
        vol = state.volume.clamp_min(1e-12)[:, None, None]
        zero = torch.zeros(R, 3, 3, dtype=state.dtype, device=state.device)
        s_model = 0.5 * (g_e[1] + g_e[1].mT) / vol if stress else zero
        s_total = s_model + dv[:, None, None] * 0.5 * (g_x[1] + g_x[1].mT) / vol if stress else zero
        self._deposit(
            xi, v, state.replica_id, (state.step % self.config.pace == 0) & (state.step > 0)
        )
        detached = {k: t.detach() for k, t in out.items() if isinstance(t, torch.Tensor)}
        detached["metadynamics_bias_eV"] = v
        energy = out[keys.ENERGY].detach()
        return Evaluation(energy, forces, f_model, s_total, s_model, dv, dv * 0.0, detached)


@dataclass(frozen=True)
class AdversarialConfig:
    """Adversarial attack settings. ``training_energies_eV``: energies of the training
    structures (for Q); ``temperature_K``: the attack's kT; ``learning_rate_A``: Adam step
    (Å); ``init_displacement_A``: std of the random start of delta."""

    training_energies_eV: tuple[float, ...]
    temperature_K: float = 300.0
    n_iterations: int = 200
    learning_rate_A: float = 0.01
    init_displacement_A: float = 0.01
    record_every: int = 20
    uncertainty_key: str = keys.UNCERTAINTY
    stop: StopRules = field(default_factory=StopRules)
    explorer_id: int = 0
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float64"

    def __post_init__(self) -> None:
        if len(self.training_energies_eV) == 0:
            raise ValueError("adversarial attacks need the training energies (for Q), got none")
        if not self.temperature_K > 0:
            raise ValueError(f"temperature_K must be > 0, got {self.temperature_K}")
        for name in ("n_iterations", "learning_rate_A", "record_every"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype {self.dtype!r} not one of {list(_DTYPES)}")


def run_adversarial(
    config: AdversarialConfig,
    model,
    start_structures: Sequence[Atoms],
    *,
    out_path: str | Path,
) -> dict:
    """Attack every start structure (all in one batch); candidates to ``out_path``."""
    from ubmd.md.adapter import as_md_model

    model = as_md_model(model, device=config.device)
    if not getattr(model, "differentiable", False):
        raise ValueError("adversarial attacks need a differentiable model with uncertainty")
    config.stop.check_model(model)
    if len(start_structures) == 0:
        raise ValueError("no start structures given")
    dtype, device = _DTYPES[config.dtype], torch.device(config.device)
    state = make_state(list(start_structures), seed=config.seed, temperature_K=None,
                       window=1, device=device, dtype=dtype)  # fmt: skip
    state.velocities = torch.zeros_like(state.velocities)
    kT = units.kB * config.temperature_K
    e_train = torch.tensor(config.training_energies_eV, dtype=torch.float64)
    e_ref = float(e_train.min())
    log_q = float(torch.logsumexp(-(e_train - e_ref) / kT, 0) - math.log(len(e_train)))
    x0 = state.positions.clone()
    delta = torch.cat([
        config.init_displacement_A
        * torch.randn(int(n), 3, generator=g, dtype=dtype, device=device)
        for n, g in zip(state.n_atoms.tolist(), state.generators, strict=True)
    ])  # fmt: skip
    delta.requires_grad_(True)
    opt = torch.optim.Adam([delta], lr=config.learning_rate_A)
    reasons_all: dict[int, str] = {}
    n_frames, t0 = 0, time.perf_counter()
    live = torch.arange(state.n_replicas, device=device)
    with CandidateWriter(out_path) as writer:
        for it in range(1, config.n_iterations + 1):
            state.positions = (x0 + delta).detach()
            pos = state.positions.clone().requires_grad_(True)
            strain = torch.zeros(state.n_replicas, 3, 3, dtype=dtype, device=device)
            out = model.outputs(pos, strain, state)
            u = out[config.uncertainty_key]
            if u.shape[0] != state.n_replicas:
                u = segment_sum(u, state.batch, state.n_replicas)
            log_u = torch.log(u.clamp_min(1e-300))
            g_e, g_u = _two_grads(out[keys.ENERGY].sum(), log_u.sum(), [pos])
            objective = log_u - (out[keys.ENERGY] - e_ref) / kT - log_q
            opt.zero_grad()
            # ascend log(u exp(-E/kT)/Q): d/d delta = d log u/dr - (1/kT) dE/dr
            grad = -(g_u[0] - g_e[0] / kT)
            grad[~torch.isin(state.batch, live)] = 0.0  # stopped replicas stay put
            delta.grad = grad.detach()
            opt.step()
            state.step = (
                state.step + torch.isin(torch.arange(state.n_replicas, device=device), live).long()
            )
            zeros = torch.zeros(state.n_replicas, dtype=dtype, device=device)
            no_stress = torch.zeros(state.n_replicas, 3, 3, dtype=dtype, device=device)
            detached = {k: t.detach() for k, t in out.items() if isinstance(t, torch.Tensor)}
            detached["adversarial_objective"] = objective.detach()
            f = -g_e[0].detach()
            ev = Evaluation(out[keys.ENERGY].detach(), f, f, no_stress, no_stress, zeros, zeros,
                            detached)  # fmt: skip
            reasons = check_stops(state, ev, config.stop, step_limit=config.n_iterations)
            rows = [r for r in live.tolist() if reasons[r] or it % config.record_every == 0]
            if rows:
                writer.append(frames_from(state, ev, rows, [reasons[r] for r in rows],
                                          explorer=config.explorer_id, sampler="adversarial",
                                          stress=False))  # fmt: skip
                n_frames += len(rows)
            for r in live.tolist():
                if reasons[r]:
                    reasons_all[int(state.replica_id[r])] = reasons[r]
            live = torch.tensor(
                [r for r in live.tolist() if not reasons[r]], dtype=torch.long, device=device
            )
            if len(live) == 0:
                break
    final = select_replicas(state, list(range(state.n_replicas)))
    return {
        "n_frames": n_frames,
        "stop_reasons": reasons_all,
        "final_positions": final.positions.detach().cpu().numpy(),
        "wall_time_s": time.perf_counter() - t0,
    }
