"""One explorer: R replicas of (biased) MD in one batch, candidates to HDF5.

``run_explorer`` keeps up to ``replicas`` slots busy; every start structure is run at
least once (slots beyond the number of structures restart from them in turn), and a
slot whose replica stops is refilled with the next start structure until none is left.
Each replica writes a candidate frame every ``record_every`` steps and at its stop frame.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from ase import Atoms, units

from ubmd import keys
from ubmd.md.bias import BiasConfig, Evaluation, UncertaintyCVConfig, _normalise_weights, evaluate
from ubmd.md.integrators import (
    BarostatConfig,
    check_periodic,
    initialize,
    langevin_step,
    npt_step,
    nve_step,
)
from ubmd.md.schedule import Constant, LinearRamp, as_schedule
from ubmd.md.state import MDState, concat_states, make_state, select_replicas
from ubmd.md.stop import StopRules, check_stops
from ubmd.md.writer import CandidateWriter

SAMPLERS = ("biased_md", "md", "uncertainty_cv")
ENSEMBLES = ("nvt", "npt", "nve")
_DTYPES = {"float64": torch.float64, "float32": torch.float32}


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
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype {self.dtype!r} not one of {list(_DTYPES)}")
        _normalise_weights(self.species_weights)  # bad keys/weights fail here, not mid-run

    def bias(self):
        if self.sampler == "md":
            return None
        if self.sampler == "uncertainty_cv":
            from ubmd.md.samplers import HillsBias

            return HillsBias(self.uncertainty_cv or UncertaintyCVConfig())
        return BiasConfig(
            tau_rel=self.tau_rel,
            tau_stress_rel=self.tau_stress_rel,
            window=self.window,
            species_weights=dict(self.species_weights),
            uncertainty_key=self.bias_key,
        )


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


def _check_structures(structures: Sequence[Atoms]) -> None:
    if len(structures) == 0:
        raise ValueError("no start structures given")
    for k, atoms in enumerate(structures):
        if not isinstance(atoms, Atoms):
            raise TypeError(f"start structure {k} is a {type(atoms).__name__}, not ase.Atoms")


def _last_finite_frame(state: MDState, before, r: int, model, config, stress: bool) -> dict:
    """A replica that went NaN keeps the frame before the failing step as its stop frame
    (evaluated again without bias: one small extra model call)."""
    pos, vel, cell, step = before
    snap = dataclasses.replace(state, positions=pos, velocities=vel, cell=cell, step=step)
    one = select_replicas(snap, [r])
    ev = evaluate(one, model, stress=stress, bias=None)
    return frames_from(one, ev, [0], ["nan"], explorer=config.explorer_id,
                       sampler=config.sampler, stress=stress)  # fmt: skip


def run_explorer(
    config: ExploreConfig,
    model,
    start_structures: Sequence[Atoms],
    *,
    out_path: str | Path,
    replicas: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Run one explorer; write candidates to ``out_path``; return a summary dict.

    ``model``: a differentiable model (:mod:`ubmd.md.forcefield`), an ASE force field
    (unbiased samplers only), or anything :func:`ubmd.md.adapter.as_md_model` takes (a
    model file path, ``(model, estimator, calibration)``). Summary: ``n_frames``,
    ``replicas`` (id -> dict with ``stop_reason``, ``steps``, ``start_index``),
    ``wall_time_s``, ``atom_steps_per_s`` (over the whole run), ``compiled`` (the model ran
    compiled code), and the steady state apart from the warm-up: ``warmup_s`` (start-up,
    compiling and the first ``warmup_steps`` batch steps), ``steady_steps`` and
    ``steady_atom_steps_per_s`` (None when the run is not longer than the warm-up). The
    warm-up is ``min(10, max(1, n_steps // 10))`` batch steps.
    """
    from ubmd.md.adapter import as_md_model

    _check_structures(start_structures)
    model = as_md_model(model, device=config.device)
    n_slots = len(start_structures) if replicas is None else int(replicas)
    if n_slots < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    config.stop.check_model(model)
    bias = config.bias()
    if bias is not None and not getattr(model, "differentiable", False):
        raise ValueError(
            f"sampler {config.sampler!r} needs a differentiable model with an uncertainty "
            "(a ubmd model file with its estimator); use sampler 'md' with ASE force fields"
        )
    t_sched = as_schedule(config.temperature_K, name="temperature_K", positive=True)
    p_sched = as_schedule(config.pressure_GPa, name="pressure_GPa")
    npt = config.ensemble == "npt"
    stress = npt
    dtype, device = _DTYPES[config.dtype], torch.device(config.device)
    model_dtype = getattr(model, "dtype", None)
    if model_dtype is not None and model_dtype != dtype:
        raise ValueError(
            f"the model computes in {str(model_dtype).removeprefix('torch.')}, the explorer "
            f"config asks for {config.dtype}; set dtype={str(model_dtype).removeprefix('torch.')!r}"
        )
    limit = (
        config.n_steps
        if config.stop.max_steps is None
        else min(config.n_steps, config.stop.max_steps)
    )
    n_runs = max(n_slots, len(start_structures))
    window = bias.window_samples if isinstance(bias, BiasConfig) else 1
    queue = list(range(n_runs))  # replica id k starts from structure k % n_structures
    info: dict[int, dict] = {}

    def start(writer: CandidateWriter, n: int) -> MDState | None:
        """Start up to ``n`` replicas from the queue; a start structure that already
        breaks a stop rule (atoms too close, NaN, ...) ends at step 0 with its frame."""
        nonlocal queue, n_frames
        states = []
        while n > 0 and queue:
            ids, queue = queue[:n], queue[n:]
            atoms = [start_structures[k % len(start_structures)] for k in ids]
            st = make_state(atoms, replica_ids=ids, seed=config.seed,
                            temperature_K=float(t_sched.at(torch.zeros(1))[0]),
                            window=window, device=device, dtype=dtype)  # fmt: skip
            if npt:
                check_periodic(st)
            ev = initialize(st, model, stress=stress, bias=bias)
            reasons = check_stops(st, ev, config.stop, step_limit=limit)
            for r, k in enumerate(ids):
                info[k] = {"start_index": k % len(start_structures), "stop_reason": reasons[r],
                           "steps": 0}  # fmt: skip
            bad = [r for r in range(len(ids)) if reasons[r]]
            if bad:
                writer.append(frames_from(st, ev, bad, [reasons[r] for r in bad],
                                          explorer=config.explorer_id, sampler=config.sampler,
                                          stress=stress))  # fmt: skip
                n_frames += len(bad)
                st = select_replicas(st, [r for r in range(len(ids)) if not reasons[r]])
            n -= st.n_replicas
            states.append(st)
        return concat_states(states) if states else None

    n_frames, done_steps, atom_steps = 0, 0, 0
    planned = n_runs * config.n_steps
    warmup = min(10, max(1, config.n_steps // 10))  # batch steps before the steady state
    n_batch_steps, t_warm, atom_steps_warm = 0, None, 0
    t0 = time.perf_counter()
    with CandidateWriter(out_path) as writer:
        state = start(writer, n_slots)
        while state is not None and state.n_replicas > 0:
            if n_batch_steps == warmup:
                t_warm, atom_steps_warm = time.perf_counter(), atom_steps
            n_batch_steps += 1
            # the integrators replace these tensors, so references are a snapshot
            before = (state.positions, state.velocities, state.cell, state.step)
            temp = t_sched.at(state.step).to(dtype)
            if config.ensemble == "nve":
                ev = nve_step(state, model, timestep_fs=config.timestep_fs, bias=bias)
            elif npt:
                press = p_sched.at(state.step).to(dtype) * units.GPa
                ev = npt_step(state, model, timestep_fs=config.timestep_fs, temperature_K=temp,
                              pressure_eV_A3=press, friction_per_fs=config.friction_per_fs,
                              barostat=config.barostat, bias=bias)  # fmt: skip
            else:
                ev = langevin_step(state, model, timestep_fs=config.timestep_fs,
                                   temperature_K=temp, friction_per_fs=config.friction_per_fs,
                                   bias=bias)  # fmt: skip
            done_steps += state.n_replicas
            atom_steps += int(state.n_atoms.sum())
            reasons = check_stops(state, ev, config.stop, step_limit=limit)
            steps = state.step.tolist()
            rows = [r for r in range(state.n_replicas)
                    if reasons[r] != "nan" and (reasons[r] or steps[r] % config.record_every == 0)]  # fmt: skip
            for r in (r for r in range(state.n_replicas) if reasons[r] == "nan"):
                writer.append(_last_finite_frame(state, before, r, model, config, stress))
                n_frames += 1
            if rows:
                frames = frames_from(state, ev, rows, [reasons[r] for r in rows],
                                     explorer=config.explorer_id, sampler=config.sampler,
                                     stress=stress)  # fmt: skip
                writer.append(frames)
                n_frames += len(rows)
            stopped = [r for r in range(state.n_replicas) if reasons[r]]
            if stopped:
                for r in stopped:
                    rid = int(state.replica_id[r])
                    info[rid].update(stop_reason=reasons[r], steps=steps[r])
                state = select_replicas(
                    state, [r for r in range(state.n_replicas) if not reasons[r]]
                )
                fresh = start(writer, len(stopped))
                if fresh is not None:
                    state = concat_states([state, fresh])
            if progress is not None:
                progress(done_steps, planned)
        t_end = time.perf_counter()
    wall = time.perf_counter() - t0
    steady = None if t_warm is None else (atom_steps - atom_steps_warm) / max(t_end - t_warm, 1e-9)
    return {
        "n_frames": n_frames,
        "replicas": info,
        "wall_time_s": wall,
        "atom_steps_per_s": atom_steps / max(wall, 1e-9),
        "out_path": str(out_path),
        "compiled": bool(getattr(model, "compiled", False)),
        "warmup_steps": min(warmup, n_batch_steps),
        "warmup_s": (t_end if t_warm is None else t_warm) - t0,
        "steady_steps": max(0, n_batch_steps - warmup),
        "steady_atom_steps_per_s": steady,
    }
