"""One explorer: R replicas of (biased) MD in one batch, candidates to HDF5.

``run_explorer`` keeps up to ``replicas`` slots busy; every start structure is run at
least once (slots beyond the number of structures restart from them in turn), and a
slot whose replica stops is refilled with the next start structure until none is left
(:class:`~ubmd.md.replicas.ReplicaPool`). Each replica writes a candidate frame every
``record_every`` steps and at its stop frame; a replica that went NaN writes its last
finite frame instead (:class:`~ubmd.md.replicas.Snapshot`). A start structure may come
with a :class:`~ubmd.md.continuation.Continuation` (a trajectory of an earlier run going
on: its replica runs ``n_steps`` more steps), and the replicas that reach their step limit
can hand theirs back (``keep_ends``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from ase import Atoms, units

from ubmd import keys
from ubmd.md.bias import BiasConfig, normalise_weights
from ubmd.md.continuation import Continuation, capture, resume
from ubmd.md.evaluation import Bias, Evaluation, evaluate
from ubmd.md.frames import frames_from
from ubmd.md.integrators import (
    BarostatConfig,
    check_periodic,
    initialize,
    langevin_step,
    npt_step,
    nve_step,
)
from ubmd.md.replicas import ReplicaPool, Snapshot
from ubmd.md.samplers import HillsBias, UncertaintyCVConfig
from ubmd.md.schedule import Constant, LinearRamp, as_schedule
from ubmd.md.state import MDState, concat_states, dtype_from_name, make_state, select_replicas
from ubmd.md.stop import StopRules, check_stops
from ubmd.md.writer import CandidateWriter

SAMPLERS = ("biased_md", "md", "uncertainty_cv")
ENSEMBLES = ("nvt", "npt", "nve")


@dataclass(frozen=True)
class ExploreConfig:
    """Settings of one explorer (units in the names; see docs/science.md for the defaults).

    ``sampler``: "biased_md" (uncertainty bias), "md" (no bias) or "uncertainty_cv"
    (metadynamics on the uncertainty, settings in ``uncertainty_cv``; see
    :mod:`ubmd.md.samplers`; adversarial attacks are not MD: ``run_adversarial``).
    """

    sampler: str = "biased_md"
    ensemble: str = "nvt"
    temperature_K: float | Constant | LinearRamp = 300.0
    pressure_GPa: float | Constant | LinearRamp = 0.0
    timestep_fs: float = 0.5
    friction_per_fs: float = 0.01
    n_steps: int = 10_000
    record_every: int = 200
    tau_rel: float = 0.25
    tau_stress_rel: float = 0.05
    window: int = 100
    species_weights: Mapping[int | str, float] = field(default_factory=dict)
    bias_key: str = keys.UNCERTAINTY
    stop: StopRules = field(default_factory=StopRules)
    barostat: BarostatConfig = field(default_factory=BarostatConfig)
    uncertainty_cv: UncertaintyCVConfig | None = None
    explorer_id: int = 0
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float64"

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler {self.sampler!r} not one of {SAMPLERS}")
        if self.ensemble not in ENSEMBLES:
            raise ValueError(f"ensemble {self.ensemble!r} not one of {ENSEMBLES}")
        as_schedule(self.temperature_K, name="temperature_K", positive=True)
        as_schedule(self.pressure_GPa, name="pressure_GPa")
        for name in ("timestep_fs", "friction_per_fs", "n_steps", "record_every", "window"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        dtype_from_name(self.dtype)
        normalise_weights(self.species_weights)  # bad keys/weights fail here, not mid-run

    def bias(self) -> Bias | None:
        """A fresh bias of the sampler (hills start empty), or None for plain MD."""
        if self.sampler == "md":
            return None
        if self.sampler == "uncertainty_cv":
            return HillsBias(self.uncertainty_cv or UncertaintyCVConfig())
        return BiasConfig(
            tau_rel=self.tau_rel,
            tau_stress_rel=self.tau_stress_rel,
            window=self.window,
            species_weights=dict(self.species_weights),
            uncertainty_key=self.bias_key,
        )


@dataclass
class _Clock:
    """Wall time and atom-steps, with the steady state apart from the first ``warmup``
    batch steps (start-up and compiling)."""

    warmup: int
    t0: float = field(default_factory=time.perf_counter)
    batch_steps: int = 0
    replica_steps: int = 0
    atom_steps: int = 0
    t_warm: float | None = None
    atom_steps_warm: int = 0
    replica_steps_warm: int = 0

    def tick(self, state: MDState) -> None:
        """Count the batch step about to run."""
        if self.batch_steps == self.warmup:
            self.t_warm, self.atom_steps_warm = time.perf_counter(), self.atom_steps
            self.replica_steps_warm = self.replica_steps
        self.batch_steps += 1
        self.replica_steps += state.n_replicas
        self.atom_steps += int(state.n_atoms.sum())

    def rates(self, t_end: float) -> tuple[dict, dict]:
        """The summary's whole-run and steady-state fields; ``t_end``: the last step's end."""
        wall = time.perf_counter() - self.t0
        whole = {"wall_time_s": wall, "atom_steps_per_s": self.atom_steps / max(wall, 1e-9)}
        steady = (
            None
            if self.t_warm is None
            else (self.atom_steps - self.atom_steps_warm) / max(t_end - self.t_warm, 1e-9)
        )
        n_steady = max(0, self.batch_steps - self.warmup)
        return whole, {
            "warmup_steps": min(self.warmup, self.batch_steps),
            "warmup_s": (t_end if self.t_warm is None else self.t_warm) - self.t0,
            "steady_steps": n_steady,
            "steady_atom_steps_per_s": steady,
            "steady_mean_replicas": (self.replica_steps - self.replica_steps_warm) / n_steady
            if n_steady
            else None,
        }


def _check_structures(structures: Sequence[Atoms]) -> None:
    if len(structures) == 0:
        raise ValueError("no start structures given")
    for k, atoms in enumerate(structures):
        if not isinstance(atoms, Atoms):
            raise TypeError(f"start structure {k} is a {type(atoms).__name__}, not ase.Atoms")


class _Explorer:
    """One run's settings and bookkeeping: starting replicas, stepping, writing frames."""

    def __init__(
        self, config: ExploreConfig, model, pool: ReplicaPool, *, keep_ends: bool = False
    ) -> None:
        config.stop.check_model(model)
        self.bias = config.bias()
        if self.bias is not None and not getattr(model, "differentiable", False):
            raise ValueError(
                f"sampler {config.sampler!r} needs a differentiable model with an uncertainty "
                "(a ubmd model file with its estimator); use sampler 'md' with ASE force fields"
            )
        self.t_sched = as_schedule(config.temperature_K, name="temperature_K", positive=True)
        self.p_sched = as_schedule(config.pressure_GPa, name="pressure_GPa")
        self.stress = config.ensemble == "npt"
        self.dtype, self.device = dtype_from_name(config.dtype), torch.device(config.device)
        model_dtype = getattr(model, "dtype", None)
        if model_dtype is not None and model_dtype != self.dtype:
            name = str(model_dtype).removeprefix("torch.")
            raise ValueError(f"the model computes in {name}, the explorer config asks for "
                             f"{config.dtype}; set dtype={name!r}")  # fmt: skip
        stop_at = config.stop.max_steps
        self.limit = config.n_steps if stop_at is None else min(config.n_steps, stop_at)
        self.window = 1 if self.bias is None else self.bias.window_samples
        self.config, self.model, self.pool = config, model, pool
        self.n_frames = 0
        self.keep_ends = keep_ends
        self.ends: dict[int, Continuation] = {}  # replica id -> where it reached its limit
        self.limits: dict[int, int] = {}  # replica id -> its step limit, for continued ones
        self._limit_rows: tuple[torch.Tensor, torch.Tensor] | None = None

    def step_limit(self, state: MDState) -> int | torch.Tensor:
        """The step at which each row stops: ``n_steps`` (capped by the stop rules) after
        its start, a continued trajectory's start being its step count."""
        if not self.limits:
            return self.limit
        if self._limit_rows is None or self._limit_rows[0] is not state.replica_id:
            ids = state.replica_id.tolist()
            rows = torch.tensor([self.limits.get(i, self.limit) for i in ids], device=self.device)
            self._limit_rows = (state.replica_id, rows)
        return self._limit_rows[1]

    def write(self, writer: CandidateWriter, state, ev, rows, reasons) -> None:
        if rows:
            writer.append(frames_from(state, ev, rows, reasons, explorer=self.config.explorer_id,
                                      sampler=self.config.sampler, stress=self.stress))  # fmt: skip
            self.n_frames += len(rows)

    def start(self, writer: CandidateWriter, n: int) -> MDState | None:
        """Start up to ``n`` replicas from the pool; a start structure that already breaks
        a stop rule (atoms too close, NaN, ...) ends at step 0 with its frame."""
        states = []
        while n > 0 and self.pool.waiting:
            ids, atoms, conts = self.pool.take(n)
            t0_K = float(self.t_sched.at(torch.zeros(1))[0])
            st = make_state(atoms, replica_ids=ids, seed=self.config.seed, temperature_K=t0_K,
                            window=self.window, device=self.device, dtype=self.dtype)  # fmt: skip
            resume(st, {r: c for r, c in enumerate(conts) if c is not None})
            carried = [(k, c) for k, c in zip(ids, conts, strict=True) if c is not None]
            self.limits.update({k: c.step + self.limit for k, c in carried})
            if self.stress:
                check_periodic(st)
            ev = initialize(st, self.model, stress=self.stress, bias=self.bias)
            reasons = check_stops(st, ev, self.config.stop, step_limit=self.step_limit(st),
                                  model=self.model)  # fmt: skip
            self.pool.started(ids, reasons)
            bad = [r for r in range(len(ids)) if reasons[r]]
            if bad:
                self.write(writer, st, ev, bad, [reasons[r] for r in bad])
                st = select_replicas(st, [r for r in range(len(ids)) if not reasons[r]])
            n -= st.n_replicas
            states.append(st)
        return concat_states(states) if states else None

    def step(self, state: MDState) -> Evaluation:
        """One step of every replica with the ensemble's integrator."""
        c, dt = self.config, self.config.timestep_fs
        if c.ensemble == "nve":
            return nve_step(state, self.model, timestep_fs=dt, bias=self.bias)
        temp = self.t_sched.at(state.step).to(self.dtype)
        if self.stress:
            press = self.p_sched.at(state.step).to(self.dtype) * units.GPa
            return npt_step(state, self.model, timestep_fs=dt, temperature_K=temp,
                            pressure_eV_A3=press, friction_per_fs=c.friction_per_fs,
                            barostat=c.barostat, bias=self.bias)  # fmt: skip
        return langevin_step(state, self.model, timestep_fs=dt, temperature_K=temp,
                             friction_per_fs=c.friction_per_fs, bias=self.bias)  # fmt: skip

    def finish_step(self, writer, state: MDState, ev: Evaluation, before: Snapshot) -> MDState:
        """Write the step's frames, end the replicas that stopped, refill their slots."""
        reasons = check_stops(state, ev, self.config.stop, step_limit=self.step_limit(state),
                              model=self.model)  # fmt: skip
        steps = state.step.tolist()
        for r in (r for r in range(state.n_replicas) if reasons[r] == "nan"):
            self.write_last_finite(writer, before.replica(state, r))
        rows = [r for r in range(state.n_replicas) if reasons[r] != "nan"
                and (reasons[r] or steps[r] % self.config.record_every == 0)]  # fmt: skip
        self.write(writer, state, ev, rows, [reasons[r] for r in rows])
        stopped = [r for r in range(state.n_replicas) if reasons[r]]
        if not stopped:
            return state
        for r in stopped:
            self.pool.stopped(int(state.replica_id[r]), reasons[r], steps[r])
            if self.keep_ends and reasons[r] == "max_steps":
                self.ends[int(state.replica_id[r])] = capture(state, r, before.windows)
        state = select_replicas(state, [r for r in range(state.n_replicas) if not reasons[r]])
        fresh = self.start(writer, len(stopped))
        return state if fresh is None else concat_states([state, fresh])

    def write_last_finite(self, writer: CandidateWriter, one: MDState) -> None:
        """A replica that went NaN keeps the frame before the failing step as its stop
        frame (evaluated again without bias: one small extra model call)."""
        ev = evaluate(one, self.model, stress=self.stress, bias=None)
        self.write(writer, one, ev, [0], ["nan"])


def run_explorer(
    config: ExploreConfig,
    model,
    start_structures: Sequence[Atoms],
    *,
    out_path: str | Path,
    replicas: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    continuations: Sequence[Continuation | None] | None = None,
    keep_ends: bool = False,
) -> dict:
    """Run one explorer; write candidates to ``out_path``; return a summary dict.

    ``model``: a differentiable model (:mod:`ubmd.md.forcefield`), an ASE force field
    (unbiased samplers only), or anything :func:`ubmd.md.adapter.as_md_model` takes (a
    model file path, ``(model, estimator, calibration)``). Summary: ``n_frames``,
    ``replicas`` (id -> dict with ``stop_reason``, ``steps``, ``start_index``),
    ``wall_time_s``, ``atom_steps_per_s`` (over the whole run), ``compiled`` (the model ran
    compiled code), and the steady state apart from the warm-up: ``warmup_s`` (start-up,
    compiling and the first ``warmup_steps`` batch steps), ``steady_steps``,
    ``steady_atom_steps_per_s`` and ``steady_mean_replicas`` (replicas per batch step on
    average: below ``replicas`` once stopped replicas leave slots empty; None when the run
    is not longer than the warm-up). The warm-up is ``min(10, max(1, n_steps // 10))``
    batch steps.

    ``continuations``: one per start structure (or None): its replica goes on with that
    trajectory (:mod:`ubmd.md.continuation`) for ``n_steps`` more steps. ``keep_ends``: the
    summary's ``ends`` maps each replica that stopped at its step limit to its
    :class:`~ubmd.md.continuation.Continuation`.
    """
    from ubmd.md.adapter import as_md_model

    _check_structures(start_structures)
    model = as_md_model(model, device=config.device)
    n_slots = len(start_structures) if replicas is None else int(replicas)
    if n_slots < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    pool = ReplicaPool(start_structures, n_slots, continuations)
    run = _Explorer(config, model, pool, keep_ends=keep_ends)
    planned = run.pool.n_runs * config.n_steps
    clock = _Clock(warmup=min(10, max(1, config.n_steps // 10)))
    with CandidateWriter(out_path) as writer:
        state = run.start(writer, n_slots)
        while state is not None and state.n_replicas > 0:
            clock.tick(state)
            before = Snapshot.of(state)
            ev = run.step(state)
            state = run.finish_step(writer, state, ev, before)
            if progress is not None:
                progress(clock.replica_steps, planned)
        t_end = time.perf_counter()
    whole, steady = clock.rates(t_end)
    return {
        "n_frames": run.n_frames,
        "replicas": run.pool.info,
        **whole,
        "out_path": str(out_path),
        "compiled": bool(getattr(model, "compiled", False)),
        **steady,
        **({"ends": run.ends} if keep_ends else {}),
    }
