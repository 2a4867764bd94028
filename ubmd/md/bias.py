"""The adaptive uncertainty bias (docs/science.md, "Uncertainty-biased MD").

Biased energy E_b = E - tau_eff u. Per atom the force is

    F_i = F_E,i + tau_eff w_{Z_i} du/dr_i          (species weights w; w = 0 switches atoms off)

and the stress (ASE sign, (1/V) dE/d(strain))

    sigma = sigma_E - tau_s,eff (1/V) du/d(strain).

Adaptive strengths, per replica, over a rolling window of the last W evaluations:

    tau_eff   = tau_rel   sqrt(sum_W ||F_E||^2)     / sqrt(sum_W ||w du/dr||^2)
    tau_s,eff = tau_s_rel sqrt(sum_W ||sigma_E||^2) / sqrt(sum_W ||(1/V) du/deps||^2)

and zero (unbiased) until the window is full.

Cost: separate F_E and du/dr need two reverse passes through the network (a batched
``is_grads_batched`` pass measured slower on CPU than two plain ones). They are needed
only to sample the window norms, every ``norm_every`` steps per replica; on the other
steps, when the species weights are uniform and no stress is wanted, one backward pass
through E - tau_eff u gives the biased force directly (the model force is then not
separately known: ``Evaluation.model_forces_exact`` is False and candidate files get NaN
forces for such frames). Non-uniform species weights or the stress bias take the two
passes every step.

``BiasConfig`` is the bias itself (:class:`ubmd.md.evaluation.Bias`): it keeps no state
of its own, the windows live in the :class:`~ubmd.md.state.MDState` with their replicas.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from ubmd import keys
from ubmd._lazy import lazy_getattr
from ubmd.md.evaluation import BiasTerm, Gradients, symmetric_stress
from ubmd.md.state import MDState, segment_sum

_BIAS_KEYS = (keys.UNCERTAINTY, keys.ATOMIC_UNCERTAINTY)

# UncertaintyCVConfig lived here once; the old import path keeps working
__getattr__ = lazy_getattr(__name__, {"UncertaintyCVConfig": "ubmd.md.samplers"})


@dataclass(frozen=True)
class BiasConfig:
    """Strength and shape of the uncertainty bias; the bias itself (an
    :class:`ubmd.md.evaluation.Bias`, its windows kept in the state).

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

    takes_energy_grads = True  # (a class attribute, not a setting)

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
        object.__setattr__(self, "species_weights", normalise_weights(self.species_weights))

    def variable(self, outputs: dict[str, torch.Tensor], state: MDState) -> torch.Tensor:
        """u (R,): the total uncertainty, or the atom-based one summed per replica."""
        key = self.uncertainty_key
        if key not in outputs:
            raise ValueError(
                f"biased MD needs the model to return {key!r}; it returned {sorted(outputs)}"
            )
        u = outputs[key]
        if not u.requires_grad:
            raise ValueError(
                f"{key!r} is not differentiable w.r.t. positions here; for the atom-based "
                "ensemble uncertainty use UBMDModel(..., create_graph=True)"
            )
        if u.shape[0] != state.n_replicas:  # atom-based: summed per replica
            u = segment_sum(u, state.batch, state.n_replicas)
        return u

    def single_pass_strength(self, state: MDState, *, stress: bool) -> torch.Tensor | None:
        """tau from the windows as they are, on steps that sample no norms and want neither
        per-species weights nor the stress bias."""
        if stress or not self.uniform_weights or bool(_sampling(self, state).any()):
            return None
        full = _full(self, state)
        return _strength(state, self.tau_eV, self.tau_rel, state.win_f2, state.win_g2, full)

    def energy_term(self, xi: torch.Tensor, grads: Gradients, state: MDState) -> BiasTerm:
        """-tau u, tau from the windows with this step's samples in them (stored by
        :meth:`update`, not here)."""
        sample, full, b = _sampling(self, state), _full(self, state), state.batch
        weights = species_weight_per_atom(self, state.numbers, state.dtype)
        g_pos = weights[:, None] * grads.cv_positions
        win = {
            "win_f2": _pushed(state.win_f2, _norm2(grads.model_forces, state), sample),
            "win_g2": _pushed(state.win_g2, _norm2(g_pos, state), sample),
        }
        tau = _strength(state, self.tau_eV, self.tau_rel, win["win_f2"], win["win_g2"], full)
        tau_s, stress = torch.zeros(state.n_replicas, dtype=state.dtype, device=state.device), None
        if grads.cv_strain is not None:
            s_u = symmetric_stress(grads.cv_strain, state)
            win["win_s2"] = _pushed(state.win_s2, (grads.model_stress**2).sum((1, 2)), sample)
            win["win_gs2"] = _pushed(state.win_gs2, (s_u**2).sum((1, 2)), sample)
            tau_s = _strength(
                state, self.tau_stress_eV, self.tau_stress_rel, win["win_s2"], win["win_gs2"], full
            )
            stress = -(tau_s[:, None, None] * s_u)
        return _WindowedTerm(-(tau * xi), tau[b][:, None] * g_pos, stress, tau, tau_s, win)

    def update(self, xi: torch.Tensor, term: BiasTerm, state: MDState) -> None:
        """Store the windows with this step's samples."""
        for name, window in term.windows.items():
            setattr(state, name, window)


@dataclass
class _WindowedTerm(BiasTerm):
    windows: dict[str, torch.Tensor]  # MDState window fields, this step's samples pushed


def normalise_weights(weights: Mapping) -> dict[int, float]:
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


def species_weight_per_atom(bias: BiasConfig, numbers: torch.Tensor, dtype) -> torch.Tensor:
    table = torch.ones(119, dtype=dtype, device=numbers.device)
    for z, w in bias.species_weights.items():
        table[int(z)] = float(w)
    return table[numbers]


def _sampling(bias: BiasConfig, state: MDState) -> torch.Tensor:
    """(R,) bool: replicas whose windows take a sample this step."""
    return (state.step % bias.norm_every) == 0


def _full(bias: BiasConfig, state: MDState) -> torch.Tensor:
    """(R,) bool: replicas past their first window (biased from then on)."""
    return (state.step + 1) >= bias.window


def _norm2(per_atom: torch.Tensor, state: MDState) -> torch.Tensor:
    """(R,) squared norm of per-atom vectors (A, 3), per replica."""
    return segment_sum((per_atom**2).sum(-1), state.batch, state.n_replicas)


def _pushed(win: torch.Tensor, value: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The rolling buffer with ``value`` appended for the replicas in ``mask``."""
    rolled = torch.roll(win, -1, dims=1)
    rolled[:, -1] = value
    return torch.where(mask[:, None], rolled, win)


def _strength(state: MDState, fixed: float | None, rel: float, num, den, full) -> torch.Tensor:
    """A fixed strength, or ``rel`` sqrt(sum num) / sqrt(sum den) once the window is full."""
    if fixed is not None:
        return torch.full((state.n_replicas,), fixed, dtype=state.dtype, device=state.device)
    tau = rel * torch.sqrt(num.sum(1)) / torch.sqrt(den.sum(1)).clamp_min(1e-300)
    return torch.where(full & (den.sum(1) > 0), tau, torch.zeros_like(tau))
