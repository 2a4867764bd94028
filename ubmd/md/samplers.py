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
from ubmd.md.evaluation import BiasTerm, Evaluation, Gradients, evaluate, two_grads
from ubmd.md.frames import frames_from
from ubmd.md.state import MDState, dtype_from_name, make_state, segment_sum, select_replicas
from ubmd.md.stop import StopRules, check_stops
from ubmd.md.writer import CandidateWriter


@dataclass(frozen=True)
class UncertaintyCVConfig:
    """Hills on the uncertainty. ``height_eV``: hill height; ``width``: Gaussian width in
    the CV's unit; ``pace``: steps between hills; ``well_tempered_dT_K``: None for plain
    metadynamics. ``cv_key``: which model output is the CV (calibrated total by default,
    the raw ``keys.UNCERTAINTY`` when the model has no calibration)."""

    height_eV: float = 0.05
    width: float = 0.01
    pace: int = 50
    well_tempered_dT_K: float | None = None
    cv_key: str = keys.CALIBRATED_UNCERTAINTY

    def __post_init__(self) -> None:
        if not (self.height_eV > 0 and self.width > 0 and self.pace >= 1):
            raise ValueError(
                f"hills need height_eV > 0, width > 0, pace >= 1; got {self.height_eV}, "
                f"{self.width}, {self.pace}"
            )
        if self.well_tempered_dT_K is not None and not self.well_tempered_dT_K > 0:
            raise ValueError(f"well_tempered_dT_K must be > 0, got {self.well_tempered_dT_K}")


class HillsBias:
    """Metadynamics bias on the uncertainty (an :class:`ubmd.md.evaluation.Bias`); hills
    are kept per replica id."""

    window_samples = 1  # no windows in the state
    # hills differentiate E themselves, also where the model hands back dE (ensembles);
    # taking those instead would save a pass but change trajectories in the last bits
    takes_energy_grads = False

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

    def variable(self, outputs: dict[str, torch.Tensor], state: MDState) -> torch.Tensor:
        key = self.config.cv_key
        if key not in outputs:
            raise ValueError(f"the CV {key!r} is not among the model outputs {sorted(outputs)}")
        return outputs[key]

    def single_pass_strength(self, state: MDState, *, stress: bool) -> None:
        return None  # the model force is wanted separately on every step

    def energy_term(self, xi: torch.Tensor, grads: Gradients, state: MDState) -> BiasTerm:
        """V(xi) from the hills so far; force -V'(xi) dxi/dr, stress V'(xi) (1/V) dxi/deps."""
        v, dv = self.potential(xi, state.replica_id)
        stress = None
        if grads.cv_strain is not None:
            g, vol = grads.cv_strain, state.volume.clamp_min(1e-12)[:, None, None]
            # (not dv * symmetric_stress(g): this order of operations keeps the last bits)
            stress = dv[:, None, None] * 0.5 * (g + g.mT) / vol
        forces = -(dv[state.batch][:, None] * grads.cv_positions)
        return BiasTerm(v, forces, stress, dv, dv * 0.0)

    def update(self, xi: torch.Tensor, term: BiasTerm, state: MDState) -> None:
        """A hill at xi every ``pace`` steps (well-tempered: lower where V is high)."""
        mask = (state.step % self.config.pace == 0) & (state.step > 0)
        self._deposit(xi, term.energy, state.replica_id, mask)

    def evaluate(self, state: MDState, model, *, stress: bool) -> Evaluation:
        """``evaluate(state, model, stress=stress, bias=self)`` (an older spelling)."""
        return evaluate(state, model, stress=stress, bias=self)


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
        dtype_from_name(self.dtype)


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
    dtype, device = dtype_from_name(config.dtype), torch.device(config.device)
    state = make_state(list(start_structures), seed=config.seed, temperature_K=None,
                       window=1, device=device, dtype=dtype)  # fmt: skip
    state.velocities = torch.zeros_like(state.velocities)
    target = _Target.of(config)
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
            ev = _attack_step(state, model, target, delta, opt, live)
            reasons = check_stops(state, ev, config.stop, step_limit=config.n_iterations,
                                  model=model)  # fmt: skip
            rows = [r for r in live.tolist() if reasons[r] or it % config.record_every == 0]
            if rows:
                writer.append(frames_from(state, ev, rows, [reasons[r] for r in rows],
                                          explorer=config.explorer_id, sampler="adversarial",
                                          stress=False))  # fmt: skip
                n_frames += len(rows)
            reasons_all.update({int(state.replica_id[r]): reasons[r] for r in live.tolist()
                                if reasons[r]})  # fmt: skip
            keep = [r for r in live.tolist() if not reasons[r]]
            live = torch.tensor(keep, dtype=torch.long, device=device)
            if len(live) == 0:
                break
    final = select_replicas(state, list(range(state.n_replicas)))
    return {
        "n_frames": n_frames,
        "stop_reasons": reasons_all,
        "final_positions": final.positions.detach().cpu().numpy(),
        "wall_time_s": time.perf_counter() - t0,
    }


@dataclass(frozen=True)
class _Target:
    """The attack's objective log u - (E - e_ref)/kT - log Q, its constants in eV."""

    kT: float
    e_ref: float
    log_q: float
    uncertainty_key: str

    @classmethod
    def of(cls, config: AdversarialConfig) -> _Target:
        kT = units.kB * config.temperature_K
        e_train = torch.tensor(config.training_energies_eV, dtype=torch.float64)
        e_ref = float(e_train.min())
        log_q = float(torch.logsumexp(-(e_train - e_ref) / kT, 0) - math.log(len(e_train)))
        return cls(kT, e_ref, log_q, config.uncertainty_key)


def _attack_step(
    state: MDState, model, target: _Target, delta: torch.Tensor, opt, live: torch.Tensor
) -> Evaluation:
    """One Adam ascent step of delta for the ``live`` replicas; returns the evaluation of
    the positions before the step (the replicas' steps count on)."""
    R, dtype, device = state.n_replicas, state.dtype, state.device
    pos = state.positions.clone().requires_grad_(True)
    out = model.outputs(pos, torch.zeros(R, 3, 3, dtype=dtype, device=device), state)
    u = out[target.uncertainty_key]
    if u.shape[0] != R:
        u = segment_sum(u, state.batch, R)
    log_u = torch.log(u.clamp_min(1e-300))
    g_e, g_u = two_grads(out[keys.ENERGY].sum(), log_u.sum(), [pos])
    objective = log_u - (out[keys.ENERGY] - target.e_ref) / target.kT - target.log_q
    opt.zero_grad()
    # ascend log(u exp(-E/kT)/Q): d/d delta = d log u/dr - (1/kT) dE/dr
    grad = -(g_u[0] - g_e[0] / target.kT)
    grad[~torch.isin(state.batch, live)] = 0.0  # stopped replicas stay put
    delta.grad = grad.detach()
    opt.step()
    state.step = state.step + torch.isin(torch.arange(R, device=device), live).long()
    zeros = torch.zeros(R, dtype=dtype, device=device)
    no_stress = torch.zeros(R, 3, 3, dtype=dtype, device=device)
    detached = {k: t.detach() for k, t in out.items() if isinstance(t, torch.Tensor)}
    detached["adversarial_objective"] = objective.detach()
    f = -g_e[0].detach()
    return Evaluation(out[keys.ENERGY].detach(), f, f, no_stress, no_stress, zeros, zeros, detached)
