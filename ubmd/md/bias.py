"""Forces, stress and the uncertainty bias (docs/science.md, "Uncertainty-biased MD").

Biased energy E_b = E - tau_eff u. Per atom the force is

    F_i = F_E,i + tau_eff w_{Z_i} du/dr_i          (species weights w; w = 0 switches atoms off)

and the stress (ASE sign, (1/V) dE/d(strain))

    sigma = sigma_E - tau_s,eff (1/V) du/d(strain).

Adaptive strengths, per replica, over a rolling window of the last W evaluations:

    tau_eff   = tau_rel   sqrt(sum_W ||F_E||^2)     / sqrt(sum_W ||w du/dr||^2)
    tau_s,eff = tau_s_rel sqrt(sum_W ||sigma_E||^2) / sqrt(sum_W ||(1/V) du/deps||^2)

and zero (unbiased) until the window is full. F_E and du/dr come from one batched
backward pass (``is_grads_batched``: two cotangents through one graph), falling back to
two passes for models that vmap cannot handle.

Cost: separate F_E and du/dr need two reverse passes through the network (a batched
``is_grads_batched`` pass measured slower on CPU than two plain ones). They are needed
only to sample the window norms, every ``norm_every`` steps per replica; on the other
steps, when the species weights are uniform and no stress is wanted, one backward pass
through E - tau_eff u gives the biased force directly (the model force is then not
separately known: ``Evaluation.model_forces_exact`` is False and candidate files get NaN
forces for such frames). Non-uniform species weights or the stress bias take the two
passes every step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from ubmd import keys
from ubmd.md.state import MDState, segment_sum

ENERGY_GRADS = "_energy_grads"  # optional model output: precomputed dE/d(inputs) (ensembles)

_BIAS_KEYS = (keys.UNCERTAINTY, keys.ATOMIC_UNCERTAINTY)


@dataclass(frozen=True)
class BiasConfig:
    """Strength and shape of the uncertainty bias.

    ``tau_rel``/``tau_stress_rel`` set the adaptive strengths (0 disables that part);
    the window sums take a sample of the two norms every ``norm_every`` steps (on the
    other steps, with uniform species weights and no stress, the biased force costs a
    single backward pass through E - tau u; see the module docstring);
    ``tau_eV``/``tau_stress_eV`` instead fix tau (units of energy / uncertainty unit)
    from the first step on. ``uncertainty_key``: ``keys.UNCERTAINTY`` (total, per
    replica) or ``keys.ATOMIC_UNCERTAINTY`` (summed over the replica's atoms).
    """

    tau_rel: float = 0.25
    tau_stress_rel: float = 0.05
    window: int = 100
    species_weights: Mapping[int | str, float] = field(default_factory=dict)
    uncertainty_key: str = keys.UNCERTAINTY
    tau_eV: float | None = None
    tau_stress_eV: float | None = None
    norm_every: int = 10

    @property
    def uniform_weights(self) -> bool:
        return all(float(w) == 1.0 for w in self.species_weights.values())

    @property
    def window_samples(self) -> int:
        """Length of the rolling buffers: one sample every ``norm_every`` steps."""
        return -(-self.window // self.norm_every)

    def __post_init__(self) -> None:
        if self.norm_every < 1:
            raise ValueError(f"norm_every must be >= 1 step, got {self.norm_every}")
        for name in ("tau_rel", "tau_stress_rel"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.window < 1:
            raise ValueError(f"bias window must be >= 1 step, got {self.window}")
        if self.uncertainty_key not in _BIAS_KEYS:
            raise ValueError(
                f"uncertainty_key {self.uncertainty_key!r} not one of {list(_BIAS_KEYS)}"
            )
        object.__setattr__(self, "species_weights", _normalise_weights(self.species_weights))


def _normalise_weights(weights: Mapping) -> dict[int, float]:
    """Keys as atomic numbers (ints, digit strings or element symbols such as "H")."""
    from ase.data import atomic_numbers

    out = {}
    for key, w in weights.items():
        if isinstance(key, str) and not key.strip().isdigit():
            if key.strip() not in atomic_numbers:
                raise ValueError(f"species weight key {key!r} is not an element symbol")
            z = atomic_numbers[key.strip()]
        else:
            z = int(key)
        if not 0 < z < 119 or not float(w) >= 0:
            raise ValueError(f"species weight {key}: {w} needs 0 < Z < 119 and weight >= 0")
        out[z] = float(w)
    return out


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

    @property
    def biased_energy(self) -> torch.Tensor:
        u = self.outputs.get("_bias_u")
        return self.energy if u is None else self.energy - self.tau * u


def species_weight_per_atom(bias: BiasConfig, numbers: torch.Tensor, dtype) -> torch.Tensor:
    table = torch.ones(119, dtype=dtype, device=numbers.device)
    for z, w in bias.species_weights.items():
        table[int(z)] = float(w)
    return table[numbers]


def _two_grads(a: torch.Tensor, b: torch.Tensor, inputs: list[torch.Tensor]):
    """Gradients of scalars a and b w.r.t. inputs: two reverse passes over one graph."""
    kw = {"allow_unused": True, "materialize_grads": True}
    ga = torch.autograd.grad(a, inputs, retain_graph=True, **kw)
    gb = torch.autograd.grad(b, inputs, **kw)
    return list(ga), list(gb)


def _push(win: torch.Tensor, value: torch.Tensor, mask: torch.Tensor) -> None:
    """Append ``value`` to the rolling buffer of the replicas in ``mask``."""
    rolled = torch.roll(win, -1, dims=1)
    rolled[:, -1] = value
    win.copy_(torch.where(mask[:, None], rolled, win))


def _strength(rel: float, num: torch.Tensor, den: torch.Tensor, full: torch.Tensor):
    tau = rel * torch.sqrt(num.sum(1)) / torch.sqrt(den.sum(1)).clamp_min(1e-300)
    return torch.where(full & (den.sum(1) > 0), tau, torch.zeros_like(tau))


def _tau(bias: BiasConfig, state: MDState, full: torch.Tensor, zeros_r: torch.Tensor):
    if bias.tau_eV is not None:
        return torch.full_like(zeros_r, bias.tau_eV)
    return _strength(bias.tau_rel, state.win_f2, state.win_g2, full)


def evaluate(
    state: MDState,
    model,
    *,
    stress: bool,
    bias=None,
) -> Evaluation:
    """Evaluate ``model`` on ``state``, update the bias windows in place, return forces etc.

    ``model`` is a :class:`DifferentiableModel` or a black-box force field with
    ``compute(state, stress=...)`` (no bias possible then). ``bias``: a
    :class:`BiasConfig`, None, or an object with its own ``evaluate(state, model, stress=)``.
    """
    if bias is not None and hasattr(bias, "evaluate"):  # other biases (samplers.HillsBias)
        return bias.evaluate(state, model, stress=stress)
    R = state.n_replicas
    zeros_r = torch.zeros(R, dtype=state.dtype, device=state.device)
    if not getattr(model, "differentiable", False):
        if bias is not None:
            raise ValueError("the uncertainty bias needs a differentiable model with uncertainty")
        out = model.compute(state, stress=stress)
        f, s = out[keys.FORCES], out[keys.STRESS]
        return Evaluation(out[keys.ENERGY], f, f, s, s, zeros_r, zeros_r.clone(), {})

    pos = state.positions.detach().requires_grad_(True)
    strain = torch.zeros(R, 3, 3, dtype=state.dtype, device=state.device, requires_grad=stress)
    with torch.enable_grad():
        out = model.outputs(pos, strain, state)
        energy = out[keys.ENERGY]
        inputs = [pos, strain] if stress else [pos]
        u = None
        if bias is not None:
            if bias.uncertainty_key not in out:
                raise ValueError(
                    f"biased MD needs the model to return {bias.uncertainty_key!r}; "
                    f"it returned {sorted(out)}"
                )
            u = out[bias.uncertainty_key]
            if not u.requires_grad:
                raise ValueError(
                    f"{bias.uncertainty_key!r} is not differentiable w.r.t. positions here; for "
                    "the atom-based ensemble uncertainty use UBMDModel(..., create_graph=True)"
                )
            if u.shape[0] != R:  # atomic uncertainty: sum per replica
                u = segment_sum(u, state.batch, R)
        pre = out.get(ENERGY_GRADS)  # energy gradients the model already took (ensembles)
        kw = {"allow_unused": True, "materialize_grads": True}
        if u is None:
            g_e = (
                list(pre)
                if pre is not None
                else list(torch.autograd.grad(energy.sum(), inputs, **kw))
            )
        else:
            sample = (state.step % bias.norm_every) == 0
            full = (state.step + 1) >= bias.window
            fast = bias.uniform_weights and not stress and pre is None and not bool(sample.any())
            if fast:  # one backward pass through E - tau u (window unchanged this step)
                tau = _tau(bias, state, full, zeros_r)
                (g,) = torch.autograd.grad((energy - tau * u).sum(), inputs, **kw)
            elif pre is not None:
                g_e, g_u = list(pre), list(torch.autograd.grad(u.sum(), inputs, **kw))
            else:
                g_e, g_u = _two_grads(energy.sum(), u.sum(), inputs)
    detached = {k: v.detach() for k, v in out.items() if isinstance(v, torch.Tensor)}
    if u is not None and fast:
        detached["_bias_u"] = u.detach()
        forces = -g.detach()
        return Evaluation(energy.detach(), forces, forces, zeros_r.new_zeros(R, 3, 3),
                          zeros_r.new_zeros(R, 3, 3), tau, zeros_r, detached, False)  # fmt: skip
    g_e = [g.detach() for g in g_e]  # (ensembles may hand back graph-carrying gradients)
    g_u = [g.detach() for g in g_u] if u is not None else None
    f_model = -g_e[0]
    vol = state.volume.clamp_min(1e-12)[:, None, None]
    if stress:
        s_model = 0.5 * (g_e[1] + g_e[1].transpose(1, 2)) / vol
    else:
        s_model = torch.zeros(R, 3, 3, dtype=state.dtype, device=state.device)
    if u is None:
        return Evaluation(
            energy.detach(), f_model, f_model, s_model, s_model, zeros_r, zeros_r, detached
        )

    detached["_bias_u"] = u.detach()
    g_pos = species_weight_per_atom(bias, state.numbers, state.dtype)[:, None] * g_u[0]
    _push(state.win_f2, segment_sum((f_model**2).sum(-1), state.batch, R), sample)
    _push(state.win_g2, segment_sum((g_pos**2).sum(-1), state.batch, R), sample)
    tau = _tau(bias, state, full, zeros_r)
    forces = f_model + tau[state.batch][:, None] * g_pos
    tau_s, s_total = zeros_r, s_model
    if stress:
        s_u = 0.5 * (g_u[1] + g_u[1].transpose(1, 2)) / vol
        _push(state.win_s2, (s_model**2).sum((1, 2)), sample)
        _push(state.win_gs2, (s_u**2).sum((1, 2)), sample)
        if bias.tau_stress_eV is not None:
            tau_s = torch.full_like(zeros_r, bias.tau_stress_eV)
        else:
            tau_s = _strength(bias.tau_stress_rel, state.win_s2, state.win_gs2, full)
        s_total = s_model - tau_s[:, None, None] * s_u
    return Evaluation(energy.detach(), forces, f_model, s_total, s_model, tau, tau_s, detached)


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
