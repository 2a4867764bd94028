"""Integrators over a batched :class:`~ubmd.md.state.MDState`.

* :func:`nve_step`: velocity Verlet (same update as ``ase.md.VelocityVerlet``).
* :func:`langevin_step`: BAOAB splitting of Langevin dynamics (Leimkuhler & Matthews,
  Appl. Math. Res. Express 2013, 34; J. Chem. Phys. 138, 174102 (2013)); exact
  Ornstein-Uhlenbeck "O" step, so the configurational sampling error is O(dt^2).
* :func:`npt_step`: BAOAB for the particles plus stochastic cell rescaling (Bernetti &
  Bussi, J. Chem. Phys. 153, 114107 (2020)), a first-order stochastic equation for the
  log-deformation of the cell. Isotropic:
  d eps = -(beta/tau_p)(P0 - P - kT/V) dt + sqrt(2 kT beta / (V tau_p)) dW,
  with positions scaled by exp(d eps / 3) and velocities by its inverse. Anisotropic:
  the same equation per component of a symmetric deformation matrix mu (diagonal:
  beta/(3 tau_p) mobility; off-diagonal pairs: half that, as one coordinate), so the full
  cell moves without rotating; the pressure tensor is kinetic/V - stress. The cell
  step uses the stress of the last force call (half a step old), like the rescaling
  barostat in GROMACS; the stationary volume distribution does not depend on beta or
  tau_p, which only set how fast the cell relaxes.

Every random number of a replica comes from its own generator (batch independence).
Each step function advances all replicas once, calls the model once and returns the
:class:`~ubmd.md.evaluation.Evaluation` of the new positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from ase import units

from ubmd.md.evaluation import Bias, Evaluation, evaluate
from ubmd.md.state import MDState


@dataclass(frozen=True)
class BarostatConfig:
    """Stochastic cell rescaling settings.

    ``mode``: "anisotropic" (full cell, 6 strain components) or "isotropic" (volume only).
    ``compressibility_per_GPa``: beta_T guess (only the relaxation speed depends on it;
    ~0.01 for metals, ~0.5 for liquids). ``time_fs``: cell relaxation time tau_p.
    """

    mode: str = "anisotropic"
    time_fs: float = 100.0
    compressibility_per_GPa: float = 0.01

    def __post_init__(self) -> None:
        if self.mode not in ("anisotropic", "isotropic"):
            raise ValueError(f"barostat mode {self.mode!r}: use 'anisotropic' or 'isotropic'")
        if self.time_fs <= 0 or self.compressibility_per_GPa <= 0:
            raise ValueError(
                f"barostat time_fs ({self.time_fs}) and compressibility_per_GPa "
                f"({self.compressibility_per_GPa}) must be > 0"
            )


def _apply(state: MDState, ev: Evaluation) -> Evaluation:
    state.forces = ev.forces
    state.energy = ev.energy
    state.stress = ev.stress
    return ev


def initialize(
    state: MDState, model, *, stress: bool = False, bias: Bias | None = None
) -> Evaluation:
    """First force call: fills ``state.forces/energy/stress`` before the first step."""
    return _apply(state, evaluate(state, model, stress=stress, bias=bias))


def _per_replica(value, state: MDState, name: str) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=state.dtype, device=state.device)
    t = t.expand(state.n_replicas) if t.ndim == 0 else t
    if t.shape != (state.n_replicas,):
        raise ValueError(
            f"{name} needs a scalar or {state.n_replicas} values, got {tuple(t.shape)}"
        )
    return t


def _kick(state: MDState, dt: float) -> None:
    state.velocities = state.velocities + (0.5 * dt) * state.forces / state.masses[:, None]


def _drift(state: MDState, dt: float) -> None:
    state.positions = state.positions + dt * state.velocities


def _noise(state: MDState, shape_per_replica) -> torch.Tensor:
    """Gaussian noise, each replica's block from its own generator, concatenated."""
    blocks = [
        torch.randn(shape, generator=g, dtype=state.dtype, device=state.device)
        for shape, g in zip(shape_per_replica, state.generators, strict=True)
    ]
    return torch.cat(blocks)


def _thermostat(state: MDState, dt: float, kT: torch.Tensor, friction_per_fs: float) -> None:
    c1 = math.exp(-friction_per_fs * dt / units.fs)
    sigma = torch.sqrt((1.0 - c1 * c1) * kT[state.batch] / state.masses)[:, None]
    xi = _noise(state, [(int(n), 3) for n in state.n_atoms.tolist()])
    state.velocities = c1 * state.velocities + sigma * xi


def _check_temperature(temperature_K: torch.Tensor) -> None:
    if not bool((temperature_K > 0).all()):
        raise ValueError(f"temperature_K must be > 0, got {temperature_K.tolist()}")


def nve_step(
    state: MDState,
    model,
    *,
    timestep_fs: float,
    stress: bool = False,
    bias: Bias | None = None,
) -> Evaluation:
    """One velocity-Verlet step (microcanonical)."""
    dt = timestep_fs * units.fs
    _kick(state, dt)
    _drift(state, dt)
    state.step = state.step + 1
    ev = _apply(state, evaluate(state, model, stress=stress, bias=bias))
    _kick(state, dt)
    return ev


def langevin_step(
    state: MDState,
    model,
    *,
    timestep_fs: float,
    temperature_K,
    friction_per_fs: float = 0.01,
    stress: bool = False,
    bias: Bias | None = None,
) -> Evaluation:
    """One BAOAB Langevin step at ``temperature_K`` (scalar or (R,) per replica)."""
    if friction_per_fs <= 0:
        raise ValueError(f"friction_per_fs must be > 0, got {friction_per_fs}")
    temp = _per_replica(temperature_K, state, "temperature_K")
    _check_temperature(temp)
    dt = timestep_fs * units.fs
    _kick(state, dt)
    _drift(state, 0.5 * dt)
    _thermostat(state, dt, units.kB * temp, friction_per_fs)
    _drift(state, 0.5 * dt)
    state.step = state.step + 1
    ev = _apply(state, evaluate(state, model, stress=stress, bias=bias))
    _kick(state, dt)
    return ev


def check_periodic(state: MDState) -> None:
    """NPT needs a full 3D cell on every replica."""
    vol = state.volume
    bad = [
        int(state.replica_id[r])
        for r in range(state.n_replicas)
        if not bool(state.pbc[r].all()) or not float(vol[r]) > 1e-6
    ]
    if bad:
        raise ValueError(
            f"NPT needs periodic structures with a 3D cell; replicas {bad} have no cell "
            "or pbc is not True in all directions (use NVT for molecules and clusters)"
        )


def _cell_rescale(
    state: MDState,
    dt: float,
    kT: torch.Tensor,
    pressure: torch.Tensor,
    baro: BarostatConfig,
) -> None:
    beta = baro.compressibility_per_GPa / units.GPa  # Å^3/eV
    tau = baro.time_fs * units.fs
    vol = state.volume
    eye = torch.eye(3, dtype=state.dtype, device=state.device)
    p_int = state.pressure_tensor()
    xi = _noise(state, [(3, 3)] * state.n_replicas).view(-1, 3, 3)
    if baro.mode == "isotropic":
        p = torch.diagonal(p_int, dim1=1, dim2=2).mean(-1)
        deps = -(beta / tau) * (pressure - p - kT / vol) * dt
        deps = deps + torch.sqrt(2.0 * kT * beta * dt / (vol * tau)) * xi[:, 0, 0]
        mu = (deps / 3.0)[:, None, None] * eye
    else:
        target = (pressure - kT / vol)[:, None, None] * eye
        drift = -(beta / (3.0 * tau)) * (target - 0.5 * (p_int + p_int.transpose(1, 2))) * dt
        sig = torch.sqrt(2.0 * kT * beta * dt / (3.0 * vol * tau))[:, None, None]
        upper = torch.triu(xi, diagonal=1) / math.sqrt(2.0)
        noise = sig * (torch.diagonal(xi, dim1=1, dim2=2).diag_embed() + upper + upper.mT)
        mu = drift + noise
    grow, shrink = torch.linalg.matrix_exp(mu), torch.linalg.matrix_exp(-mu)
    b = state.batch
    state.positions = torch.bmm(state.positions[:, None], grow[b]).squeeze(1)
    state.velocities = torch.bmm(state.velocities[:, None], shrink[b]).squeeze(1)
    state.cell = torch.bmm(state.cell, grow)


def npt_step(
    state: MDState,
    model,
    *,
    timestep_fs: float,
    temperature_K,
    pressure_eV_A3,
    friction_per_fs: float = 0.01,
    barostat: BarostatConfig | None = None,
    bias: Bias | None = None,
) -> Evaluation:
    """One BAOAB step plus a stochastic cell-rescaling step (stress always computed)."""
    if friction_per_fs <= 0:
        raise ValueError(f"friction_per_fs must be > 0, got {friction_per_fs}")
    baro = barostat or BarostatConfig()
    check_periodic(state)
    temp = _per_replica(temperature_K, state, "temperature_K")
    _check_temperature(temp)
    press = _per_replica(pressure_eV_A3, state, "pressure_eV_A3")
    dt = timestep_fs * units.fs
    kT = units.kB * temp
    _kick(state, dt)
    _drift(state, 0.5 * dt)
    _thermostat(state, dt, kT, friction_per_fs)
    _drift(state, 0.5 * dt)
    _cell_rescale(state, dt, kT, press, baro)
    state.step = state.step + 1
    ev = _apply(state, evaluate(state, model, stress=True, bias=bias))
    _kick(state, dt)
    return ev
