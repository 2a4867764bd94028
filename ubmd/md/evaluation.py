"""One force call of a batch: the model's energy, forces and stress, plus one bias term.

A bias is one more energy term B(xi) of a model output xi (R,), behind the small
:class:`Bias` protocol: the adaptive uncertainty bias B = -tau u
(:class:`ubmd.md.bias.BiasConfig`) and metadynamics hills B = V(xi)
(:class:`ubmd.md.samplers.HillsBias`). :func:`evaluate` takes one of four paths:

* black box (ASE force fields): energy, forces and stress as the field gives them; no bias;
* unbiased: one backward pass of E (or the model's own energy gradients, ensembles);
* single pass: where the bias says B = -tau xi with tau already known and nothing else
  wanted, one backward pass of E - tau xi gives the biased force (the model force is then
  not known on its own: ``Evaluation.model_forces_exact`` is False);
* two passes: gradients of E and xi; the bias makes its term from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from ubmd import keys
from ubmd.md.state import MDState

ENERGY_GRADS = "_energy_grads"  # optional model output: precomputed dE/d(inputs) (ensembles)

_GRAD = {"allow_unused": True, "materialize_grads": True}


@dataclass
class Evaluation:
    """One force evaluation of a batch. Per-replica tensors (R, ...) and per-atom (A, ...)."""

    energy: torch.Tensor  # (R,) model energy, eV
    forces: torch.Tensor  # (A, 3) total (biased) force, eV/Å
    model_forces: torch.Tensor  # (A, 3) model force F_E, eV/Å
    stress: torch.Tensor  # (R, 3, 3) total (biased) stress, eV/Å^3 (zeros if not computed)
    model_stress: torch.Tensor  # (R, 3, 3) model stress
    tau: torch.Tensor  # (R,) effective force-bias strength
    tau_stress: torch.Tensor  # (R,) effective stress-bias strength
    outputs: dict[str, torch.Tensor]  # detached model outputs (uncertainties, features, ...)
    model_forces_exact: bool = True  # False: single-pass biased step, model_forces = forces
    bias_energy: torch.Tensor | None = None  # (R,) the bias term B, eV (None: no bias)

    @property
    def biased_energy(self) -> torch.Tensor:
        return self.energy if self.bias_energy is None else self.energy + self.bias_energy


@dataclass(frozen=True)
class Gradients:
    """What a bias makes its term from (two-pass evaluations)."""

    model_forces: torch.Tensor  # (A, 3) -dE/dr
    model_stress: torch.Tensor  # (R, 3, 3) model stress (zeros without stress)
    cv_positions: torch.Tensor  # (A, 3) dxi/dr
    cv_strain: torch.Tensor | None  # (R, 3, 3) dxi/d(strain); None without stress


@dataclass
class BiasTerm:
    """A bias's share of one evaluation; the totals are the model's parts plus these."""

    energy: torch.Tensor  # (R,) B, eV
    forces: torch.Tensor  # (A, 3) -dB/dr
    stress: torch.Tensor | None  # (R, 3, 3) (1/V) dB/d(strain); None without stress
    strength: torch.Tensor  # (R,) recorded as the bias strength (tau; dV/dxi)
    stress_strength: torch.Tensor  # (R,) recorded as the stress-bias strength


class Bias(Protocol):
    """One more energy term B(xi), xi (R,) a differentiable model output."""

    @property
    def window_samples(self) -> int:
        """Length of the per-replica windows the bias keeps in the state (1: none)."""
        ...

    @property
    def takes_energy_grads(self) -> bool:
        """Whether the model's own energy gradients (``ENERGY_GRADS``) replace a backward
        pass of E."""
        ...

    def variable(self, outputs: dict[str, torch.Tensor], state: MDState) -> torch.Tensor:
        """xi (R,) from the model outputs, still differentiable."""
        ...

    def single_pass_strength(self, state: MDState, *, stress: bool) -> torch.Tensor | None:
        """tau (R,) when B = -tau xi this step and one backward pass of E - tau xi is all
        the step needs (nothing to update then); None asks for two passes."""
        ...

    def energy_term(self, xi: torch.Tensor, grads: Gradients, state: MDState) -> BiasTerm:
        """The bias's energy, forces, stress and strengths at xi; changes nothing."""
        ...

    def update(self, xi: torch.Tensor, term: BiasTerm, state: MDState) -> None:
        """Keep what this evaluation leaves for later ones (window samples, hills)."""
        ...


def two_grads(a: torch.Tensor, b: torch.Tensor, inputs: list[torch.Tensor]):
    """Gradients of scalars a and b w.r.t. inputs: two reverse passes over one graph."""
    ga = torch.autograd.grad(a, inputs, retain_graph=True, **_GRAD)
    gb = torch.autograd.grad(b, inputs, **_GRAD)
    return list(ga), list(gb)


def symmetric_stress(grad: torch.Tensor, state: MDState) -> torch.Tensor:
    """(1/V) dX/d(strain), symmetrised: (R, 3, 3)."""
    vol = state.volume.clamp_min(1e-12)[:, None, None]
    return 0.5 * (grad + grad.transpose(1, 2)) / vol


def evaluate(state: MDState, model, *, stress: bool, bias: Bias | None = None) -> Evaluation:
    """Evaluate ``model`` on ``state`` with an optional ``bias`` term (its update done).

    ``model`` is a :class:`~ubmd.md.forcefield.DifferentiableModel` or a black-box force
    field with ``compute(state, stress=...)`` (no bias possible then).
    """
    if not getattr(model, "differentiable", False):
        if bias is not None:
            raise ValueError("the bias needs a differentiable model with an uncertainty")
        return _black_box(state, model, stress)
    pos = state.positions.detach().requires_grad_(True)
    R = state.n_replicas
    strain = torch.zeros(R, 3, 3, dtype=state.dtype, device=state.device, requires_grad=stress)
    inputs = [pos, strain] if stress else [pos]
    with torch.enable_grad():
        out = model.outputs(pos, strain, state)
        if bias is None:
            return _unbiased(state, out, inputs, stress)
        xi = bias.variable(out, state)
        pre = out.get(ENERGY_GRADS) if bias.takes_energy_grads else None
        tau = None if pre is not None else bias.single_pass_strength(state, stress=stress)
        if tau is not None:
            return _single_pass(state, out, xi, tau, inputs)
        if pre is not None:
            g_e, g_xi = list(pre), list(torch.autograd.grad(xi.sum(), inputs, **_GRAD))
        else:
            g_e, g_xi = two_grads(out[keys.ENERGY].sum(), xi.sum(), inputs)
    return _two_pass(state, out, xi, g_e, g_xi, bias, stress)


def _detached(out: dict) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in out.items() if isinstance(v, torch.Tensor)}


def _model_parts(state: MDState, g_e: list, stress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Model forces and stress from dE/d(positions, strain) (zero stress when not asked for)."""
    g_e = [g.detach() for g in g_e]  # (ensembles may hand back graph-carrying gradients)
    if stress:
        return -g_e[0], symmetric_stress(g_e[1], state)
    return -g_e[0], torch.zeros(state.n_replicas, 3, 3, dtype=state.dtype, device=state.device)


def _black_box(state: MDState, model, stress: bool) -> Evaluation:
    out = model.compute(state, stress=stress)
    f, s = out[keys.FORCES], out[keys.STRESS]
    zeros_r = torch.zeros(state.n_replicas, dtype=state.dtype, device=state.device)
    return Evaluation(out[keys.ENERGY], f, f, s, s, zeros_r, zeros_r.clone(), {})


def _unbiased(state: MDState, out: dict, inputs: list, stress: bool) -> Evaluation:
    energy, pre = out[keys.ENERGY], out.get(ENERGY_GRADS)
    g_e = list(pre) if pre is not None else list(torch.autograd.grad(energy.sum(), inputs, **_GRAD))
    f_model, s_model = _model_parts(state, g_e, stress)
    zeros_r = torch.zeros(state.n_replicas, dtype=state.dtype, device=state.device)
    return Evaluation(
        energy.detach(), f_model, f_model, s_model, s_model, zeros_r, zeros_r, _detached(out)
    )


def _single_pass(state: MDState, out: dict, xi, tau, inputs: list[torch.Tensor]) -> Evaluation:
    """One backward pass of E - tau xi: the biased force, no separate model force."""
    energy = out[keys.ENERGY]
    (g,) = torch.autograd.grad((energy - tau * xi).sum(), inputs, **_GRAD)
    forces = -g.detach()
    no_stress = torch.zeros(state.n_replicas, 3, 3, dtype=state.dtype, device=state.device)
    return Evaluation(
        energy.detach(), forces, forces, no_stress, no_stress.clone(), tau, torch.zeros_like(tau),
        _detached(out), model_forces_exact=False, bias_energy=-(tau * xi.detach()),
    )  # fmt: skip


def _two_pass(state: MDState, out: dict, xi, g_e, g_xi, bias: Bias, stress: bool) -> Evaluation:
    """Model forces and stress from dE, the bias's term from dxi; then the bias updates."""
    f_model, s_model = _model_parts(state, g_e, stress)
    g_xi = [g.detach() for g in g_xi]
    grads = Gradients(f_model, s_model, g_xi[0], g_xi[1] if stress else None)
    term = bias.energy_term(xi.detach(), grads, state)
    bias.update(xi.detach(), term, state)
    s_total = s_model if term.stress is None else s_model + term.stress
    return Evaluation(
        out[keys.ENERGY].detach(), f_model + term.forces, f_model, s_total, s_model,
        term.strength, term.stress_strength, _detached(out), bias_energy=term.energy,
    )  # fmt: skip
